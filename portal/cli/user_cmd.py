"""``medsam user``: accounts from the shell (the first admin, scripted set-ups, password resets)."""

from __future__ import annotations

import argparse
import getpass
import sys

ROLES = ("annotator", "reviewer", "admin")


def register(sub) -> None:
    p = sub.add_parser("user", help="add users, change passwords, revoke tokens, list accounts")
    usub = p.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    add = usub.add_parser("add", help="create an account")
    add.add_argument("name")
    add.add_argument("--role", choices=ROLES, default="annotator")
    how = add.add_mutually_exclusive_group()
    how.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from standard input (for scripts) instead of prompting",
    )
    how.add_argument(
        "--generate-password",
        action="store_true",
        help="generate a password and print it once (pass it on; it is stored only as a hash)",
    )
    add.set_defaults(handler=add_user)
    pw = usub.add_parser("passwd", help="set a new password (revokes the user's API tokens)")
    pw.add_argument("name")
    pw.add_argument("--password-stdin", action="store_true")
    pw.set_defaults(handler=change_password)
    rv = usub.add_parser("revoke", help="revoke all of a user's API tokens (a lost laptop, a leaked script)")
    rv.add_argument("name")
    rv.set_defaults(handler=revoke_tokens)
    ls = usub.add_parser("list", help="list accounts and their roles")
    ls.set_defaults(handler=list_users)


def _password(from_stdin: bool) -> str:
    from medsam_core.errors import MedsamError

    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise MedsamError("the two passwords differ; nothing was changed")
    if not password:
        raise MedsamError("empty password; nothing was changed")
    return password


def _store():
    from portal.store.settings import get_settings
    from portal.store.store import open_store

    return open_store(get_settings(), register_base=False)  # no model load for an account change


def add_user(args: argparse.Namespace) -> int:
    from portal.store.services.users import add_account

    password = None if args.generate_password else _password(args.password_stdin)
    store = _store()
    try:
        with store.transaction() as session:
            made = add_account(session, None, args.name, args.role, password)  # the UI's service, as the shell
        print(f"created user '{made.user.username}' ({made.user.role.value})")
        if made.password:
            print(f"password (shown once): {made.password}")
    finally:
        store.close()
    return 0


def change_password(args: argparse.Namespace) -> int:
    from portal.store.services.users import set_password

    password = _password(args.password_stdin)
    store = _store()
    try:
        with store.transaction() as session:
            set_password(session, args.name, password)
        print(f"changed the password of '{args.name}'; its API tokens were revoked")
    finally:
        store.close()
    return 0


def revoke_tokens(args: argparse.Namespace) -> int:
    from portal.store.services.users import revoke_tokens as revoke

    store = _store()
    try:
        with store.transaction() as session:
            count = revoke(session, args.name)
        print(f"revoked {count} API token{'' if count == 1 else 's'} of '{args.name}'; its clients must log in again")
    finally:
        store.close()
    return 0


def list_users(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from portal.store.models import User

    store = _store()
    try:
        with store.transaction() as session:
            for user in session.scalars(select(User).order_by(User.username)):
                print(f"{user.username:32} {user.role.value:10} {'active' if user.is_active else 'disabled'}")
    finally:
        store.close()
    return 0
