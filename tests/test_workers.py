"""Tasks on a real worker process over a real broker: the serverless default and Redis."""

from __future__ import annotations

import os
import signal
import uuid

import pytest
from sqlalchemy import func, select

from portal.store.models import JobKind, JobState, Mask, Role
from portal.store.services import images, jobs, model_versions, projects
from portal.store.settings import Settings
from portal.store.store import open_store
from tests.conftest import first_pairs, require, tight_box
from tests.storeutil import new_user, tx
from tests.workerutil import WORKER_ENV, WorkerProcess, wait_for
from workers.app import make_app
from workers.names import TASK_ENCODE, TASK_NOOP
from workers.queue import JobQueue


def _redis_url() -> str:
    url = os.environ.get("MEDSAM_TEST_REDIS_URL")
    require(bool(url), "MEDSAM_TEST_REDIS_URL is not set (Redis broker tests)")
    return url


@pytest.fixture(scope="module", params=["serverless", "redis"])
def env(request, tmp_path_factory, data_dir):
    folder = tmp_path_factory.mktemp(f"workers_{request.param}")
    (data_dir / "onnx").mkdir(exist_ok=True)
    (folder / "onnx").symlink_to(data_dir / "onnx", target_is_directory=True)  # export once per run
    values = {"MEDSAM_DATA_DIR": str(folder), "MEDSAM_DATABASE_URL": f"sqlite:///{folder / 'medsam.db'}", **WORKER_ENV}
    redis_client = None
    if request.param == "redis":
        import redis

        url = _redis_url()
        redis_client = redis.Redis.from_url(url)
        try:
            redis_client.ping()
        except redis.ConnectionError as exc:
            require(False, f"Redis at {url} does not answer: {exc}")
        redis_client.flushdb()  # our own database number only
        values.update(MEDSAM_BROKER_URL=url, MEDSAM_RESULT_BACKEND=url)
        stranger = make_app(Settings(broker_url=url, result_backend=url)).control.ping(timeout=1.0)
        assert not stranger, f"another worker already serves {url}: {stranger}; stop it (or use another db number)"
    settings = Settings(**{k[len("MEDSAM_") :].lower(): v for k, v in values.items()})
    store = open_store(settings)
    worker = WorkerProcess(values, folder / "worker.log").start()
    worker.wait_ready()
    app = make_app(settings)
    state = {
        "values": values,
        "store": store,
        "app": app,
        "queue": JobQueue(app=app),
        "worker": worker,
        "folder": folder,
    }
    yield state
    state["worker"].stop()  # the kill test replaces the worker: stop the one that runs now
    store.close()
    if redis_client is not None:
        redis_client.flushdb()


@pytest.fixture(scope="module")
def project(env):
    store = env["store"]
    admin = new_user(store, Role.admin)
    with store.transaction() as session:
        p = projects.create_project(session, admin, f"w-{uuid.uuid4().hex[:6]}", "endoscopy", ["polyp"])
    return {"admin": admin, "project": p, "base": tx(store, model_versions.base_version)}


def add_kvasir(env, project, sample_data, start: int, n: int) -> list[dict]:
    """Upload n Kvasir images (distinct per test, so their encodes are real cache misses)."""
    from medsam_core.imageio import read_image

    items = []
    for image_path, mask_path in first_pairs(sample_data, "kvasir", start + n)[start:]:
        (row,) = tx(
            env["store"],
            images.add_image,
            env["store"].blobs,
            env["store"].settings,
            project["admin"],
            project["project"].id,
            image_path,
        )
        box = tight_box(read_image(mask_path).display()[..., 0] > 127)
        items.append({"image_id": row.id, "boxes": [box]})
    return items


def job_state(env, job_id):
    return tx(env["store"], jobs.get_job, job_id)


def masks_of(env, job_id) -> list[int]:
    with env["store"].transaction() as session:
        return list(session.scalars(select(Mask.item_index).where(Mask.job_id == job_id)))


def finished(env, job_id):
    job = job_state(env, job_id)
    return job if job.state in (JobState.succeeded, JobState.failed, JobState.cancelled) else None


def test_round_trips_of_each_task(env, project, sample_data):
    app, store = env["app"], env["store"]
    assert app.send_task(TASK_NOOP, args=[41]).get(timeout=60, interval=0.02) == 41
    (item,) = add_kvasir(env, project, sample_data, 0, 1)
    first = app.send_task(TASK_ENCODE, args=[item["image_id"], project["base"].id])
    assert first.get(timeout=180, interval=0.05)["cache_hit"] is False
    again = app.send_task(TASK_ENCODE, args=[item["image_id"], project["base"].id])
    assert again.get(timeout=60, interval=0.05)["cache_hit"] is True
    batch = env["queue"].submit_segment_batch(
        store, project["admin"], project["project"].id, project["base"].id, [item, {**item, "boxes": [[0, 0, 50, 50]]}]
    )
    done = wait_for(lambda: finished(env, batch.id), 120, "segment_batch")
    assert done.state == JobState.succeeded, done.error
    assert sorted(masks_of(env, batch.id)) == [0, 1] and done.progress["done"] == 2
    warm = env["queue"].submit_precompute(store, project["admin"], project["project"].id, project["base"].id)
    done = wait_for(lambda: finished(env, warm.id), 120, "precompute")
    assert done.state == JobState.succeeded and done.result["already_cached"] >= 1


