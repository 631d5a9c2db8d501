"""volumes: a volume as one entity; slices and 3-D annotations point at it

Revision ID: 0006
Revises: 0005

A new ``volumes`` table; ``images.volume_id`` (the slice rows of a volume);
``annotations.volume_id`` with ``image_id`` now nullable and a CHECK that
exactly one of the two is set (a 3-D label map belongs to a volume).

Data: every group of NIfTI per-slice rows (``num_slices > 1`` sharing
``(project_id, sha256)``, named ``.nii``/``.nii.gz``) becomes one volume that
its rows point at. The migration reads no blobs, so a migrated volume's
geometry (affine, spacing, orientation) is NULL until the services read it
from the stored file on first use. Multi-page TIFF stacks stay per-slice
images: they carry no geometry and are not volumes.

On SQLite the two existing tables are not rebuilt (a batch copy drops the old
table, and with foreign keys on that cascades into every revision, review and
mask, see 0004 and 0005): columns are added with plain ALTERs and the
constraints are written into the schema text, SQLite's documented procedure
(https://sqlite.org/lang_altertable.html, section 7); every existing row
satisfies them, since the new columns are all NULL.

Downgrade: 3-D annotations (with their revisions and reviews) are deleted,
since the old schema cannot hold them; NIfTI slice rows stay what they were;
the slice rows of a DICOM series become the single DICOM images they are
(hash of the stored file, slice 0 of 1); then the columns and the table go.
"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: Union[str, Sequence[str], None] = "0005"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

IMAGES_FK = "fk_images_volume_id_volumes"
ANNOTATIONS_FK = "fk_annotations_volume_id_volumes"
ONE_TARGET = "ck_annotations_one_target"
ANNOTATIONS_UQ = "ix_annotations_volume_id_label"  # a unique index: SQLite adds one without a rebuild
CHECK_SQL = "(image_id IS NULL) <> (volume_id IS NULL)"

_images = sa.table(
    "images",
    sa.column("id", sa.Integer),
    sa.column("project_id", sa.Integer),
    sa.column("filename", sa.String),
    sa.column("sha256", sa.String),
    sa.column("blob_sha", sa.String),
    sa.column("width", sa.Integer),
    sa.column("height", sa.Integer),
    sa.column("modality", sa.String),
    sa.column("window", sa.String),
    sa.column("slice_index", sa.Integer),
    sa.column("num_slices", sa.Integer),
    sa.column("uploaded_by", sa.Integer),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("volume_id", sa.Integer),
)
_volumes = sa.table(
    "volumes",
    sa.column("id", sa.Integer),
    sa.column("project_id", sa.Integer),
    sa.column("filename", sa.String),
    sa.column("sha256", sa.String),
    sa.column("blob_sha", sa.String),
    sa.column("source_format", sa.String),
    sa.column("modality", sa.String),
    sa.column("window", sa.String),
    sa.column("depth", sa.Integer),
    sa.column("height", sa.Integer),
    sa.column("width", sa.Integer),
    sa.column("uploaded_by", sa.Integer),
    sa.column("created_at", sa.DateTime(timezone=True)),
)
_annotations = sa.table("annotations", sa.column("id", sa.Integer), sa.column("volume_id", sa.Integer))


def upgrade() -> None:
    conn = op.get_bind()
    op.create_table(
        "volumes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("blob_sha", sa.String(length=64), nullable=True),
        sa.Column("source_format", sa.String(length=16), nullable=False),
        sa.Column("modality", sa.String(length=32), nullable=False),
        sa.Column("window", sa.String(length=16), nullable=True),
        sa.Column("depth", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("affine", sa.JSON(), nullable=True),
        sa.Column("spacing", sa.JSON(), nullable=True),
        sa.Column("orientation", sa.String(length=8), nullable=True),
        sa.Column("slice_positions", sa.JSON(), nullable=True),
        sa.Column("sop_instance_uids", sa.JSON(), nullable=True),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("uploaded_by", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_volumes_project_id_projects"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["uploaded_by"], ["users.id"], name=op.f("fk_volumes_uploaded_by_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_volumes")),
        sa.UniqueConstraint("project_id", "sha256", name=op.f("uq_volumes_project_id_sha256")),
    )
    op.create_index(op.f("ix_volumes_project_id"), "volumes", ["project_id"], unique=False)
    op.create_index(op.f("ix_volumes_blob_sha"), "volumes", ["blob_sha"], unique=False)
    op.add_column("images", sa.Column("volume_id", sa.Integer(), nullable=True))
    op.add_column("annotations", sa.Column("volume_id", sa.Integer(), nullable=True))
    if conn.dialect.name == "sqlite":
        _sqlite_constraints(conn, add=True)
    else:
        op.create_foreign_key(IMAGES_FK, "images", "volumes", ["volume_id"], ["id"], ondelete="CASCADE")
        op.create_foreign_key(ANNOTATIONS_FK, "annotations", "volumes", ["volume_id"], ["id"], ondelete="CASCADE")
        op.alter_column("annotations", "image_id", existing_type=sa.Integer(), nullable=True)
        op.create_check_constraint(ONE_TARGET, "annotations", CHECK_SQL)
    op.create_index(op.f("ix_images_volume_id"), "images", ["volume_id"], unique=False)
    op.create_index(ANNOTATIONS_UQ, "annotations", ["volume_id", "label"], unique=True)
    _volumes_from_slices(conn)


def _volumes_from_slices(conn) -> None:
    groups: dict = {}
    query = sa.select(_images).where(_images.c.num_slices > 1).order_by(_images.c.id)
    for row in conn.execute(query).mappings():
        groups.setdefault((row["project_id"], row["sha256"]), []).append(row)
    for (project_id, sha), rows in groups.items():
        first = min(rows, key=lambda r: r["slice_index"])
        if not first["filename"].lower().endswith((".nii", ".nii.gz")):
            continue  # a TIFF stack: no geometry, stays per-slice images
        volume_id = conn.execute(
            sa.insert(_volumes)
            .values(
                project_id=project_id,
                filename=first["filename"],
                sha256=sha,
                blob_sha=first["blob_sha"],
                source_format="nifti",
                modality=first["modality"],
                window=first["window"],
                depth=first["num_slices"],
                height=first["height"],
                width=first["width"],
                uploaded_by=first["uploaded_by"],
                created_at=first["created_at"],
            )
            .returning(_volumes.c.id)
        ).scalar_one()
        conn.execute(
            sa.update(_images)
            .where(_images.c.project_id == project_id, _images.c.sha256 == sha)
            .values(volume_id=volume_id)
        )


def _sqlite_constraints(conn, *, add: bool) -> None:
    """Write the new constraints into (or out of) the schema text of images and annotations."""
    image_fk = f"CONSTRAINT {IMAGES_FK} FOREIGN KEY(volume_id) REFERENCES volumes (id) ON DELETE CASCADE"
    annotation_parts = (
        f"CONSTRAINT {ANNOTATIONS_FK} FOREIGN KEY(volume_id) REFERENCES volumes (id) ON DELETE CASCADE",
        f"CONSTRAINT {ONE_TARGET} CHECK ({CHECK_SQL})",
    )
    sql = {name: _table_sql(conn, name) for name in ("images", "annotations")}
    if add:
        sql["images"] = _append_parts(sql["images"], (image_fk,))
        sql["annotations"] = _append_parts(
            sql["annotations"].replace("image_id INTEGER NOT NULL", "image_id INTEGER", 1), annotation_parts
        )
    else:
        sql["images"] = _remove_parts(sql["images"], (image_fk,))
        sql["annotations"] = _remove_parts(sql["annotations"], annotation_parts).replace(
            "image_id INTEGER,", "image_id INTEGER NOT NULL,", 1
        )
    version = conn.exec_driver_sql("PRAGMA schema_version").scalar()
    conn.exec_driver_sql("PRAGMA writable_schema=ON")
    for name, text in sql.items():
        conn.execute(
            sa.text("UPDATE sqlite_master SET sql = :sql WHERE type='table' AND name=:name"),
            {"sql": text, "name": name},
        )
    conn.exec_driver_sql(f"PRAGMA schema_version={int(version) + 1}")
    conn.exec_driver_sql("PRAGMA writable_schema=OFF")


def _table_sql(conn, name: str) -> str:
    return conn.execute(
        sa.text("SELECT sql FROM sqlite_master WHERE type='table' AND name=:name"), {"name": name}
    ).scalar_one()


def _append_parts(sql: str, parts: Sequence[str]) -> str:
    body = sql.rstrip()
    assert body.endswith(")"), sql
    return body[:-1].rstrip() + "".join(f", \n\t{p}" for p in parts) + "\n)"


def _remove_parts(sql: str, parts: Sequence[str]) -> str:
    for part in parts:
        assert f", \n\t{part}" in sql, (part, sql)
        sql = sql.replace(f", \n\t{part}", "", 1)
    return sql


def _dicom_slices_become_images(conn) -> None:
    """A series' slice rows become single DICOM images; one the project holds already as such goes."""
    dicom = sa.select(_volumes.c.id).where(_volumes.c.source_format == "dicom").scalar_subquery()
    rows = conn.execute(
        sa.select(_images.c.id, _images.c.project_id, _images.c.blob_sha).where(_images.c.volume_id.in_(dicom))
    ).all()
    for image_id, project_id, blob in rows:
        taken = conn.execute(
            sa.select(_images.c.id).where(
                _images.c.project_id == project_id, _images.c.sha256 == blob, _images.c.slice_index == 0
            )
        ).first()
        if taken is not None:
            conn.execute(sa.delete(_images).where(_images.c.id == image_id))
        else:
            conn.execute(
                sa.update(_images).where(_images.c.id == image_id).values(sha256=blob, slice_index=0, num_slices=1)
            )


