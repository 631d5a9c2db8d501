"""``medsam db``: schema upgrades, status and garbage collection."""

from __future__ import annotations

import argparse
from datetime import timedelta

from portal.store.settings import get_settings


def register(sub) -> None:
    p = sub.add_parser("db", help="database maintenance")
    dsub = p.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    up = dsub.add_parser("upgrade", help="apply the schema migrations (creates the database when empty)")
    up.set_defaults(handler=upgrade)
    st = dsub.add_parser("status", help="show the schema revision and where the data lives")
    st.set_defaults(handler=status)
    gc = dsub.add_parser("gc", help="delete blobs no row points to (older than the grace period)")
    gc.add_argument(
        "--grace-hours",
        type=float,
        default=None,
        help="keep unreferenced blobs younger than this (default: MEDSAM_GC_GRACE_HOURS, 1)",
    )
    gc.add_argument("--dry-run", action="store_true", help="only report what would be deleted")
    gc.set_defaults(handler=collect)


def upgrade(args: argparse.Namespace) -> int:
    from portal.store.db import make_engine
    from portal.store.migrate import current_revision, head_revision
    from portal.store.migrate import upgrade as run_upgrade
    from portal.store.store import open_store

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    before = current_revision(engine)
    run_upgrade(engine)
    engine.dispose()
    open_store(settings, auto_migrate=False).close()  # registers the bundled base model
    where = settings.resolved_database_url.split("@")[-1]
    print(f"database {where}: schema {before or '(empty)'} -> {head_revision()}")
    return 0


def status(args: argparse.Namespace) -> int:
    from portal.store.db import make_engine
    from portal.store.migrate import current_revision, head_revision

    settings = get_settings()
    engine = make_engine(settings.resolved_database_url)
    current, head = current_revision(engine), head_revision()
    engine.dispose()
    print(f"database: {settings.resolved_database_url.split('@')[-1]}")
    advice = "" if current == head else "; run medsam db upgrade"
    print(f"schema:   {current or '(empty)'} (this version needs {head}{advice})")
    print(f"blobs:    {settings.resolved_storage_url}")
    return 0 if current == head else 1


def collect(args: argparse.Namespace) -> int:
    from portal.store.services.gc import collect_garbage
    from portal.store.store import open_store

    store = open_store(get_settings(), register_base=False)
    hours = store.settings.gc_grace_hours if args.grace_hours is None else args.grace_hours
    with store.transaction() as db:
        report = collect_garbage(db, store.blobs, timedelta(hours=hours), dry_run=args.dry_run)
    store.close()
    verb = "would delete" if args.dry_run else "deleted"
    print(
        f"scanned {report.scanned} blobs: {report.referenced} in use, {report.too_young} too young to judge, "
        f"{verb} {report.deleted} ({report.freed_bytes / 1e6:.1f} MB)"
    )
    return 0
