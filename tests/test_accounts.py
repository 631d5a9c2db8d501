"""Accounts made by an admin (the UI) and by the shell (`medsam user add`) through one service; member lists."""

from __future__ import annotations

import pytest

from portal.store.errors import DuplicateError, PermissionDeniedError, StoreError
from portal.store.models import Role
from portal.store.services import projects, users
from portal.store.settings import get_settings
from tests.storeutil import make_store, new_user, tx


@pytest.fixture()
def store(tmp_path):
    store = make_store(f"sqlite:///{tmp_path / 'medsam.db'}", tmp_path)
    yield store
    store.close()


def test_an_admin_creates_an_account_with_a_generated_password_shown_once(store):
    admin = new_user(store, Role.admin)
    made = tx(store, users.add_account, admin, " nora ", "reviewer")
    assert made.user.username == "nora" and made.user.role == Role.reviewer and len(made.password) >= 12
    assert made.password not in made.user.password_hash
    assert tx(store, users.authenticate, "nora", made.password) is not None
    chosen = tx(store, users.add_account, admin, "otto", Role.annotator, "a chosen secret")
    assert chosen.password is None and tx(store, users.authenticate, "otto", "a chosen secret") is not None


def test_only_an_admin_creates_accounts_and_the_usual_rules_hold(store):
    reviewer = new_user(store, Role.reviewer)
    admin = new_user(store, Role.admin)
    with pytest.raises(PermissionDeniedError):
        tx(store, users.add_account, reviewer, "eve", "admin")
    with pytest.raises(DuplicateError):
        tx(store, users.add_account, admin, reviewer.username, "annotator")
    with pytest.raises(StoreError, match="unknown role"):
        tx(store, users.add_account, admin, "zed", "owner")
    with pytest.raises(StoreError, match="at least 8"):
        tx(store, users.add_account, admin, "zed", "annotator", "short")


def test_the_admin_sees_the_members_of_a_project_and_nobody_else_does(store):
    admin, anna = new_user(store, Role.admin, "admin"), new_user(store, Role.annotator, "anna")
    with store.transaction() as db:
        pid = projects.create_project(db, admin, "Members", "ct", ["organ"]).id
        projects.add_member(db, admin, pid, anna)
    assert [u.username for u in tx(store, projects.members, admin, pid)] == sorted([admin.username, anna.username])
    with pytest.raises(PermissionDeniedError):
        tx(store, projects.members, anna, pid)


def test_the_shell_uses_the_same_service_and_can_print_a_generated_password(store, tmp_path, monkeypatch, capsys):
    from portal.cli import main

    monkeypatch.setenv("MEDSAM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MEDSAM_DATABASE_URL", f"sqlite:///{tmp_path / 'medsam.db'}")
    get_settings.cache_clear()
    try:
        assert main(["user", "add", "shelly", "--role", "reviewer", "--generate-password"]) == 0
    finally:
        get_settings.cache_clear()
    out = capsys.readouterr().out
    assert "created user 'shelly' (reviewer)" in out
    password = out.split("password (shown once): ")[1].strip()
    assert tx(store, users.authenticate, "shelly", password) is not None