def downgrade() -> None:
    conn = op.get_bind()
    # 3-D annotations cannot exist in the old schema; their revisions and reviews go with them.
    for table in ("reviews", "annotation_revisions"):
        conn.execute(
            sa.text(
                f"DELETE FROM {table} WHERE annotation_id IN (SELECT id FROM annotations WHERE volume_id IS NOT NULL)"
            )
        )
    conn.execute(sa.delete(_annotations).where(_annotations.c.volume_id.is_not(None)))
    _dicom_slices_become_images(conn)
    op.drop_index(ANNOTATIONS_UQ, table_name="annotations")
    op.drop_index(op.f("ix_images_volume_id"), table_name="images")
    if conn.dialect.name == "sqlite":
        _sqlite_constraints(conn, add=False)
    else:
        op.drop_constraint(ONE_TARGET, "annotations", type_="check")
        op.alter_column("annotations", "image_id", existing_type=sa.Integer(), nullable=False)
        op.drop_constraint(ANNOTATIONS_FK, "annotations", type_="foreignkey")
        op.drop_constraint(IMAGES_FK, "images", type_="foreignkey")
    op.drop_column("annotations", "volume_id")  # SQLite >= 3.35 drops a column in place (see 0004)
    op.drop_column("images", "volume_id")
    op.drop_index(op.f("ix_volumes_blob_sha"), table_name="volumes")
    op.drop_index(op.f("ix_volumes_project_id"), table_name="volumes")
    op.drop_table("volumes")
