"""Schema versioning with Alembic, callable from the CLI and from app start-up."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from portal.store.errors import StoreError

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, f"no schema revisions in {MIGRATIONS}"  # the package ships its migrations
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, target: str = "head") -> None:
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, target)


def ensure_current(engine: Engine, auto_upgrade: bool) -> None:
    """Bring a database that is behind up to date, or refuse to run against it with a clear message."""
    current, head = current_revision(engine), head_revision()
    if current == head:
        return
    where = engine.url.render_as_string(hide_password=True)
    if current is not None and current not in _known_revisions():
        raise StoreError(
            f"database {where} is at schema revision {current}, which this version of medsam does "
            "not know (it was made by a newer version); upgrade medsam"
        )
    if not auto_upgrade:
        raise StoreError(
            f"database {where} is at schema revision {current or 'empty'} but this version needs "
            f"{head}; run `medsam db upgrade` (or set MEDSAM_AUTO_MIGRATE=true)"
        )
    log.warning("database %s is at schema revision %s, upgrading to %s", where, current or "(empty)", head)
    upgrade(engine)


def _known_revisions() -> set[str]:
    return {s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
