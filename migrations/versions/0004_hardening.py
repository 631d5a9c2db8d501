"""hardening: per-project name and self-review settings, login throttling, PHI-free DICOM names

Revision ID: 0004
Revises: 0003

The data step makes existing DICOM rows what new uploads are: ``sha256`` is the
hash of the stored (de-identified) copy, i.e. ``blob_sha``, unless that would
collide with another row of the same project; and the upload name, which often
names the patient, becomes ``dicom_<first 12 hex of blob_sha>.dcm`` (the blobs
are not read here, so the name comes from the content hash), in the audit trail
too. Downgrade keeps the new names and hashes: the old names are gone on purpose.
"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: Union[str, Sequence[str], None] = "0003"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        "login_throttle",
        sa.Column("key", sa.String(length=160), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_failure_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_login_throttle")),
    )
    # Plain ALTERs, not batch mode: on SQLite a batch copy of 'projects' drops the old table, and with
    # foreign keys on that DELETEs every image, annotation and member through ON DELETE CASCADE.
    op.add_column("projects", sa.Column("keep_original_names", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.add_column("projects", sa.Column("allow_self_review", sa.Boolean(), server_default=sa.false(), nullable=False))
    _phi_free_dicom_rows(op.get_bind())


_images = sa.table(
    "images",
    sa.column("id", sa.Integer),
    sa.column("project_id", sa.Integer),
    sa.column("filename", sa.String),
    sa.column("sha256", sa.String),
    sa.column("blob_sha", sa.String),
    sa.column("slice_index", sa.Integer),
)
_projects = sa.table("projects", sa.column("id", sa.Integer), sa.column("keep_original_names", sa.Boolean))
_audit = sa.table(
    "audit_events",
    sa.column("id", sa.Integer),
    sa.column("action", sa.String),
    sa.column("target_id", sa.Integer),
    sa.column("project_id", sa.Integer),
    sa.column("details", sa.JSON),
)


def _phi_free_dicom_rows(conn) -> None:
    """Per uploaded file (its slices share a hash), so a volume's rows never end up with different hashes."""
    rows = (
        conn.execute(
            sa.select(_images, _projects.c.keep_original_names).join(_projects, _projects.c.id == _images.c.project_id)
        )
        .mappings()
        .all()
    )
    taken = {(r["project_id"], r["sha256"], r["slice_index"]) for r in rows}
    files = {}
    for r in rows:
        files.setdefault((r["project_id"], r["sha256"]), []).append(r)
    renamed = {}
    for (project_id, sha), group in files.items():
        blob = group[0]["blob_sha"]
        if sha == blob and not any(r["filename"].lower().endswith(".dcm") for r in group):
            continue  # not DICOM: stored as uploaded, hash and name stay
        values = {}
        new_keys = {(project_id, blob, r["slice_index"]) for r in group}
        if sha != blob and not new_keys & taken:
            taken = (taken - {(project_id, sha, r["slice_index"]) for r in group}) | new_keys
            values["sha256"] = blob
        if not group[0]["keep_original_names"]:
            values["filename"] = f"dicom_{blob[:12]}.dcm"
            renamed.update({r["id"]: values["filename"] for r in group})
        if values:
            conn.execute(
                sa.update(_images).where(_images.c.project_id == project_id, _images.c.sha256 == sha).values(**values)
            )
    _rename_in_audit(conn, renamed)


def _rename_in_audit(conn, renamed: dict) -> None:
    """Upload and delete events recorded the original name; the image id (or the hash) replaces it."""
    keeping = set(conn.scalars(sa.select(_projects.c.id).where(_projects.c.keep_original_names)))
    events = conn.execute(
        sa.select(_audit.c.id, _audit.c.target_id, _audit.c.project_id, _audit.c.details).where(
            _audit.c.action.in_(("image.upload", "image.delete"))
        )
    ).all()
    for event_id, target_id, project_id, details in events:
        if project_id in keeping:
            continue
        details = dict(details or {})
        name = str(details.get("filename") or "")
        if target_id in renamed:
            new = renamed[target_id]
        elif details.get("format") == "dicom" or name.lower().endswith(".dcm"):
            new = f"dicom_{str(details.get('sha256') or '')[:12] or 'removed'}.dcm"
        else:
            continue
        if name != new:
            details["filename"] = new
            conn.execute(sa.update(_audit).where(_audit.c.id == event_id).values(details=details))


def downgrade() -> None:
    op.drop_column("projects", "allow_self_review")  # SQLite >= 3.35 drops a column in place (see upgrade)
    op.drop_column("projects", "keep_original_names")
    op.drop_table("login_throttle")
