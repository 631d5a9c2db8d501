"""Failed logins counted per account and per client address, in the database.

The counts live in the ``login_throttle`` table rather than in memory so that
a lock holds across every web process and survives a restart. Each key
("user:NAME" or "addr:IP") locks after ``login_max_failures`` failures for
``login_lock_s``; every further ``login_max_failures`` failures lock it again
for twice as long, up to ``login_lock_max_s``. A key that has been quiet (no
failure, no lock) for ``login_lock_max_s`` starts again from nothing, so an
office's occasional typos never add up to a lock.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from portal.store.models import LoginThrottle
from portal.store.settings import Settings

KEY_CHARS = 150  # the column holds 160; a longer "name" cannot be an account anyway
PRUNE_BATCH = 200
MAX_DOUBLINGS = 32  # keeps 2**n a sane float whatever the failure count


def account_key(username: str) -> str:
    return "user:" + username[:KEY_CHARS]


def address_key(host: str | None) -> str:
    """IPv6 clients are counted per /64: one subscriber usually holds a whole /64."""
    if not host:
        return "addr:unknown"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return "addr:" + host[:KEY_CHARS]
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return "addr:" + str(ip.ipv4_mapped)
        return "addr:" + str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return "addr:" + str(ip)


def hold(session: Session, keys: Iterable[str]) -> list[LoginThrottle]:
    """The rows of these keys, created if missing and locked until the transaction ends.

    Concurrent attempts on one key queue behind each other, so a burst of
    parallel guesses cannot all pass the check before the first failure counts.
    Keys are taken in sorted order so two logins never wait on each other crosswise.
    """
    return [_held_row(session, key) for key in sorted(set(keys))]


def seconds_locked(rows: Iterable[LoginThrottle], now: datetime | None = None) -> int:
    """Whole seconds until every key is free again; 0 when none is locked."""
    now = now or _now()
    left = max((((_aware(r.locked_until) - now).total_seconds()) for r in rows if r.locked_until), default=0.0)
    return math.ceil(left) if left > 0 else 0


def count_failure(
    session: Session, rows: Iterable[LoginThrottle], settings: Settings, now: datetime | None = None
) -> None:
    now = now or _now()
    for row in rows:
        if _quiet(row, now, settings):
            row.failures, row.locked_until = 0, None
        row.failures += 1
        row.last_failure_at = now
        limit = _limit(row, settings)
        if row.failures % limit == 0:
            doublings = min(row.failures // limit - 1, MAX_DOUBLINGS)
            lock_s = min(settings.login_lock_s * 2**doublings, settings.login_lock_max_s)
            row.locked_until = now + timedelta(seconds=lock_s)
    _prune(session, now, settings)


def _limit(row: LoginThrottle, settings: Settings) -> int:
    """An address may be a whole office behind one NAT: it gets more tries than one account."""
    return settings.login_address_max_failures if row.key.startswith("addr:") else settings.login_max_failures


def release_unused(session: Session, rows: Iterable[LoginThrottle]) -> None:
    """Drop rows created only to hold the lock, so refused guesses at random names leave nothing behind."""
    for row in rows:
        if not row.failures and row.locked_until is None:
            session.delete(row)


def count_success(session: Session, rows: Iterable[LoginThrottle]) -> None:
    """Clears the account; an address keeps its failures, or logging into one's own
    account between guesses would reset the count for guesses at everyone else's."""
    for row in rows:
        if row.key.startswith("user:") or not row.failures:
            session.delete(row)


def _held_row(session: Session, key: str) -> LoginThrottle:
    for _ in range(5):  # another login may create (or a success delete) the row between our steps
        row = session.get(LoginThrottle, key, with_for_update=True, populate_existing=True)
        if row is not None:
            return row
        try:
            with session.begin_nested():
                row = LoginThrottle(key=key, failures=0)
                session.add(row)
            return row  # a row we inserted stays invisible, and so locked, to others until we commit
        except IntegrityError:
            continue  # created by a concurrent login: wait for its lock on the next round
    raise RuntimeError(f"login throttle row {key!r} keeps changing under us")


def _quiet(row: LoginThrottle, now: datetime, settings: Settings) -> bool:
    stamps = [_aware(t) for t in (row.last_failure_at, row.locked_until) if t is not None]
    return bool(stamps) and (now - max(stamps)).total_seconds() >= settings.login_lock_max_s


def _prune(session: Session, now: datetime, settings: Settings) -> None:
    """Forget keys long quiet, so guesses at many names from many addresses do not grow the table forever.

    A row's lock ends at most ``login_lock_max_s`` after its last failure and it
    is quiet ``login_lock_max_s`` later. Rows another login holds are skipped, not
    waited for: two logins pruning each other's rows would otherwise deadlock.
    """
    cutoff = now - timedelta(seconds=2 * settings.login_lock_max_s)
    stale = (
        select(LoginThrottle.key)
        .where(LoginThrottle.last_failure_at < cutoff)
        .limit(PRUNE_BATCH)
        .with_for_update(skip_locked=True)
    )
    session.execute(
        delete(LoginThrottle).where(LoginThrottle.key.in_(stale.scalar_subquery())),
        execution_options={"synchronize_session": False},
    )


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
