"""Migration 0006: per-slice NIfTI rows become volumes; 3-D annotations and DICOM series go back cleanly."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic import command

from portal.store.db import make_engine
from portal.store.migrate import alembic_config, current_revision, head_revision, upgrade
from tests.dbutil import temporary_database
from tests.test_migration_jobs import NOW, PROJECTS, USERS, rows, table


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path):
    with temporary_database(request.param, tmp_path) as url:
        eng = make_engine(url)
        yield eng
        eng.dispose()


IMAGES = table(
    "images",
    "id",
    "project_id",
    "filename",
    "sha256",
    "blob_sha",
    "width",
    "height",
    "modality",
    "window",
    "slice_index",
    "num_slices",
    "uploaded_by",
    "created_at",
)
ANNOTATIONS = table(
    "annotations", "id", "image_id", "label", "status", "current_revision", "created_by", "created_at", "updated_at"
)
REVISIONS = table("annotation_revisions", "id", "annotation_id", "number", "author_id", "blob_sha", "created_at")


def image(i, sha, name, z, n, blob=None):
    return dict(
        id=i,
        project_id=1,
        filename=name,
        sha256=sha,
        blob_sha=blob or sha,
        width=64,
        height=48,
        modality="mr",
        window=None,
        slice_index=z,
        num_slices=n,
        uploaded_by=1,
        created_at=NOW,
    )


OLD_IMAGES = [
    *(image(1 + z, "a" * 64, "brain.nii.gz", z, 3) for z in range(3)),  # a NIfTI volume, three slice rows
    image(4, "b" * 64, "photo.png", 0, 1),  # a 2-D image
    *(image(5 + z, "c" * 64, "stack.tif", z, 2) for z in range(2)),  # a TIFF stack: no geometry, stays
]


def seed(conn) -> None:
    conn.execute(
        sa.insert(USERS).values(id=1, username="u", password_hash="x", role="admin", is_active=True, created_at=NOW)
    )
    conn.execute(
        sa.insert(PROJECTS).values(
            id=1,
            name="p",
            modality="mr",
            label_classes=[],
            created_at=NOW,
            keep_original_names=False,
            allow_self_review=False,
        )
    )
    conn.execute(sa.insert(IMAGES), OLD_IMAGES)
    conn.execute(
        sa.insert(ANNOTATIONS).values(
            id=1,
            image_id=2,
            label="tumour",
            status="draft",
            current_revision=1,
            created_by=1,
            created_at=NOW,
            updated_at=NOW,
        )
    )
    conn.execute(
        sa.insert(REVISIONS).values(id=1, annotation_id=1, number=1, author_id=1, blob_sha="d" * 64, created_at=NOW)
    )


def test_slice_rows_become_volumes_and_come_back(engine):
    upgrade(engine, "0005")
    with engine.begin() as conn:
        seed(conn)
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        (volume,) = conn.execute(sa.text("SELECT * FROM volumes")).mappings().all()
        links = dict(conn.execute(sa.text("SELECT id, volume_id FROM images")).all())
    assert (volume["filename"], volume["sha256"], volume["blob_sha"], volume["source_format"]) == (
        "brain.nii.gz",
        "a" * 64,
        "a" * 64,
        "nifti",
    )
    assert (volume["depth"], volume["height"], volume["width"], volume["affine"]) == (3, 48, 64, None)
    assert links == {1: volume["id"], 2: volume["id"], 3: volume["id"], 4: None, 5: None, 6: None}
    _new_rows_keep_the_rules(engine, volume["id"])
    _downgrade_restores(engine)


def _new_rows_keep_the_rules(engine, volume_id):
    """A 3-D annotation belongs to a volume alone; a DICOM series' slices; the volume's delete cascades."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO annotations (id, volume_id, label, status, current_revision, created_at, updated_at) "
                "VALUES (2, :v, 'tumour', 'draft', 1, :t, :t)"
            ),
            {"v": volume_id, "t": NOW},
        )
        conn.execute(
            sa.insert(REVISIONS).values(id=2, annotation_id=2, number=1, author_id=1, blob_sha="e" * 64, created_at=NOW)
        )
        for values in ({"i": 2, "v": volume_id}, {"i": None, "v": None}):  # both, or neither: refused
            with pytest.raises(sa.exc.IntegrityError), conn.begin_nested():
                conn.execute(
                    sa.text(
                        "INSERT INTO annotations (image_id, volume_id, label, status, current_revision, created_at, "
                        "updated_at) VALUES (:i, :v, 'x', 'draft', 0, :t, :t)"
                    ),
                    {**values, "t": NOW},
                )
        with pytest.raises(sa.exc.IntegrityError), conn.begin_nested():  # one map per (volume, label)
            conn.execute(
                sa.text(
                    "INSERT INTO annotations (volume_id, label, status, current_revision, created_at, updated_at) "
                    "VALUES (:v, 'tumour', 'draft', 0, :t, :t)"
                ),
                {"v": volume_id, "t": NOW},
            )
        series = conn.execute(
            sa.text(
                "INSERT INTO volumes (project_id, filename, sha256, source_format, modality, depth, height, width, "
                "created_at) VALUES (1, 'CT_series1.dcm', :s, 'dicom', 'CT', 2, 48, 64, :t) RETURNING id"
            ),
            {"s": "f" * 64, "t": NOW},
        ).scalar()
        conn.execute(
            sa.insert(IMAGES),
            [{**image(10 + z, "f" * 64, f"CT_series1_instance{z}.dcm", z, 2, blob=str(z) * 64)} for z in range(2)],
        )
        conn.execute(sa.text("UPDATE images SET volume_id = :v WHERE id IN (10, 11)"), {"v": series})


def _downgrade_restores(engine):
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0005")
    assert "volumes" not in sa.inspect(engine).get_table_names()
    with engine.connect() as conn:
        images = rows(conn, IMAGES)
        annotations = rows(conn, ANNOTATIONS)
        revisions = rows(conn, REVISIONS)
    for old in OLD_IMAGES:  # every old row as it was
        assert images[old["id"]] == {**old, "created_at": images[old["id"]]["created_at"]}
    # the series' slices are the single DICOM images they are; the 3-D annotation is gone, the 2-D one kept
    assert [(images[i]["sha256"], images[i]["slice_index"], images[i]["num_slices"]) for i in (10, 11)] == [
        ("0" * 64, 0, 1),
        ("1" * 64, 0, 1),
    ]
    assert list(annotations) == [1] and list(revisions) == [1]
    with engine.begin() as conn:  # image_id is required again
        with pytest.raises(sa.exc.IntegrityError), conn.begin_nested():
            conn.execute(
                sa.text(
                    "INSERT INTO annotations (label, status, current_revision, created_at, updated_at) "
                    "VALUES ('x', 'draft', 0, :t, :t)"
                ),
                {"t": NOW},
            )
    upgrade(engine)
    assert current_revision(engine) == head_revision()
