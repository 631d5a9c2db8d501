"""Throwaway databases for tests: a SQLite file, or a PostgreSQL database of our own that is dropped after."""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager

from sqlalchemy import create_engine, make_url, text

from tests.conftest import require


@contextmanager
def temporary_database(kind: str, tmp_path):
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / f'{uuid.uuid4().hex[:8]}.db'}"
        return
    base = os.environ.get("MEDSAM_TEST_DATABASE_URL")
    require(bool(base), "MEDSAM_TEST_DATABASE_URL is not set (PostgreSQL tests)")
    url = make_url(base)
    name = f"medsam_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - a missing server must read as such
        admin.dispose()
        require(False, f"cannot create a PostgreSQL test database at {url.render_as_string()}: {exc}")
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
