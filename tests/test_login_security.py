"""Login throttling, constant-time refusals and token revocation.

The store tests drive the throttle with explicit clocks (no sleeping) on
SQLite and PostgreSQL; the server tests go through a real `medsam serve`
(the shared `api` fixture of test_api.py), for the API login, Gradio's
/login and the CLI. Each server test speaks from its own client address
(uvicorn honours X-Forwarded-For from 127.0.0.1, its trusted proxy), so one
test's lock does not leak into the next.
"""

from __future__ import annotations

import ipaddress
import threading
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from argon2 import PasswordHasher
from sqlalchemy import func, select

from portal.store.models import AuditEvent, LoginThrottle, Role
from portal.store.services import login_throttle, users
from portal.store.settings import Settings
from portal.store.store import open_store
from tests.dbutil import temporary_database
from tests.test_api import PASSWORD, api, call, medsam, ok  # noqa: F401 - `api` is the shared server fixture
from tests.test_store_concurrency import run_together

LIMITS = {"login_max_failures": 3, "login_address_max_failures": 3, "login_lock_s": 10.0, "login_lock_max_s": 40.0}
WRONG = "not the password"


class CountingHasher(PasswordHasher):
    """The real argon2 hasher, counting verifications: equal counts mean equal hashing work."""

    def __init__(self):
        super().__init__()
        self.verified = 0
        self._lock = threading.Lock()

    def verify(self, hash, password):  # noqa: A002 - argon2's own parameter name
        with self._lock:
            self.verified += 1
        return super().verify(hash, password)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"login_{request.param}")
    with temporary_database(request.param, tmp) as url:
        opened = open_store(Settings(data_dir=tmp, database_url=url, **LIMITS), register_base=False)
        yield opened
        opened.close()


@pytest.fixture()
def hasher(monkeypatch):
    counting = CountingHasher()
    monkeypatch.setattr(users, "_hasher", counting)
    users._dummy_hash.cache_clear()
    yield counting
    users._dummy_hash.cache_clear()


def new_account(store, active: bool = True) -> str:
    name = f"u{uuid.uuid4().hex[:8]}"
    with store.transaction() as session:
        users.create_user(session, name, PASSWORD, Role.annotator).is_active = active
    return name


def new_address() -> str:
    return str(ipaddress.IPv4Address((10 << 24) + uuid.uuid4().int % (1 << 24)))  # a fresh key each time


def attempt(store, name: str, password: str, address: str) -> users.LoginOutcome:
    with store.transaction() as session:
        return users.login(session, name, password, address, store.settings)


def audit(store, action: str, username: str) -> list[AuditEvent]:
    with store.transaction() as session:
        return [
            e
            for e in session.scalars(select(AuditEvent).where(AuditEvent.action == action))
            if e.details.get("username") == username
        ]


def test_lock_after_max_failures_refuses_without_checking_the_password(store, hasher):
    name, here = new_account(store), new_address()
    for _ in range(3):
        assert attempt(store, name, WRONG, here) == users.LoginOutcome(None, 0)
    assert hasher.verified == 3
    refused = attempt(store, name, PASSWORD, here)  # the right password, while locked
    assert refused.user is None and 0 < refused.retry_after <= 10
    assert hasher.verified == 3, "a locked login must not reach the password check"
    assert attempt(store, name, PASSWORD, new_address()).retry_after > 0  # the account is locked everywhere
    assert attempt(store, new_account(store), PASSWORD, here).retry_after > 0  # and so is the address
    assert hasher.verified == 3
    locked = audit(store, "login.locked", name)
    assert len(locked) == 2 and locked[0].details["address"] == here and locked[0].target_id is not None


def test_refused_guesses_at_random_names_leave_no_rows(store):
    """While an address is locked, each guess at a new name must not add a row for good."""
    here = new_address()
    for _ in range(3):
        attempt(store, new_account(store), WRONG, here)
    with store.transaction() as session:
        before = session.scalar(select(func.count()).select_from(LoginThrottle))
    for _ in range(10):
        assert attempt(store, f"nobody{uuid.uuid4().hex[:8]}", WRONG, here).retry_after > 0
    with store.transaction() as session:
        assert session.scalar(select(func.count()).select_from(LoginThrottle)) == before


def test_an_address_gets_more_tries_than_an_account(tmp_path):
    settings = Settings(data_dir=tmp_path, login_max_failures=3, login_address_max_failures=6)
    store = open_store(settings, register_base=False)
    try:
        here = new_address()
        for _ in range(5):  # five accounts, one wrong password each: an office behind one NAT
            assert attempt(store, new_account(store), WRONG, here).retry_after == 0
        assert attempt(store, new_account(store), WRONG, here).retry_after == 0  # the sixth failure locks
        assert attempt(store, new_account(store), PASSWORD, here).retry_after > 0
    finally:
        store.close()


def test_locks_double_and_stop_at_the_cap(store):
    key, t = f"user:{uuid.uuid4().hex}", datetime.now(timezone.utc)
    locks = []
    for _ in range(5):
        with store.transaction() as session:
            rows = login_throttle.hold(session, [key])
            for _ in range(3):
                assert login_throttle.seconds_locked(rows, t) == 0
                login_throttle.count_failure(session, rows, store.settings, t)
            locks.append(login_throttle.seconds_locked(rows, t))
        t += timedelta(seconds=locks[-1] + 1)  # the next round starts when this lock ends
    assert locks == [10, 20, 40, 40, 40]


