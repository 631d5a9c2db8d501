"""Nothing is lost or overwritten when people (and crashes) happen at the same time."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from portal.store.errors import ConflictError
from portal.store.models import AnnotationRevision, Role
from portal.store.services import annotations as ann
from portal.store.services import images, projects
from portal.store.services.gc import collect_garbage
from portal.store.services.masks import load_mask
from tests.conftest import WANT_S3
from tests.dbutil import temporary_database
from tests.storeutil import make_store, new_user, png_file, square_mask, tx


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def db(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"conc_{request.param}")
    with temporary_database(request.param, tmp) as url:
        store = make_store(url, tmp)
        yield store, url, tmp
        store.close()


@pytest.fixture()
def setup(db, tmp_path):
    store = db[0]
    admin = new_user(store, Role.admin)
    with store.transaction() as session:
        project = projects.create_project(session, admin, f"c-{uuid.uuid4().hex[:6]}", "other", ["organ"])
    return store, admin, project


def run_together(fns):
    barrier = threading.Barrier(len(fns))
    results = [None] * len(fns)

    def call(i, fn):
        barrier.wait()
        try:
            results[i] = fn()
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            results[i] = exc

    threads = [threading.Thread(target=call, args=(i, fn)) for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def test_two_saves_from_the_same_base_exactly_one_wins(setup, tmp_path):
    store, admin, project = setup
    (image,) = tx(store, images.add_image, store.blobs, store.settings, admin, project.id, png_file(tmp_path, 10))
    tx(store, ann.save_revision, store.blobs, admin, image.id, "organ", square_mask(), 0)
    for attempt in range(3):
        base = attempt + 1
        results = run_together(
            [
                lambda s=side, b=base: tx(
                    store, ann.save_revision, store.blobs, admin, image.id, "organ", square_mask(side=s), b
                )
                for side in (11, 17)
            ]
        )
        wins = [r for r in results if isinstance(r, AnnotationRevision)]
        conflicts = [r for r in results if isinstance(r, ConflictError)]
        assert len(wins) == 1 and len(conflicts) == 1, results
        assert conflicts[0].current_revision == base + 1


def test_twenty_parallel_saves_to_different_annotations_lose_nothing(setup, tmp_path):
    store, admin, project = setup
    rows = [
        tx(store, images.add_image, store.blobs, store.settings, admin, project.id, png_file(tmp_path, 100 + i))[0]
        for i in range(20)
    ]
    results = run_together(
        [
            lambda r=row, i=i: tx(
                store, ann.save_revision, store.blobs, admin, r.id, "organ", square_mask(side=5 + i), 0
            )
            for i, row in enumerate(rows)
        ]
    )
    assert all(isinstance(r, AnnotationRevision) for r in results), results
    with store.transaction() as session:
        saved = list(
            session.scalars(select(AnnotationRevision).where(AnnotationRevision.id.in_([r.id for r in results])))
        )
    assert len(saved) == 20
    areas = sorted(int(load_mask(store.blobs, r.blob_sha).sum()) for r in saved)
    assert areas == sorted((5 + i) ** 2 for i in range(20))


def test_a_crash_between_blob_and_row_leaves_only_an_orphan_blob(db, setup, tmp_path):
    store, admin, project = setup
    _, url, data_dir = db
    (image,) = tx(store, images.add_image, store.blobs, store.settings, admin, project.id, png_file(tmp_path, 200))
    with store.transaction() as session:
        before = session.scalar(select(func.count()).select_from(AnnotationRevision))
    blobs_before = {b.digest for b in store.blobs.iter_blobs()}
    script = textwrap.dedent(f"""
        import os
        from portal.store.settings import Settings
        from portal.store.store import open_store
        from portal.store.models import User
        from portal.store.services import annotations as ann
        from tests.storeutil import square_mask
        store = open_store(Settings(data_dir={str(data_dir)!r}, database_url={url!r}))
        real_put = store.blobs.put_bytes
        def put_then_die(data):
            real_put(data)
            os._exit(9)  # the process dies right after the blob landed, before any row
        store.blobs.put_bytes = put_then_die
        with store.transaction() as s:
            admin = s.get(User, {admin.id})
        with store.transaction() as s:
            ann.save_revision(s, store.blobs, admin, {image.id}, "organ", square_mask(side=33), 0)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 9, proc.stderr
    with store.transaction() as session:
        assert session.scalar(select(func.count()).select_from(AnnotationRevision)) == before
        for rev in session.scalars(select(AnnotationRevision)):
            assert store.blobs.exists(rev.blob_sha)  # no row points to a missing blob
    orphans = {b.digest for b in store.blobs.iter_blobs()} - blobs_before
    assert len(orphans) == 1
    assert (
        tx(store, collect_garbage, store.blobs, timedelta(hours=store.settings.gc_grace_hours)).deleted == 0
    )  # inside the grace period: kept
    assert all(store.blobs.exists(o) for o in orphans)
    tx(store, collect_garbage, store.blobs, timedelta(0))
    assert not any(store.blobs.exists(o) for o in orphans)
    if store.blobs.url.startswith("file://"):  # a killed writer's partial file is swept too
        part = Path(store.blobs.blob_path("0" * 64).rsplit("/", 3)[0]) / ".tmp" / "dead.part"
        part.parent.mkdir(exist_ok=True)
        part.write_bytes(b"half")
        assert tx(store, collect_garbage, store.blobs, timedelta(0)).temporary_removed >= 1 and not part.exists()
    # And the image's annotation can still be saved normally afterwards.
    assert tx(store, ann.save_revision, store.blobs, admin, image.id, "organ", square_mask(), 0).number == 1


@pytest.mark.skipif(not WANT_S3, reason="set MEDSAM_TEST_S3=1 to test S3 storage (moto)")
def test_services_on_s3_storage(new_bucket, tmp_path):
    endpoint, bucket = new_bucket
    store = make_store(
        f"sqlite:///{tmp_path / 's3.db'}", tmp_path, storage_url=f"s3://{bucket}/medsam", s3_endpoint_url=endpoint
    )
    admin = new_user(store, Role.admin)
    with store.transaction() as session:
        project = projects.create_project(session, admin, "s3 project", "other", ["organ"])
    (image,) = tx(store, images.add_image, store.blobs, store.settings, admin, project.id, png_file(tmp_path, 300))
    rev = tx(store, ann.save_revision, store.blobs, admin, image.id, "organ", square_mask(side=12), 0)
    assert store.blobs.url.startswith("s3://") and load_mask(store.blobs, rev.blob_sha).sum() == 144
    tx(store, images.delete_image, admin, image.id)
    tx(store, collect_garbage, store.blobs, timedelta(0))
    assert not store.blobs.exists(image.blob_sha) and not store.blobs.exists(rev.blob_sha)
    store.close()
