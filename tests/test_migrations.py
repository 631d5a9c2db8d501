"""The initial migration creates exactly the models, on SQLite and on PostgreSQL."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from portal.store.db import make_engine
from portal.store.errors import StoreError
from portal.store.migrate import current_revision, ensure_current, head_revision, upgrade
from portal.store.models import Base
from tests.dbutil import temporary_database


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path):
    with temporary_database(request.param, tmp_path) as url:
        eng = make_engine(url)
        yield eng
        eng.dispose()


def test_upgrade_head_matches_the_models(engine):
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []
    tables = set(inspect(engine).get_table_names())
    assert set(Base.metadata.tables) <= tables


def test_a_database_that_is_behind_is_upgraded_or_refused(engine):
    with pytest.raises(StoreError, match="medsam db upgrade"):
        ensure_current(engine, auto_upgrade=False)
    ensure_current(engine, auto_upgrade=True)
    assert current_revision(engine) == head_revision()
    ensure_current(engine, auto_upgrade=False)  # now current: nothing to do


def test_downgrade_to_base_and_back(engine):
    from alembic import command

    from portal.store.migrate import alembic_config

    upgrade(engine)
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade(engine)
    assert current_revision(engine) == head_revision()


def test_medsam_db_upgrade_on_an_empty_database(run_medsam, tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    env = {"MEDSAM_DATABASE_URL": url, "MEDSAM_DATA_DIR": str(tmp_path)}
    behind = run_medsam("db", "status", env=env)
    assert behind.returncode == 1 and "run medsam db upgrade" in behind.stdout
    result = run_medsam("db", "upgrade", env=env)
    assert result.returncode == 0, result.stderr
    assert f"-> {head_revision()}" in result.stdout
    engine = make_engine(url)
    assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
    with engine.connect() as conn:
        from sqlalchemy import text

        assert conn.execute(text("select count(*) from model_versions where project_id is null")).scalar() == 1
    engine.dispose()
    again = run_medsam("db", "upgrade", env=env)  # idempotent
    assert again.returncode == 0 and run_medsam("db", "status", env=env).returncode == 0
    gc = run_medsam("db", "gc", "--dry-run", env=env)
    assert gc.returncode == 0 and "scanned" in gc.stdout