def test_a_key_quiet_for_the_longest_lock_starts_over(store):
    key, t = f"user:{uuid.uuid4().hex}", datetime.now(timezone.utc)
    with store.transaction() as session:
        rows = login_throttle.hold(session, [key])
        for _ in range(2):
            login_throttle.count_failure(session, rows, store.settings, t)
    with store.transaction() as session:
        rows = login_throttle.hold(session, [key])
        login_throttle.count_failure(session, rows, store.settings, t + timedelta(seconds=41))
        assert rows[0].failures == 1 and login_throttle.seconds_locked(rows, t + timedelta(seconds=41)) == 0


def test_success_clears_the_account_but_not_the_address(store):
    name, here = new_account(store), new_address()
    for _ in range(2):
        attempt(store, name, WRONG, here)
    assert attempt(store, name, PASSWORD, here).user.username == name
    with store.transaction() as session:
        assert session.get(LoginThrottle, login_throttle.account_key(name)) is None
        assert session.get(LoginThrottle, login_throttle.address_key(here)).failures == 2
    # Logging into one's own account does not buy more guesses at someone else's.
    assert attempt(store, new_account(store), WRONG, here).retry_after == 0
    assert attempt(store, name, PASSWORD, here).retry_after > 0


def test_unknown_and_disabled_accounts_cost_one_verification_like_a_wrong_password(store, hasher):
    real, disabled = new_account(store), new_account(store, active=False)
    for name, password in ((real, WRONG), (f"ghost{uuid.uuid4().hex[:6]}", WRONG), (disabled, PASSWORD)):
        before = hasher.verified
        assert attempt(store, name, password, new_address()) == users.LoginOutcome(None, 0)
        assert hasher.verified == before + 1, name
    assert audit(store, "login.failed", disabled)[0].target_id is not None


def test_parallel_guesses_cannot_outrun_the_count(store, hasher):
    name, here = new_account(store), new_address()
    outcomes = run_together([lambda: attempt(store, name, WRONG, here) for _ in range(10)])
    assert all(isinstance(o, users.LoginOutcome) for o in outcomes), outcomes
    assert sum(o.retry_after == 0 for o in outcomes) == 3 and hasher.verified == 3


# --- through the real server ----------------------------------------------------------------------------------


def api_login(api, name: str, password: str, address: str):
    return api["client"].post(
        "/api/v1/auth/token", data={"username": name, "password": password}, headers={"X-Forwarded-For": address}
    )


def server_audit(api, action: str, username: str) -> list[AuditEvent]:
    store = open_store(Settings(data_dir=api["folder"]), register_base=False)
    try:
        return audit(store, action, username)
    finally:
        store.close()


def test_twenty_wrong_passwords_then_the_right_one_is_refused(api):
    here = "192.0.2.10"
    codes = [api_login(api, "otto", WRONG, here).status_code for _ in range(20)]
    assert codes == [401] * 5 + [429] * 15
    refused = api_login(api, "otto", PASSWORD, here)
    assert refused.status_code == 429, refused.text
    assert 0 < int(refused.headers["retry-after"]) <= 60
    assert "too many failed logins" in refused.json()["detail"] and "try again in" in refused.json()["detail"]
    assert api_login(api, "otto", PASSWORD, "192.0.2.11").status_code == 429  # the account, from anywhere
    assert api_login(api, "boss", PASSWORD, here).status_code == 429  # any account, from that address
    assert ok(api_login(api, "boss", PASSWORD, "192.0.2.12"))["access_token"]  # others still get in
    assert len(server_audit(api, "login.locked", "otto")) == 17
    assert ok(call(api, "GET", "/auth/me", user="otto"))["username"] == "otto"  # a lock revokes nothing


def test_ui_login_is_throttled_like_the_api(api):
    here = "192.0.2.20"

    def ui_login(name, password, address=here):
        return api["client"].post(
            "/login", data={"username": name, "password": password}, headers={"X-Forwarded-For": address}
        )

    assert [ui_login("anna", WRONG).status_code for _ in range(5)] == [400] * 5
    refused = ui_login("anna", PASSWORD)
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0, refused.text
    assert "try again in" in refused.json()["detail"]
    assert api_login(api, "anna", PASSWORD, "192.0.2.21").status_code == 429  # one lock for API and UI
    assert ok(ui_login("rita", PASSWORD, "192.0.2.22")) == {"success": True}
    assert server_audit(api, "login.locked", "anna")[0].details["address"] == here


def test_delete_token_revokes_only_the_callers_token(api):
    second = ok(api_login(api, "boss", PASSWORD, "192.0.2.30"))["access_token"]
    bearer = {"Authorization": f"Bearer {second}"}
    assert ok(call(api, "DELETE", "/auth/token", user=None, headers=bearer)) == {"revoked": True}
    again = call(api, "GET", "/auth/me", user=None, headers=bearer)
    assert again.status_code == 401 and "revoked" in again.json()["detail"]
    assert ok(call(api, "GET", "/auth/me"))["username"] == "boss"  # the fixture's token of boss still works
    assert call(api, "DELETE", "/auth/token", user=None).status_code == 401


def test_cli_revokes_all_of_a_users_tokens(api):
    second = {"Authorization": f"Bearer {ok(api_login(api, 'rita', PASSWORD, '192.0.2.40'))['access_token']}"}
    done = medsam(api["env"], "user", "revoke", "rita")
    assert done.returncode == 0 and "revoked 2 API tokens of 'rita'" in done.stdout, done.stderr
    for headers in (api["as"]["rita"], second):
        assert call(api, "GET", "/auth/me", user=None, headers=headers).status_code == 401
    assert [e.details["count"] for e in server_audit(api, "token.revoke", "rita")] == [2]
    assert ok(api_login(api, "rita", PASSWORD, "192.0.2.41"))["access_token"]  # revoking is not a lock
    ghost = medsam(api["env"], "user", "revoke", "ghost")
    assert ghost.returncode == 1 and "no user 'ghost'" in ghost.stderr
