"""Creating jobs and putting them on the queue: what the portal, the API and the CLI call.

Parameters are validated before anything is queued, so a bad request is
refused at once with a message, never discovered later by a worker.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from medsam_core.prompts import validate_boxes, validate_points
from portal.store.errors import NotFoundError, StoreError
from portal.store.models import Image, Job, JobKind, ModelVersion, TrainingJob, User
from portal.store.services import jobs
from portal.store.services.projects import get_project
from portal.store.store import Store
from workers.app import app

TASK_FOR_KIND = {
    JobKind.segment_batch: "medsam.inference.segment_batch",
    JobKind.precompute_embeddings: "medsam.inference.precompute_embeddings",
}
MAX_BATCH_ITEMS = 10_000


def check_version(session, version_id: int, project_id: int) -> None:
    version = session.get(ModelVersion, version_id)
    if version is None:
        raise NotFoundError(f"model version {version_id} does not exist")
    if version.project_id not in (None, project_id):
        raise StoreError(f"model version {version_id} belongs to another project")


def submit_segment_batch(store: Store, actor: User | None, project_id: int, model_version_id: int,
                         items: list[dict[str, Any]], celery_app=None) -> Job:
    """items: ``[{"image_id": 1, "boxes": [[x0, y0, x1, y1]], "points": [[x, y, 1]]}, ...]``, one object each."""
    if not items:
        raise StoreError("a batch needs at least one item")
    if len(items) > MAX_BATCH_ITEMS:
        raise StoreError(f"a batch holds at most {MAX_BATCH_ITEMS} items; split it")
    clean = []
    with store.transaction() as session:
        if actor is not None:
            get_project(session, actor, project_id)
        check_version(session, model_version_id, project_id)
        ids = {int(item["image_id"]) for item in items if "image_id" in item}
        images = {i.id: i for i in session.scalars(select(Image).where(Image.id.in_(ids)))}
        for n, item in enumerate(items, start=1):
            image = images.get(int(item.get("image_id", -1)))
            if image is None or image.project_id != project_id:
                raise NotFoundError(f"item {n}: image {item.get('image_id')} is not in project {project_id}")
            boxes = validate_boxes(item.get("boxes"), (image.height, image.width))
            points, _ = validate_points(item.get("points"), (image.height, image.width))
            if boxes is None and points is None:
                raise StoreError(f"item {n}: give a box or points")
            if boxes is not None and len(boxes) > 1:
                raise StoreError(f"item {n}: one box per item (one mask each); list several items instead")
            clean.append({"image_id": image.id, "boxes": item.get("boxes"), "points": item.get("points")})
    job = jobs.create_job(store, JobKind.segment_batch, {"model_version_id": model_version_id, "items": clean},
                          project_id=project_id, actor=actor)
    return enqueue(store, job, celery_app)


def submit_precompute(store: Store, actor: User | None, project_id: int, model_version_id: int,
                      celery_app=None) -> Job:
    with store.transaction() as session:
        if actor is not None:
            get_project(session, actor, project_id)
        check_version(session, model_version_id, project_id)
    job = jobs.create_job(store, JobKind.precompute_embeddings, {"model_version_id": model_version_id},
                          project_id=project_id, actor=actor)
    return enqueue(store, job, celery_app)


def enqueue(store: Store, job: Job, celery_app=None) -> Job:
    """``celery_app`` defaults to the one configured from settings; tests pass their own."""
    result = (celery_app or app).send_task(TASK_FOR_KIND[job.kind], args=[job.id])
    jobs.set_task_id(store, Job, job.id, result.id)
    job.celery_task_id = result.id
    return job


def task_name(model, job) -> str:
    if model is TrainingJob:
        return "medsam.training.finetune"
    return TASK_FOR_KIND[job.kind]


def submit_finetune(store: Store, actor: User, project_id: int, params: dict[str, Any],
                    celery_app=None) -> TrainingJob:
    """Validate, create the job row, queue it on the training queue (one job per GPU worker at a time)."""
    from portal.store.services import training

    job = training.create_job(store, actor, project_id, params)
    result = (celery_app or app).send_task("medsam.training.finetune", args=[job.id])
    jobs.set_task_id(store, TrainingJob, job.id, result.id)
    job.celery_task_id = result.id
    return job


def cancel(store: Store, model, job_id: int, actor: User | None = None, celery_app=None):
    """Flag the row (a running task stops at its next step) and revoke the queued message.

    The flag is what counts: revoking is a broadcast that the serverless
    broker does not carry, and a revoked-but-delivered task checks the row anyway.
    """
    job = jobs.request_cancel(store, model, job_id, actor)
    if job.celery_task_id:
        try:
            (celery_app or app).control.revoke(job.celery_task_id)
        except Exception:  # noqa: BLE001 - best effort, see above
            pass
    return job
