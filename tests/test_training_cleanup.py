"""A fine-tune keeps only its latest epoch's checkpoint, and none once it ends without a version.

The task body runs in-process through ``run_job`` (no Celery, no model): the
training itself is replaced by a stand-in that writes epochs through the real
``JobSink`` and then ends the way a real run can end.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from medsam_core.errors import MedsamError
from portal.store.models import JobKind, JobState, Role
from portal.store.services import jobs, projects
from tests.storeutil import make_store, new_user, tx
from workers import training_tasks
from workers.jobrunner import run_job


@pytest.fixture()
def store(tmp_path, monkeypatch):
    store = make_store(f"sqlite:///{tmp_path / 'medsam.db'}", tmp_path)
    monkeypatch.setattr(training_tasks, "get_store", lambda: store)
    yield store
    store.close()


def _job(store):
    admin = new_user(store, Role.admin)
    with store.transaction() as db:
        project = projects.create_project(db, admin, "cleanup", "ct", ["organ"])
        return jobs.create_job(db, JobKind.finetune, {"epochs": 3}, project_id=project.id, actor=admin)


def _epochs(sink, n: int, seen: list[str]) -> None:
    sink.info = SimpleNamespace(config=SimpleNamespace(epochs=n))
    history = []
    for epoch in range(1, n + 1):
        history.append({"epoch": epoch, "val_dice": 0.5, "train_loss": 1.0})
        sink.epoch_done(history[-1], {"history": list(history), "baseline_val_dice": 0.6, "weights": [epoch] * 64})
        seen.append(tx(sink.store, jobs.get_job, sink.job.id).checkpoint_blob)


def _run(store, job_id, ending):
    seen: list[str] = []

    def train_and_register(_store, _job, sink):
        _epochs(sink, 3, seen)
        return ending()

    training_tasks._train_and_register, original = train_and_register, training_tasks._train_and_register
    try:
        outcome = run_job(store, job_id, None, training_tasks._finetune)
    finally:
        training_tasks._train_and_register = original
    return outcome, seen


def _no_version():
    return {"model_version_id": None, "note": "no epoch beat the starting weights"}


def _bad_input():
    raise MedsamError("the validation images have no labelled object")


def _cancelled():
    raise jobs.JobCancelled("job was cancelled")


@pytest.mark.parametrize(
    "ending, state",
    [(_no_version, JobState.succeeded), (_bad_input, JobState.failed), (_cancelled, JobState.cancelled)],
)
def test_a_finetune_that_registers_nothing_leaves_no_checkpoint(store, ending, state):
    job = _job(store)
    outcome, seen = _run(store, job.id, ending)
    done = tx(store, jobs.get_job, job.id)
    assert done.state == state, outcome
    assert len(set(seen)) == 3 and all(seen)  # each epoch's checkpoint was named by the row in its turn
    assert done.checkpoint_blob is None
    assert [store.blobs.exists(b) for b in seen] == [False, False, False]


def test_while_it_runs_only_the_latest_checkpoint_is_kept_and_a_registered_run_keeps_it(store):
    job = _job(store)
    outcome, seen = _run(store, job.id, lambda: {"model_version_id": 42})
    done = tx(store, jobs.get_job, job.id)
    assert done.state == JobState.succeeded, outcome
    assert [store.blobs.exists(b) for b in seen] == [False, False, True]
    assert done.checkpoint_blob == seen[-1]
