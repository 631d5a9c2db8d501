"""Alembic environment: the URL comes from the one settings object, the target from our models.

``medsam db upgrade`` passes an open connection in ``config.attributes`` so the
migration runs on exactly the engine (and SQLite pragmas) the app uses; the
plain ``alembic`` command falls back to ``MEDSAM_DATABASE_URL``.
"""

from alembic import context

from portal.store.db import make_engine
from portal.store.models import Base
from portal.store.settings import Settings

config = context.config
target_metadata = Base.metadata


def _configure(**kwargs) -> None:
    context.configure(
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite can only ALTER through table copies
        compare_type=True,
        **kwargs,
    )


def run_migrations_offline() -> None:
    _configure(url=Settings().resolved_database_url, literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(Settings().resolved_database_url)
    with engine.connect() as conn:
        _configure(connection=conn)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
