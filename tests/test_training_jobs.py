"""Fine-tuning as queued jobs on a real training worker: register, resume after a kill, cancel, gate."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import select

from portal.store.errors import PermissionDeniedError, StoreError
from portal.store.models import AuditEvent, JobState, ModelVersion, Project, Role
from portal.store.services import annotations as ann
from portal.store.services import images, jobs, model_versions, projects, training
from portal.store.settings import Settings
from portal.store.store import open_store
from tests.conftest import first_pairs
from tests.storeutil import new_user, tx
from tests.workerutil import WORKER_ENV, WorkerProcess, wait_for
from workers.app import make_app
from workers.queue import JobQueue


@pytest.fixture(scope="module")
def env(tmp_path_factory, data_dir):
    folder = tmp_path_factory.mktemp("training_jobs")
    (data_dir / "onnx").mkdir(exist_ok=True)
    (folder / "onnx").symlink_to(data_dir / "onnx", target_is_directory=True)
    values = {
        "MEDSAM_DATA_DIR": str(folder),
        "MEDSAM_DATABASE_URL": f"sqlite:///{folder / 'medsam.db'}",
        "MEDSAM_TRAINING_GPU": "false",
        **WORKER_ENV,
    }
    settings = Settings(**{k[len("MEDSAM_") :].lower(): v for k, v in values.items()})
    store = open_store(settings)
    worker = WorkerProcess(values, folder / "worker.log", queues="training").start()
    worker.wait_ready()
    state = {
        "values": values,
        "store": store,
        "queue": JobQueue(app=make_app(settings)),
        "worker": worker,
        "folder": folder,
    }
    yield state
    state["worker"].stop()
    store.close()


def labelled_project(env, sample_data, start: int, n: int = 16):
    """A project whose n Kvasir images carry approved ground-truth annotations."""
    store = env["store"]
    admin, reviewer = new_user(store, Role.admin), new_user(store, Role.reviewer)
    with store.transaction() as session:
        project = projects.create_project(session, admin, f"t-{uuid.uuid4().hex[:6]}", "endoscopy", ["polyp"])
        projects.add_member(session, admin, project.id, reviewer)
    for image_path, mask_path in first_pairs(sample_data, "kvasir", start + n)[start:]:
        (row,) = tx(store, images.add_image, store.blobs, store.settings, admin, project.id, image_path)
        mask = (np.asarray(PILImage.open(mask_path)) > 127).astype(np.uint8)
        rev = tx(store, ann.save_revision, store.blobs, admin, row.id, "polyp", mask, 0, submit=True)
        tx(store, ann.approve, reviewer, rev.annotation_id)
    return admin, project


def finished(env, job_id):
    job = tx(env["store"], jobs.get_job, job_id)
    return job if job.state in (JobState.succeeded, JobState.failed, JobState.cancelled) else None


def test_queued_finetune_registers_a_version_behind_the_gate(env, sample_data):
    store = env["store"]
    admin, project = labelled_project(env, sample_data, 50)
    job = env["queue"].submit_finetune(store, admin, project.id, {"epochs": 2, "lr": 1e-4, "val_fraction": 0.25})
    done = wait_for(lambda: finished(env, job.id), 600, "the fine-tune")
    assert done.state == JobState.succeeded, done.error
    assert [m["epoch"] for m in done.epoch_metrics] == [1, 2] and done.curves_blob and done.checkpoint_blob
    with store.transaction() as session:
        frozen = session.get(Project, project.id).validation_image_ids
    assert len(frozen) == 4
    base = tx(store, model_versions.base_version)
    assert tx(store, training.evaluation, base.id, project.id).val_dice == pytest.approx(
        done.result["baseline_val_dice"], abs=1e-4
    )
    version_id = done.result["model_version_id"]
    if version_id is None:  # no epoch beat the start: nothing registered, and the result says so
        assert "no version was registered" in done.result["note"]
        return
    with store.transaction() as session:
        version = session.get(ModelVersion, version_id)
        assert session.scalars(select(ModelVersion).where(ModelVersion.training_job_id == job.id)).all() == [version]
    assert version.parent_id == base.id and version.encoder_digest == base.encoder_digest  # decoder-only
    assert version.metrics["best_val_dice"] >= version.metrics["baseline_val_dice"]
    tx(store, training.promote, admin, project.id, version_id)
    assert tx(store, model_versions.active_version, project.id).id == version_id


def test_the_gate_refuses_a_worse_version_unless_forced_and_rollback_is_audited(env, sample_data):
    store = env["store"]
    admin, project = labelled_project(env, sample_data, 70, n=4)
    annotator = new_user(store, Role.annotator)
    base = tx(store, model_versions.base_version)
    blob = store.blobs.put_bytes(b"weights " + uuid.uuid4().bytes)
    worse, better = (
        tx(
            store,
            model_versions.register_version,
            store.blobs,
            name=n,
            family="lite",
            encoder_digest=base.encoder_digest,
            model_digest=uuid.uuid4().hex * 2,
            project_id=project.id,
            parent_id=base.id,
            checkpoint_blob=blob,
        )
        for n in ("worse", "better")
    )
    tx(store, training.record_evaluation, base.id, project.id, 0.90, 0.5, 4)
    tx(store, training.record_evaluation, worse.id, project.id, 0.85, 0.4, 4)
    tx(store, training.record_evaluation, better.id, project.id, 0.93, 0.6, 4)
    with pytest.raises(training.GateError, match="0.8500, below the active version"):
        tx(store, training.promote, admin, project.id, worse.id)
    with pytest.raises(PermissionDeniedError):
        tx(store, training.promote, annotator, project.id, better.id)
    tx(store, training.promote, admin, project.id, better.id)
    assert tx(store, model_versions.active_version, project.id).id == better.id
    tx(store, training.promote, admin, project.id, worse.id, force=True)
    with store.transaction() as session:
        forced = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "model.promote.forced", AuditEvent.project_id == project.id)
        ).all()
    assert len(forced) == 1
    tx(store, training.activate_earlier, admin, project.id, better.id)  # no gate for a version once active
    assert tx(store, model_versions.active_version, project.id).id == better.id
    other = tx(
        store,
        model_versions.register_version,
        store.blobs,
        name="never",
        family="lite",
        encoder_digest=base.encoder_digest,
        model_digest="9" * 64,
        project_id=project.id,
        checkpoint_blob=blob,
    )
    with pytest.raises(PermissionDeniedError, match="never active"):
        tx(store, training.activate_earlier, admin, project.id, other.id)


def test_bad_requests_are_refused_before_queueing(env, sample_data):
    store = env["store"]
    admin, project = labelled_project(env, sample_data, 80, n=3)
    with pytest.raises(StoreError, match="3 images with approved labels; fine-tuning needs at least 4"):
        tx(store, training.create_job, store.blobs, store.settings, admin, project.id, {})
    with pytest.raises(StoreError, match="unknown training mode"):
        tx(store, training.create_job, store.blobs, store.settings, admin, project.id, {"mode": "encoder"})
    with pytest.raises(StoreError, match="full fine-tuning needs a GPU"):
        tx(store, training.create_job, store.blobs, store.settings, admin, project.id, {"mode": "full"})
    base = tx(store, model_versions.base_version)
    vit = tx(
        store,
        model_versions.register_version,
        store.blobs,
        name="vit",
        family="medsam_vit_b",
        encoder_digest="a" * 64,
        model_digest="b" * 64,
        project_id=None,
    )
    with pytest.raises(StoreError, match="has no checkpoint"):
        tx(store, training.create_job, store.blobs, store.settings, admin, project.id, {"parent_version_id": vit.id})
    with pytest.raises(StoreError, match="epochs must be"):
        tx(
            store,
            training.create_job,
            store.blobs,
            store.settings,
            admin,
            project.id,
            {"epochs": 0, "parent_version_id": base.id},
        )
    # Four labelled images, but validation takes one: the worker could only fail, so refuse now.
    admin4, four = labelled_project(env, sample_data, 83, n=4)
    with pytest.raises(StoreError, match="only 3 labelled images would be left for training"):
        tx(store, training.create_job, store.blobs, store.settings, admin4, four.id, {})


def test_killed_worker_resumes_from_its_last_epoch_and_cancel_lands(env, sample_data):
    store = env["store"]
    admin, project = labelled_project(env, sample_data, 30)
    job = env["queue"].submit_finetune(store, admin, project.id, {"epochs": 6, "batch_size": 1})
    first = wait_for(
        lambda: (j := tx(store, jobs.get_job, job.id)).epoch_metrics and j, 600, "the first epoch checkpoint"
    )
    env["worker"].kill_all()
    before = tx(store, jobs.get_job, job.id)
    assert before.state == JobState.running and before.checkpoint_blob
    done_epochs = len(before.epoch_metrics)
    env["worker"] = WorkerProcess(env["values"], env["folder"] / "worker2.log", queues="training").start()
    env["worker"].wait_ready()
    done = wait_for(lambda: finished(env, job.id), 900, "the resumed fine-tune")
    assert done.state == JobState.succeeded, done.error
    assert [m["epoch"] for m in done.epoch_metrics] == [1, 2, 3, 4, 5, 6]
    assert done.epoch_metrics[:done_epochs] == before.epoch_metrics[:done_epochs]  # not trained again
    assert done.attempts >= 2 and first.epoch_metrics[0] == done.epoch_metrics[0]
    # Cancel: a running job stops within one step.
    again = env["queue"].submit_finetune(store, admin, project.id, {"epochs": 50, "batch_size": 1})
    wait_for(lambda: tx(store, jobs.get_job, again.id).progress.get("step"), 300, "the first step")
    env["queue"].cancel(store, again.id)
    stopped = wait_for(lambda: finished(env, again.id), 60, "the cancel")
    assert stopped.state == JobState.cancelled
