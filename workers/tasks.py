"""Inference tasks. Arguments are ids; the parameters and all state live in the database.

Shared tasks, so they bind to whichever app the worker built (``workers.app.make_app``),
which also sets their time limits from settings.

Every task is idempotent: an embedding is content-addressed and cached, and a
batch stores each item's mask under (job, item) exactly once, so a redelivered
or reaped task only does the work that is missing.
"""

from __future__ import annotations

import time

from celery import shared_task
from sqlalchemy import select

from portal.store.errors import NotFoundError
from portal.store.models import Image, Job
from portal.store.services.images import display_pixels
from portal.store.services.masks import job_item_mask, record_mask
from workers import names
from workers.jobrunner import Step, run_job
from workers.runtime import get_pool, get_store


def _image(store, image_id: int) -> Image:
    with store.transaction() as session:
        image = session.get(Image, image_id)
        if image is None:
            raise NotFoundError(f"image {image_id} does not exist (deleted?)")
        return image


@shared_task(name=names.TASK_NOOP)
def noop(value=None):
    """A round trip with no work, for health checks and the queue-overhead benchmark."""
    return value


@shared_task(name=names.TASK_ENCODE)
def encode_image(image_id: int, model_version_id: int) -> dict:
    store = get_store()
    predictor = get_pool().predictor(model_version_id)
    embedding = predictor.encode(display_pixels(store.blobs, _image(store, image_id), store.settings))
    return {
        "image_id": image_id,
        "cache_hit": embedding.cache_hit,
        "encode_ms": round(embedding.encode_ms, 1),
        "pixel_sha256": embedding.key.pixel_sha256,
    }


@shared_task(bind=True, name=names.TASK_SEGMENT_BATCH)
def segment_batch(self, job_id: int) -> dict:
    store = get_store()
    return run_job(store, job_id, self.request.id, _segment_items)


def _segment_items(job: Job, step: Step) -> dict:
    store = get_store()
    predictor = get_pool().predictor(job.params["model_version_id"])
    items = job.params["items"]
    done = skipped = 0
    started = time.perf_counter()
    for index, item in enumerate(items):
        step.progress(done=index, total=len(items), eta_s=_eta(started, done, len(items) - index))
        with store.transaction() as db:
            already = job_item_mask(db, job.id, index) is not None
        if already:
            skipped += 1
            continue
        image = _image(store, item["image_id"])
        embedding = predictor.encode(display_pixels(store.blobs, image, store.settings))
        prediction = predictor.decode(embedding, boxes=item.get("boxes"), points=item.get("points"))
        with store.transaction() as db:
            record_mask(
                db,
                store.blobs,
                None,
                image.id,
                prediction.masks[0],
                job.params["model_version_id"],
                {"boxes": item.get("boxes"), "points": item.get("points")},
                float(prediction.iou[0]),
                job_id=job.id,
                item_index=index,
            )
        done += 1
    step.progress(done=len(items), total=len(items), eta_s=0)
    return {"masks": len(items), "computed": done, "already_stored": skipped}


@shared_task(bind=True, name=names.TASK_PRECOMPUTE)
def precompute_embeddings(self, job_id: int) -> dict:
    store = get_store()
    return run_job(store, job_id, self.request.id, _precompute)


def _precompute(job: Job, step: Step) -> dict:
    store = get_store()
    predictor = get_pool().predictor(job.params["model_version_id"])
    with store.transaction() as session:
        ids = list(session.scalars(select(Image.id).where(Image.project_id == job.project_id).order_by(Image.id)))
    hits = 0
    started = time.perf_counter()
    for index, image_id in enumerate(ids):
        step.progress(done=index, total=len(ids), eta_s=_eta(started, index, len(ids) - index))
        try:
            image = _image(store, image_id)
        except NotFoundError:
            continue  # deleted while we worked
        hits += predictor.encode(display_pixels(store.blobs, image, store.settings)).cache_hit
    step.progress(done=len(ids), total=len(ids), eta_s=0)
    return {"images": len(ids), "already_cached": hits}


def _eta(started: float, done: int, remaining: int) -> float | None:
    if done == 0:
        return None
    return round((time.perf_counter() - started) / done * remaining, 1)
