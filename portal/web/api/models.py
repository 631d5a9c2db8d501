"""Model versions of a project: list with validation scores, evaluate, promote through the gate, roll back.

A registered checkpoint is evaluated on the project's frozen validation images
by a queued job; its ``val_dice`` shows in the list once the job has run, and
the gate compares it with the active version's.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from portal.store.errors import StoreError
from portal.store.models import ModelVersion, User
from portal.store.services import model_versions, training
from portal.store.store import Store
from portal.web.api import PREFIX, Db, queue_of, store_of
from portal.web.api.uploads import received_file
from portal.web.auth import current_user
from portal.web.schemas.jobs import JobPublic
from portal.web.schemas.models import (
    ActivateIn,
    ActiveVersionPublic,
    ModelListPublic,
    ModelVersionPublic,
    UploadedVersionPublic,
)
from workers.queue import JobQueue

router = APIRouter(prefix=PREFIX, tags=["models"])


@router.get("/projects/{pid}/models", response_model=ModelListPublic)
def list_models(pid: int, db: Db, user: User = Depends(current_user)) -> ModelListPublic:
    versions = model_versions.list_versions(db, user, pid)
    active = model_versions.active_version(db, pid).id
    return ModelListPublic(
        active_model_version_id=active,
        versions=[ModelVersionPublic.of(v, active, training.evaluation(db, v.id, pid)) for v in versions],
    )


@router.post("/projects/{pid}/models/{vid}/activate", response_model=ActiveVersionPublic)
def activate(
    pid: int, vid: int, db: Db, user: User = Depends(current_user), body: ActivateIn | None = None
) -> ActiveVersionPublic:
    """Promotion through the gate: the candidate must score at least the active version's
    validation Dice on the project's frozen images (409 with the reason otherwise, also while
    either has no score yet); ``{"force": true}`` lets an admin override it, and the override is audited."""
    project = training.promote(db, user, pid, vid, force=bool(body and body.force))
    return ActiveVersionPublic(project_id=pid, active_model_version_id=project.active_model_version_id)


@router.post("/projects/{pid}/models/{vid}/evaluate", status_code=201, response_model=JobPublic)
def evaluate(
    pid: int, vid: int, request: Request, user: User = Depends(current_user), queue: JobQueue = Depends(queue_of)
) -> JobPublic:
    """Admins and reviewers: queue an evaluation job (see /jobs/{id}) that scores the version, and the
    active one if it has no score yet, on the project's frozen validation images. Without a frozen set,
    one is chosen from approved labels, the split a first fine-tune would take; too few approved labels
    is a 400 saying how many are needed. A queued evaluation of the same version is returned, not repeated."""
    return JobPublic.of(queue.submit_evaluation(store_of(request), user, pid, vid))


def _register(store: Store, user: User, pid: int, family: str, path, name: str | None) -> ModelVersion:
    """Refused before the slow load, which holds no transaction; registered in a transaction of its own."""
    with store.transaction() as db:
        model_versions.check_may_register(db, user, pid)
    loaded = model_versions.load_checkpoint(family, path)
    with store.transaction() as db:
        return model_versions.register_checkpoint(db, store.blobs, user, pid, loaded, path, name)


@router.post("/projects/{pid}/models", status_code=201, response_model=UploadedVersionPublic)
async def upload_checkpoint(
    pid: int, request: Request, user: User = Depends(current_user), queue: JobQueue = Depends(queue_of)
) -> UploadedVersionPublic:
    """Multipart ``file`` (a PyTorch checkpoint) and form field ``family`` (medsam_vit_b, sam_vit_b, ...,
    or lite); optional ``name``. Loaded weights-only into that family first: a file that doesn't fit is a
    400 naming the family and the first mismatched keys, and nothing is stored.

    A registered version's evaluation is queued at once (``evaluation_job_id``); when the project has too
    few approved labels for validation images, ``evaluation_note`` says so, and
    ``POST .../models/{vid}/evaluate`` queues it later. It streams the file first, so its transactions
    open only once the upload is received."""
    store = store_of(request)
    # torch.save writes a zip; the limit is MEDSAM_MAX_CHECKPOINT_MB, not the image limit.
    async with received_file(request, expect={".zip"}, limit_mb=store.settings.max_checkpoint_mb) as upload:
        family = upload.fields.get("family") or "medsam_vit_b"
        version = await run_in_threadpool(
            _register, store, user, pid, family, upload.path, upload.fields.get("name") or None
        )
    try:
        job = await run_in_threadpool(queue.submit_evaluation, store, user, pid, version.id)
        queued = {"evaluation_job_id": job.id, "evaluation_note": None}
    except StoreError as exc:  # registered all the same; the note says what evaluation waits for
        queued = {"evaluation_job_id": None, "evaluation_note": str(exc)}
    with store.transaction() as db:
        active = model_versions.active_version(db, pid).id
        return UploadedVersionPublic.of(version, active, training.evaluation(db, version.id, pid), **queued)


@router.post("/projects/{pid}/models/rollback", response_model=ActiveVersionPublic)
def rollback(pid: int, db: Db, user: User = Depends(current_user)) -> ActiveVersionPublic:
    project = model_versions.rollback(db, user, pid)
    return ActiveVersionPublic(project_id=pid, active_model_version_id=project.active_model_version_id)
