"""one jobs table: fine-tunes become jobs of kind 'finetune'

Revision ID: 0005
Revises: 0004

Every ``training_jobs`` row is copied into ``jobs`` (kind ``finetune``) under a
new id, since the two tables' ids overlap; everything that named a training
job by id is remapped to that new id: ``model_versions.training_job_id`` (its
foreign key now points at ``jobs``), and the audit trail's events about
training jobs (``target_type`` 'training_jobs' becomes 'jobs', and a
registered version's ``details.training_job_id``). The three fine-tune-only
columns become nullable columns of ``jobs``.

On SQLite the foreign key of ``model_versions`` is rewritten in the schema
text (SQLite's documented procedure for changing a constraint) instead of
rebuilding the table: dropping the old table would run its ON DELETE actions,
with foreign keys on, and delete every evaluation and activation of every
version (see 0004). Downgrade moves the fine-tunes back under their job ids,
which are free in the empty ``training_jobs``, so nothing needs remapping.
"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: Union[str, Sequence[str], None] = "0004"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

COMMON = (
    "project_id",
    "requested_by",
    "params",
    "state",
    "progress",
    "result",
    "error",
    "celery_task_id",
    "cancel_requested",
    "attempts",
    "heartbeat_at",
    "created_at",
    "started_at",
    "finished_at",
)
TRAINING = ("epoch_metrics", "checkpoint_blob", "curves_blob")
JSONS = {"params", "progress", "result", "epoch_metrics", "details"}


def _table(name: str, *columns: str) -> sa.TableClause:
    return sa.table(name, *(sa.column(c, sa.JSON if c in JSONS else None) for c in columns))


_jobs = _table("jobs", "id", "kind", *COMMON, *TRAINING)
_training = _table("training_jobs", "id", *COMMON, *TRAINING)
_versions = _table("model_versions", "id", "training_job_id")
_audit = _table("audit_events", "id", "action", "target_type", "target_id", "details")
OLD_FK = "fk_model_versions_training_job_id_training_jobs"
NEW_FK = "fk_model_versions_training_job_id_jobs"


def upgrade() -> None:
    conn = op.get_bind()
    op.add_column("jobs", sa.Column("epoch_metrics", sa.JSON(), nullable=True))
    op.add_column("jobs", sa.Column("checkpoint_blob", sa.String(length=64), nullable=True))
    op.add_column("jobs", sa.Column("curves_blob", sa.String(length=64), nullable=True))
    # New ids after every existing job, given explicitly (a sequence may lag rows inserted with their ids).
    after = conn.execute(sa.select(sa.func.max(_jobs.c.id))).scalar() or 0
    new_id = {}
    for n, row in enumerate(conn.execute(sa.select(_training).order_by(_training.c.id)).mappings().all(), 1):
        new_id[row["id"]] = after + n
        conn.execute(
            sa.insert(_jobs).values(id=after + n, kind="finetune", **{c: row[c] for c in (*COMMON, *TRAINING)})
        )
    _advance_sequence(conn, "jobs")
    _point_versions_at(conn, "jobs", OLD_FK, NEW_FK, new_id)
    _remap_audit(conn, new_id, "training_jobs", "jobs")
    op.drop_index("ix_training_jobs_state", table_name="training_jobs")
    op.drop_index("ix_training_jobs_project_id", table_name="training_jobs")
    op.drop_table("training_jobs")  # nothing references it any more, so dropping it deletes nothing else


def _advance_sequence(conn, table: str) -> None:
    """PostgreSQL: the id sequence past rows inserted with explicit ids (SQLite needs nothing)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
            f"(SELECT max(id) FROM {table})) WHERE EXISTS (SELECT 1 FROM {table})"
        )


def _point_versions_at(conn, target: str, old_fk: str, new_fk: str, new_id: dict) -> None:
    """Move ``model_versions.training_job_id``'s foreign key to ``target`` and map its values (None: keep)."""
    if conn.dialect.name == "sqlite":
        _rewrite_sqlite_fk(conn, old_fk, new_fk, target)
    else:
        op.drop_constraint(old_fk, "model_versions", type_="foreignkey")
    rows = conn.execute(
        sa.select(_versions.c.id, _versions.c.training_job_id).where(_versions.c.training_job_id.is_not(None))
    ).all()
    for version_id, job_id in rows:  # by version id: mapping in place could map a row twice
        conn.execute(
            sa.update(_versions).where(_versions.c.id == version_id).values(training_job_id=new_id.get(job_id, job_id))
        )
    if conn.dialect.name != "sqlite":
        op.create_foreign_key(new_fk, "model_versions", target, ["training_job_id"], ["id"], ondelete="SET NULL")