def _assert_exactly_once(env, job_id, n):
    job = wait_for(lambda: finished(env, job_id), 300, f"job {job_id} to finish after the crash")
    assert job.state == JobState.succeeded, job.error
    assert sorted(masks_of(env, job_id)) == list(range(n))  # every item once: nothing lost, nothing doubled
    assert job.attempts >= 2
    return job


def test_killed_pool_child_requeues_at_once(env, project, sample_data):
    items = add_kvasir(env, project, sample_data, 10, 6)
    job = env["queue"].submit_segment_batch(env["store"], None, project["project"].id, project["base"].id, items)
    wait_for(lambda: len(masks_of(env, job.id)) >= 2, 240, "two masks before the kill")
    (child,) = env["worker"].pool_children()
    os.kill(child, signal.SIGKILL)
    _assert_exactly_once(env, job.id, len(items))
    assert env["worker"].proc.poll() is None  # the worker itself survived and forked a new child
    assert not requeued_by_reaper(env, job.id)  # Celery put it back at once, not the reaper later


def requeued_by_reaper(env, job_id) -> bool:
    from portal.store.models import AuditEvent

    with env["store"].transaction() as session:
        return bool(
            session.scalar(
                select(func.count())
                .select_from(AuditEvent)
                .where(
                    AuditEvent.action == "job.requeued",
                    AuditEvent.target_id == job_id,
                    AuditEvent.target_type == "jobs",
                )
            )
        )


def test_killed_worker_is_reaped_and_job_completes(env, project, sample_data):
    items = add_kvasir(env, project, sample_data, 20, 6)
    job = env["queue"].submit_segment_batch(env["store"], None, project["project"].id, project["base"].id, items)
    wait_for(lambda: len(masks_of(env, job.id)) >= 2, 240, "two masks before the kill")
    env["worker"].kill_all()
    assert job_state(env, job.id).state == JobState.running  # the row still says running: only the reaper knows
    env["worker"] = WorkerProcess(env["values"], env["folder"] / "worker2.log").start()
    env["worker"].wait_ready()
    _assert_exactly_once(env, job.id, len(items))
    assert requeued_by_reaper(env, job.id)


def test_cancel_a_running_job_lands_within_a_step(env, project, sample_data):
    items = add_kvasir(env, project, sample_data, 30, 6)
    job = env["queue"].submit_segment_batch(env["store"], None, project["project"].id, project["base"].id, items)
    wait_for(lambda: len(masks_of(env, job.id)) >= 1, 240, "the first mask")
    env["queue"].cancel(env["store"], job.id)
    done = wait_for(lambda: finished(env, job.id), 60, "the cancel to land")
    assert done.state == JobState.cancelled and len(masks_of(env, job.id)) < len(items)


def test_cancel_a_queued_job(env, project):
    store = env["store"]
    job = tx(
        store,
        jobs.create_job,
        JobKind.segment_batch,
        {"model_version_id": project["base"].id, "items": []},
        project_id=project["project"].id,
    )
    assert env["queue"].cancel(store, job.id).state == JobState.cancelled
    env["queue"].enqueue(store, job)  # delivered anyway: the worker must leave it alone
    assert env["app"].send_task(TASK_NOOP, args=[1]).get(timeout=60, interval=0.02) == 1
    assert job_state(env, job.id).state == JobState.cancelled and job_state(env, job.id).attempts == 0


def test_missing_image_or_model_fails_clearly_and_worker_keeps_serving(env, project, sample_data):
    store, app = env["store"], env["app"]
    (item,) = add_kvasir(env, project, sample_data, 40, 1)
    job = env["queue"].submit_segment_batch(store, None, project["project"].id, project["base"].id, [item])
    tx(store, images.delete_image, project["admin"], item["image_id"])  # gone before the worker got to it
    done = wait_for(lambda: finished(env, job.id), 120, "the job to fail")
    assert done.state == JobState.failed and f"image {item['image_id']} does not exist" in done.error
    ghost = tx(
        store,
        jobs.create_job,
        JobKind.precompute_embeddings,
        {"model_version_id": 987654},
        project_id=project["project"].id,
    )
    env["queue"].enqueue(store, ghost)
    done = wait_for(lambda: finished(env, ghost.id), 120, "the job to fail")
    assert done.state == JobState.failed and "model version 987654 does not exist" in done.error
    assert app.send_task(TASK_NOOP, args=[7]).get(timeout=60, interval=0.02) == 7
    with store.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Mask).where(Mask.job_id == job.id)) == 0


def test_bad_batches_are_refused_before_queueing(env, project):
    store = env["store"]
    pid, base = project["project"].id, project["base"].id
    with pytest.raises(Exception, match="not in project"):
        env["queue"].submit_segment_batch(store, None, pid, base, [{"image_id": 99999, "boxes": [[0, 0, 5, 5]]}])
    with pytest.raises(Exception, match="model version 424242 does not exist"):
        env["queue"].submit_precompute(store, None, pid, 424242)
    with pytest.raises(Exception, match="at least one item"):
        env["queue"].submit_segment_batch(store, None, pid, base, [])
