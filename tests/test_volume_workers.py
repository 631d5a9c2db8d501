"""Volume tasks on a real worker process: precompute every slice (once), propagate a box into a draft
revision through the real model, conflicts and cancel through the job state machine."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from sqlalchemy import select

from medsam_core.cache import pixel_sha256
from portal.store.models import AnnotationRevision, EmbeddingEntry, JobState, Role
from portal.store.services import images, jobs, model_versions, projects, volumes, volumes_labels
from portal.store.settings import Settings
from portal.store.store import open_store
from tests.conftest import tight_box
from tests.storeutil import new_user, tx
from tests.volumeutil import dice, tiny_brats, tumour_zhw
from tests.workerutil import WORKER_ENV, WorkerProcess, wait_for
from workers.app import make_app
from workers.queue import JobQueue


@pytest.fixture(scope="module")
def env(tmp_path_factory, data_dir):
    folder = tmp_path_factory.mktemp("volume_workers")
    (data_dir / "onnx").mkdir(exist_ok=True)
    (folder / "onnx").symlink_to(data_dir / "onnx", target_is_directory=True)  # export once per run
    values = {"MEDSAM_DATA_DIR": str(folder), "MEDSAM_DATABASE_URL": f"sqlite:///{folder / 'medsam.db'}", **WORKER_ENV}
    settings = Settings(**{k[len("MEDSAM_") :].lower(): v for k, v in values.items()})
    store = open_store(settings)
    worker = WorkerProcess(values, folder / "worker.log").start()
    worker.wait_ready()
    admin = new_user(store, Role.admin)
    annotator = new_user(store, Role.annotator)
    with store.transaction() as db:
        project = projects.create_project(db, admin, f"vw-{uuid.uuid4().hex[:6]}", "mr", ["tumour"])
        projects.add_member(db, admin, project.id, annotator)
    yield {
        "store": store,
        "queue": JobQueue(app=make_app(settings)),
        "admin": admin,
        "annotator": annotator,
        "project": project,
        "base": tx(store, model_versions.base_version),
        "folder": folder,
    }
    worker.stop()
    store.close()


def add(env, path):
    store = env["store"]
    return tx(store, volumes.add_volume, store.blobs, store.settings, env["admin"], env["project"].id, [path])


def finished(env, job_id):
    job = tx(env["store"], jobs.get_job, job_id)
    return job if job.state in (JobState.succeeded, JobState.failed, JobState.cancelled) else None


def test_precompute_encodes_each_slice_once_under_its_2d_cache_key(env, sample_data):
    store, queue = env["store"], env["queue"]
    image, _ = tiny_brats(sample_data, env["folder"] / "data")
    added = add(env, image)
    job = queue.submit_precompute_volume(store, env["annotator"], added.volume.id)
    done = wait_for(lambda: finished(env, job.id), 300, "precompute_volume")
    assert done.state == JobState.succeeded, done.error
    assert done.result["encoded"] == 4 and done.result["already_cached"] == 0
    assert done.progress["done"] == done.progress["total"] == 4
    keys = {pixel_sha256(images.display_pixels(store.blobs, s, store.settings)) for s in added.slices}
    with store.transaction() as db:  # the 2-D tools' key for each slice is what was cached
        assert keys <= set(db.scalars(select(EmbeddingEntry.pixel_sha256)))
    again = queue.submit_precompute_volume(store, env["annotator"], added.volume.id)
    redone = wait_for(lambda: finished(env, again.id), 120, "the second precompute")
    assert redone.state == JobState.succeeded and (redone.result["encoded"], redone.result["already_cached"]) == (0, 4)


def test_propagate_saves_a_draft_revision_and_a_stale_one_conflicts(env, sample_data):
    store, queue = env["store"], env["queue"]
    image, label = tiny_brats(sample_data, env["folder"] / "data")
    vid = add(env, image).volume.id  # the same content: already precomputed by the test above, or encoded now
    truth = tumour_zhw(label)
    box = tight_box(truth[1])
    job = queue.submit_propagation(store, env["annotator"], vid, label="tumour", key_slice=1, box=box, z_range=(0, 3))
    done = wait_for(lambda: finished(env, job.id), 300, "propagate")
    assert done.state == JobState.succeeded, done.error
    assert done.result["revision"] == 1 and done.progress["done"] == done.progress["total"] == 4
    annotation, revision, mask = tx(store, volumes_labels.read_label_map, store.blobs, env["admin"], vid, "tumour")
    assert dice(mask, truth) > 0.75 and annotation.status.value == "draft"
    assert revision.prompt["key_slice"] == 1 and revision.model_version_id == env["base"].id
    assert revision.author_id == env["annotator"].id
    stale = queue.submit_propagation(
        store, env["admin"], vid, label="tumour", key_slice=2, box=tight_box(truth[2]), z_range=(2, 3), base_revision=0
    )
    failed = wait_for(lambda: finished(env, stale.id), 300, "the stale propagation")
    assert (
        failed.state == JobState.failed and "revision 1" in failed.error and "nothing was overwritten" in failed.error
    )
    on_top = queue.submit_propagation(
        store, env["admin"], vid, label="tumour", key_slice=3, box=tight_box(truth[3]), z_range=(3, 3)
    )
    kept = wait_for(lambda: finished(env, on_top.id), 300, "a propagation on top of revision 1")
    assert kept.state == JobState.succeeded and kept.result["revision"] == 2
    newer = tx(store, volumes_labels.read_label_map, store.blobs, env["admin"], vid, "tumour")[2]
    assert np.array_equal(newer[:3], mask[:3])  # outside its z range the base revision is kept


def test_bad_propagations_are_refused_before_queueing(env, sample_data):
    store, queue = env["store"], env["queue"]
    vid = add(env, tiny_brats(sample_data, env["folder"] / "data")[0]).volume.id
    ask = lambda **kw: queue.submit_propagation(store, env["annotator"], vid, **kw)  # noqa: E731
    with pytest.raises(Exception, match="out of range"):
        ask(label="tumour", key_slice=9, box=[1, 1, 20, 20])
    with pytest.raises(Exception, match="reversed"):
        ask(label="tumour", key_slice=1, box=[1, 1, 20, 20], z_range=(3, 0))
    with pytest.raises(Exception, match="not a label class"):
        ask(label="liver", key_slice=1, box=[1, 1, 20, 20])
    with pytest.raises(Exception, match="box"):
        ask(label="tumour", key_slice=1, box=[5, 5, 5, 20])
    with pytest.raises(Exception, match="unknown propagation scheme"):
        ask(label="tumour", key_slice=1, box=[1, 1, 20, 20], scheme="magic")


def test_cancel_a_running_propagation(env, sample_data):
    store, queue = env["store"], env["queue"]
    image, label = tiny_brats(sample_data, env["folder"] / "data", z=(80, 90))  # not cached: each slice encodes
    vid = add(env, image).volume.id
    truth = tumour_zhw(label)
    job = queue.submit_propagation(store, env["annotator"], vid, label="tumour", key_slice=0, box=tight_box(truth[0]))
    wait_for(lambda: (tx(store, jobs.get_job, job.id).progress or {}).get("done", 0) >= 1, 300, "the first slice")
    queue.cancel(store, job.id, env["annotator"])
    done = wait_for(lambda: finished(env, job.id), 120, "the cancel to land")
    assert done.state == JobState.cancelled and done.progress["done"] < 10
    with store.transaction() as db:
        assert not list(
            db.scalars(
                select(AnnotationRevision)
                .where(AnnotationRevision.prompt.is_not(None))
                .where(AnnotationRevision.comment.contains(f"job {job.id})"))
            )
        )
