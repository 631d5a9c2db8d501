"""Volume tasks on the inference queue: precompute every slice's embedding, and propagate a box.

Both run through the job state machine (``workers.jobrunner``): progress per
slice, cancel within one slice, and a plain-language failure. Both are
idempotent: embeddings are content-addressed, so a redelivered precompute
skips the slices already cached (looked up in the cache's index, without
reading a single embedding), and a redelivered propagation saves from the same
base revision, so it either lands once or meets the conflict of its own first save.
"""

from __future__ import annotations

import time

import numpy as np
from celery import shared_task
from sqlalchemy import select

from medsam_core.cache import pixel_sha256
from medsam_core.propagation import SliceEncoder, propagate
from portal.store.errors import NotFoundError
from portal.store.models import Annotation, AnnotationRevision, EmbeddingEntry, Job, User
from portal.store.services.volumes import get_volume
from portal.store.services.volumes_labels import read_label_map, save_label_map
from portal.store.services.volumes_read import SliceSource, slice_source
from workers import names
from workers.jobrunner import Step, run_job
from workers.runtime import get_pool, get_store

PRECOMPUTE_BATCH = 4  # slices per encoder call: batched where the predictor can, and a cancel lands within one


def _source(volume_id: int) -> SliceSource:
    store = get_store()
    with store.transaction() as db:
        return slice_source(db, store.blobs, store.settings, get_volume(db, None, volume_id))


@shared_task(bind=True, name=names.TASK_PRECOMPUTE_VOLUME)
def precompute_volume(self, job_id: int) -> dict:
    return run_job(get_store(), job_id, self.request.id, _precompute_volume)


def _cached(predictor, digests: list[str]) -> set[str]:
    """Which of these pixel digests the shared cache holds for this encoder, from its index alone."""
    with get_store().transaction() as db:
        return set(
            db.scalars(
                select(EmbeddingEntry.pixel_sha256).where(
                    EmbeddingEntry.pixel_sha256.in_(digests),
                    EmbeddingEntry.family == predictor.family,
                    EmbeddingEntry.encoder_digest == predictor.model.encoder_digest,
                )
            )
        )


def _encode(predictor, rgbs: list[np.ndarray], digests: list[str]) -> None:
    encode_many = getattr(predictor, "encode_many", None)
    if encode_many is not None:
        encode_many(rgbs, pixel_digests=digests)
        return
    for rgb, digest in zip(rgbs, digests, strict=True):
        predictor.encode(rgb, pixel_digest=digest)


def _precompute_volume(job: Job, step: Step) -> dict:
    predictor = get_pool().predictor(job.params["model_version_id"])
    source = _source(job.params["volume_id"])
    total = len(source.slices)
    cached = encoded = 0
    started = time.perf_counter()
    for first in range(0, total, PRECOMPUTE_BATCH):
        zs = range(first, min(first + PRECOMPUTE_BATCH, total))
        rgbs = [source.pixels(z) for z in zs]
        digests = [pixel_sha256(rgb) for rgb in rgbs]
        held = _cached(predictor, digests)
        todo = [(rgb, d) for rgb, d in zip(rgbs, digests, strict=True) if d not in held]
        cached += len(rgbs) - len(todo)
        if todo:
            _encode(predictor, [rgb for rgb, _ in todo], [d for _, d in todo])
            encoded += len(todo)
        elapsed = time.perf_counter() - started
        rate = encoded / elapsed if encoded and elapsed > 0 else None
        step.progress(
            done=zs.stop,
            total=total,
            cached=cached,
            encoded=encoded,
            eta_s=round((total - zs.stop) / rate, 1) if rate else None,
        )
    seconds = time.perf_counter() - started
    return {
        "slices": total,
        "already_cached": cached,
        "encoded": encoded,
        "seconds": round(seconds, 2),
        "slices_per_s": round(encoded / seconds, 2) if encoded and seconds > 0 else None,
    }


@shared_task(bind=True, name=names.TASK_PROPAGATE)
def propagate_volume(self, job_id: int) -> dict:
    return run_job(get_store(), job_id, self.request.id, _propagate)


def _saved_before(job: Job) -> dict | None:
    """The revision this job saved on an earlier delivery (its worker died before finishing the row)."""
    p = job.params
    with get_store().transaction() as db:
        rows = db.scalars(
            select(AnnotationRevision)
            .join(Annotation, Annotation.id == AnnotationRevision.annotation_id)
            .where(
                Annotation.volume_id == p["volume_id"],
                Annotation.label == p["label"],
                AnnotationRevision.number > p["base_revision"],
            )
        )
        found = next((r for r in rows if (r.prompt or {}).get("job_id") == job.id), None)
        return None if found is None else {"annotation_id": found.annotation_id, "revision": found.number}


def _propagate(job: Job, step: Step) -> dict:
    store, p = get_store(), job.params
    again = _saved_before(job)
    if again is not None:
        return {**again, "already_saved": True}
    predictor = get_pool().predictor(p["model_version_id"])
    source = _source(p["volume_id"])
    encoder = SliceEncoder(predictor, source.pixels)
    z0, z1 = p["z_range"]
    result = propagate(
        predictor,
        encoder,
        len(source.slices),
        p["key_slice"],
        p["box"],
        (z0, z1),
        scheme=p["scheme"],
        on_slice=lambda done, total: step.progress(done=done, total=total),
    )
    with store.transaction() as db:
        actor = db.get(User, job.requested_by) if job.requested_by else None
        if actor is None:
            raise NotFoundError("the account that asked for this propagation no longer exists; nothing was saved")
        base = p["base_revision"]
        merged = (
            read_label_map(db, store.blobs, actor, p["volume_id"], p["label"], base)[2]
            if base
            else np.zeros_like(result.masks)
        )
        merged[z0 : z1 + 1] = result.masks[z0 : z1 + 1]  # the range is replaced, the rest kept as it was
        prompt = {
            "key_slice": p["key_slice"],
            "box": p["box"],
            "z_range": [z0, z1],
            "scheme": p["scheme"],
            "job_id": job.id,
        }
        revision = save_label_map(
            db,
            store.blobs,
            actor,
            p["volume_id"],
            p["label"],
            merged,
            base,
            model_version_id=p["model_version_id"],
            prompt=prompt,
            comment=f"propagated from slice {p['key_slice']} over {z0}..{z1} (job {job.id})",
        )
        annotation_id, number = revision.annotation_id, revision.number
    return {
        "annotation_id": annotation_id,
        "revision": number,
        "slices": len(result.slices),
        "stopped": result.stopped,
        "voxels": int(result.masks.sum()),
        "encodes": encoder.misses,
        "decode_ms": round(result.decode_ms, 1),
        "total_ms": round(result.total_ms, 1),
    }
