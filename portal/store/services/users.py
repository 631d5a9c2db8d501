"""Accounts: slow hashes for passwords, SHA-256 for high-entropy API tokens."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any, cast

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.orm import Session

from portal.store.errors import DuplicateError, PermissionDeniedError, StoreError
from portal.store.models import ApiToken, Role, User
from portal.store.services import login_throttle
from portal.store.services.audit import record
from portal.store.settings import Settings

_hasher = PasswordHasher()
USERNAME = re.compile(r"^[A-Za-z0-9_.@-]{2,64}$")
MIN_PASSWORD = 8
SHOWN_NAME = 100  # characters of a tried name kept in the audit log; a real one has at most 64


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_user(
    session: Session, username: str, password: str, role: Role | str = Role.annotator, actor: User | None = None
) -> User:
    if not USERNAME.match(username):
        raise StoreError("a username is 2-64 letters, digits or . _ @ -")
    if len(password) < MIN_PASSWORD:
        raise StoreError(f"a password needs at least {MIN_PASSWORD} characters")
    try:
        role = Role(role)
    except ValueError:
        raise StoreError(f"unknown role '{role}'; choose annotator, reviewer or admin") from None
    if session.scalar(select(User).where(User.username == username)):
        raise DuplicateError(f"user '{username}' already exists")
    user = User(username=username, password_hash=_hasher.hash(password), role=role)
    session.add(user)
    session.flush()
    record(session, actor, "user.create", "user", user.id, role=role.value, username=username)
    return user


@dataclass(frozen=True)
class NewAccount:
    user: User
    password: str | None  # the generated password, to be shown once; None when the creator chose it


def add_account(
    session: Session, actor: User | None, username: str, role: Role | str, password: str | None = None
) -> NewAccount:
    """An account created by an admin in the UI, or from the shell (``actor`` None: ``medsam user add``).

    Without a password one is generated and handed back once: it is stored
    only as a hash, so the admin passes it on and the user changes it later.
    """
    if actor is not None:
        require_role(actor, Role.admin, doing="create accounts")
    generated = None if password else secrets.token_urlsafe(12)
    user = create_user(session, (username or "").strip(), password or cast(str, generated), role, actor=actor)
    return NewAccount(user, generated)


def create_first_admin(session: Session, password: str) -> User | None:
    """``admin``, when there is no account at all: nobody could ever log in otherwise. None if any exists."""
    if session.scalar(select(func.count()).select_from(User)):
        return None
    return create_user(session, "admin", password, Role.admin)


def set_password(session: Session, username: str, password: str, actor: User | None = None) -> User:
    """Replace a password and revoke the user's API tokens, which were issued under the old one."""
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise StoreError(f"no user '{username}'")
    if len(password) < MIN_PASSWORD:
        raise StoreError(f"a password needs at least {MIN_PASSWORD} characters")
    user.password_hash = _hasher.hash(password)
    _revoke_all(session, user)
    record(session, actor, "user.password", "user", user.id, username=username)
    return user


def authenticate(session: Session, username: str, password: str, address: str | None = None) -> User | None:
    """Checks the password only (see :func:`login` for the throttled entry point).

    An unknown or disabled account is checked against a dummy hash, so it
    costs as long as a wrong password for a real one and timing cannot tell
    which names exist.
    """
    user = session.scalar(select(User).where(User.username == username))
    usable = user is not None and user.is_active
    try:
        ok = _hasher.verify(user.password_hash if user is not None and usable else _dummy_hash(), password) and usable
    except (VerificationError, InvalidHashError):
        ok = False
    record(
        session,
        user if ok else None,
        "login" if ok else "login.failed",
        "user",
        user.id if user else None,
        username=username[:SHOWN_NAME],
        address=address,
    )
    return user if ok else None


@dataclass(frozen=True)
class LoginOutcome:
    user: User | None
    retry_after: int = 0  # seconds; > 0 when the account or the address is locked


def login(session: Session, username: str, password: str, address: str | None, settings: Settings) -> LoginOutcome:
    """The one login path of the API and the UI: throttled per account and per address.

    While either key is locked the password is not even checked, so guessing
    gains nothing and costs the server no hashing. The refusal is audited;
    the caller commits before answering, so the record stays.
    """
    keys = (login_throttle.account_key(username), login_throttle.address_key(address))
    rows = login_throttle.hold(session, keys)
    wait = login_throttle.seconds_locked(rows)
    if wait:
        login_throttle.release_unused(session, rows)
        user = session.scalar(select(User).where(User.username == username))
        record(
            session,
            None,
            "login.locked",
            "user",
            user.id if user else None,
            username=username[:SHOWN_NAME],
            address=address,
            retry_after=wait,
        )
        return LoginOutcome(None, wait)
    user = authenticate(session, username, password, address)
    if user is None:
        login_throttle.count_failure(session, rows, settings)
    else:
        login_throttle.count_success(session, rows)
    return LoginOutcome(user)


def issue_token(session: Session, user: User, name: str = "api", ttl_days: int | None = 90) -> str:
    """The plain token is returned once and never stored."""
    token = secrets.token_urlsafe(32)
    expires = datetime.now(timezone.utc) + timedelta(days=ttl_days) if ttl_days else None
    session.add(ApiToken(user_id=user.id, token_sha256=token_digest(token), name=name, expires_at=expires))
    record(session, user, "token.issue", "user", user.id, name=name)
    return token


def revoke_token(session: Session, user: User, token: str) -> bool:
    """Log out one API client: only the caller's own token, found by its digest."""
    done = cast(
        "CursorResult[Any]",
        session.execute(
            update(ApiToken)
            .where(
                ApiToken.token_sha256 == token_digest(token),
                ApiToken.user_id == user.id,
                ApiToken.revoked.is_(False),
            )
            .values(revoked=True)
        ),
    ).rowcount
    if done:
        record(session, user, "token.revoke", "user", user.id, count=done)
    return bool(done)


def revoke_tokens(session: Session, username: str, actor: User | None = None) -> int:
    """Every live API token of an account, e.g. after a laptop was lost; returns how many."""
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise StoreError(f"no user '{username}'")
    count = _revoke_all(session, user)
    record(session, actor, "token.revoke", "user", user.id, username=username, count=count)
    return count


def _revoke_all(session: Session, user: User) -> int:
    result = session.execute(
        update(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked.is_(False)).values(revoked=True)
    )
    return cast("CursorResult[Any]", result).rowcount


def user_for_token(session: Session, token: str) -> User | None:
    row = session.scalar(select(ApiToken).where(ApiToken.token_sha256 == token_digest(token)))
    if row is None or row.revoked:
        return None
    if row.expires_at is not None and _aware(row.expires_at) < datetime.now(timezone.utc):
        return None
    return row.user if row.user.is_active else None


def require_role(user: User, *roles: Role, doing: str) -> None:
    if user.role not in roles:
        allowed = " or ".join(r.value for r in roles)
        raise PermissionDeniedError(f"{user.username} is an {user.role.value}; only a {allowed} may {doing}")


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return _hasher.hash(secrets.token_urlsafe(16))


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
