"""Model versions of a project: list with validation scores, evaluate, promote through the gate, roll back.

A registered checkpoint is evaluated on the project's frozen validation images
by a queued job; its ``val_dice`` shows in the list once the job has run, and
the gate compares it with the active version's.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from portal.store.errors import StoreError
from portal.store.models import ModelVersion, User
from portal.store.services import model_versions, training
from portal.web.api import PREFIX, queue_of, store_of
from portal.web.api.training import job_json
from portal.web.api.uploads import received_file
from portal.web.auth import current_user
from workers.queue import JobQueue

router = APIRouter(prefix=PREFIX, tags=["models"])


class ActivateIn(BaseModel):
    force: bool = False


def version_json(version: ModelVersion, active_id: int, evaluation) -> dict:
    return {"id": version.id, "name": version.name, "family": version.family, "project_id": version.project_id,
            "parent_id": version.parent_id, "training_job_id": version.training_job_id,
            "metrics": version.metrics, "active": version.id == active_id,
            "val_dice": evaluation.val_dice if evaluation else None,
            "val_nsd": evaluation.val_nsd if evaluation else None,
            "created_at": version.created_at.isoformat()}


@router.get("/projects/{pid}/models")
def list_models(pid: int, request: Request, user: User = Depends(current_user)) -> dict:
    store = store_of(request)
    versions = model_versions.list_versions(store, user, pid)
    active = model_versions.active_version(store, pid).id
    return {"active_model_version_id": active,
            "versions": [version_json(v, active, training.evaluation(store, v.id, pid)) for v in versions]}


@router.post("/projects/{pid}/models/{vid}/activate")
def activate(pid: int, vid: int, request: Request, user: User = Depends(current_user),
             body: ActivateIn | None = None) -> dict:
    """Promotion through the gate: the candidate must score at least the active version's
    validation Dice on the project's frozen images (409 with the reason otherwise, also while
    either has no score yet); ``{"force": true}`` lets an admin override it, and the override is audited."""
    project = training.promote(store_of(request), user, pid, vid, force=bool(body and body.force))
    return {"project_id": pid, "active_model_version_id": project.active_model_version_id}


@router.post("/projects/{pid}/models/{vid}/evaluate", status_code=201)
def evaluate(pid: int, vid: int, request: Request, user: User = Depends(current_user),
             queue: JobQueue = Depends(queue_of)) -> dict:
    """Admins and reviewers: queue an evaluation job (see /jobs/{id}) that scores the version, and the
    active one if it has no score yet, on the project's frozen validation images. Without a frozen set,
    one is chosen from approved labels, the split a first fine-tune would take; too few approved labels
    is a 400 saying how many are needed. A queued evaluation of the same version is returned, not repeated."""
    return job_json(queue.submit_evaluation(store_of(request), user, pid, vid))


@router.post("/projects/{pid}/models", status_code=201)
async def upload_checkpoint(pid: int, request: Request, user: User = Depends(current_user),
                            queue: JobQueue = Depends(queue_of)) -> dict:
    """Multipart ``file`` (a PyTorch checkpoint) and form field ``family`` (medsam_vit_b, sam_vit_b, ...,
    or lite); optional ``name``. Loaded weights-only into that family first: a file that doesn't fit is a
    400 naming the family and the first mismatched keys, and nothing is stored.

    A registered version's evaluation is queued at once (``evaluation_job_id``); when the project has too
    few approved labels for validation images, ``evaluation_note`` says so, and
    ``POST .../models/{vid}/evaluate`` queues it later."""
    store = store_of(request)
    # torch.save writes a zip; the limit is MEDSAM_MAX_CHECKPOINT_MB, not the image limit.
    async with received_file(request, expect={".zip"}, limit_mb=store.settings.max_checkpoint_mb) as upload:
        family = upload.fields.get("family") or "medsam_vit_b"
        version = await run_in_threadpool(model_versions.register_checkpoint, store, user, pid, family,
                                          upload.path, upload.fields.get("name") or None)
    try:
        job = await run_in_threadpool(queue.submit_evaluation, store, user, pid, version.id)
        queued = {"evaluation_job_id": job.id, "evaluation_note": None}
    except StoreError as exc:  # registered all the same; the note says what evaluation waits for
        queued = {"evaluation_job_id": None, "evaluation_note": str(exc)}
    active = model_versions.active_version(store, pid).id
    return {**version_json(version, active, training.evaluation(store, version.id, pid)), **queued}


@router.post("/projects/{pid}/models/rollback")
def rollback(pid: int, request: Request, user: User = Depends(current_user)) -> dict:
    project = model_versions.rollback(store_of(request), user, pid)
    return {"project_id": pid, "active_model_version_id": project.active_model_version_id}