def _rewrite_sqlite_fk(conn, old_fk: str, new_fk: str, target: str) -> None:
    """SQLite's procedure for changing a constraint in place (https://sqlite.org/lang_altertable.html, 7)."""
    sql = conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE type='table' AND name='model_versions'").scalar()
    old_ref = "REFERENCES training_jobs (id)" if target == "jobs" else "REFERENCES jobs (id)"
    start = sql.index(f"CONSTRAINT {old_fk} FOREIGN KEY(training_job_id) {old_ref}")
    new_sql = (
        sql[:start]
        + f"CONSTRAINT {new_fk} FOREIGN KEY(training_job_id) REFERENCES {target} (id)"
        + sql[start + len(f"CONSTRAINT {old_fk} FOREIGN KEY(training_job_id) {old_ref}") :]
    )
    version = conn.exec_driver_sql("PRAGMA schema_version").scalar()
    conn.exec_driver_sql("PRAGMA writable_schema=ON")
    conn.execute(
        sa.text("UPDATE sqlite_master SET sql = :sql WHERE type='table' AND name='model_versions'"), {"sql": new_sql}
    )
    conn.exec_driver_sql(f"PRAGMA schema_version={int(version) + 1}")
    conn.exec_driver_sql("PRAGMA writable_schema=OFF")


def _remap_audit(conn, new_id: dict, old_type: str, new_type: str) -> None:
    events = conn.execute(sa.select(_audit.c.id, _audit.c.target_id).where(_audit.c.target_type == old_type)).all()
    for event_id, target_id in events:
        conn.execute(
            sa.update(_audit)
            .where(_audit.c.id == event_id)
            .values(target_type=new_type, target_id=new_id.get(target_id, target_id))
        )
    registered = conn.execute(sa.select(_audit.c.id, _audit.c.details).where(_audit.c.action == "model.register")).all()
    for event_id, details in registered:
        old = (details or {}).get("training_job_id")
        if old is not None and old in new_id:
            conn.execute(
                sa.update(_audit)
                .where(_audit.c.id == event_id)
                .values(details={**details, "training_job_id": new_id[old]})
            )


def downgrade() -> None:
    conn = op.get_bind()
    op.create_table(
        "training_jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("requested_by", sa.Integer(), nullable=True),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column(
            "state",
            sa.Enum(
                "queued", "running", "succeeded", "failed", "cancelled", name="jobstate", native_enum=False, length=16
            ),
            nullable=False,
        ),
        sa.Column("progress", sa.JSON(), nullable=False),
        sa.Column("epoch_metrics", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("celery_task_id", sa.String(length=64), nullable=True),
        sa.Column("checkpoint_blob", sa.String(length=64), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("curves_blob", sa.String(length=64), nullable=True),
        sa.Column("result", sa.JSON(), server_default="{}", nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_training_jobs_project_id_projects"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["requested_by"], ["users.id"], name=op.f("fk_training_jobs_requested_by_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_jobs")),
    )
    op.create_index("ix_training_jobs_project_id", "training_jobs", ["project_id"], unique=False)
    op.create_index("ix_training_jobs_state", "training_jobs", ["state"], unique=False)
    rows = conn.execute(sa.select(_jobs).where(_jobs.c.kind == "finetune").order_by(_jobs.c.id)).mappings().all()
    for row in rows:  # under their job ids: the new table is empty, so nothing else needs remapping
        values = {c: row[c] for c in (*COMMON, *TRAINING)}
        values["epoch_metrics"] = values["epoch_metrics"] or []
        conn.execute(sa.insert(_training).values(id=row["id"], **values))
    _advance_sequence(conn, "training_jobs")
    finetunes = {row["id"]: row["id"] for row in rows}
    _point_versions_at(conn, "training_jobs", NEW_FK, OLD_FK, {})
    events = (
        conn.execute(
            sa.select(_audit.c.id).where(_audit.c.target_type.in_(("job", "jobs")), _audit.c.target_id.in_(finetunes))
        )
        .scalars()
        .all()
    )
    for event_id in events:
        conn.execute(sa.update(_audit).where(_audit.c.id == event_id).values(target_type="training_jobs"))
    conn.execute(sa.delete(_jobs).where(_jobs.c.kind == "finetune"))
    op.drop_column("jobs", "curves_blob")  # SQLite >= 3.35 drops a column in place (see 0004)
    op.drop_column("jobs", "checkpoint_blob")
    op.drop_column("jobs", "epoch_metrics")
