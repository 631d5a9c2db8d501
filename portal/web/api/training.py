"""Queued work: fine-tuning jobs, bulk pre-labelling, embedding precompute, and their progress.

Everything is validated by ``workers.dispatch`` before a message is queued, so a
bad request is a 4xx now, not a failed job later. The job row is the truth;
the answers here are read from it.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Request
from pydantic import BaseModel, Field

from portal.store.models import Job, Role, TrainingJob, User
from portal.store.services import jobs
from portal.store.services.model_versions import active_version
from portal.store.services.projects import get_project
from portal.store.services.users import require_role
from portal.web.api import PREFIX, store_of
from portal.web.auth import current_user
from workers import dispatch

router = APIRouter(prefix=PREFIX, tags=["jobs"])


class PrelabelIn(BaseModel):
    items: list[dict[str, Any]] = Field(description='[{"image_id": 1, "boxes": [[x0, y0, x1, y1]]}, ...]; '
                                                    "one box (or points) per item")
    model_version_id: int | None = Field(None, description="default: the project's active version")


class PrecomputeIn(BaseModel):
    model_version_id: int | None = None


def job_json(job: Job | TrainingJob) -> dict:
    out = {"id": job.id, "project_id": job.project_id, "state": job.state.value, "progress": job.progress,
           "result": job.result, "error": job.error, "params": job.params, "attempts": job.attempts,
           "cancel_requested": job.cancel_requested, "created_at": job.created_at.isoformat(),
           "started_at": job.started_at.isoformat() if job.started_at else None,
           "finished_at": job.finished_at.isoformat() if job.finished_at else None}
    if isinstance(job, TrainingJob):
        out.update(kind="finetune", epoch_metrics=job.epoch_metrics)
    else:
        out["kind"] = job.kind.value
    return out


def _visible(store, user: User, model, job_id: int):
    job = jobs.get_job(store, model, job_id)
    with store.transaction() as session:
        get_project(session, user, job.project_id)
    return job


def _celery(request: Request):
    return request.app.state.segmentation.celery_app


@router.post("/projects/{pid}/training-jobs", status_code=201)
def create_training_job(pid: int, request: Request, user: User = Depends(current_user),
                        params: dict[str, Any] = Body(default_factory=dict, examples=[{
                            "mode": "decoder", "epochs": 5, "lr": 1e-4, "batch_size": 8}])) -> dict:
    """Parameters: mode (decoder|full), epochs, lr, batch_size, bbox_shift, seed, val_fraction,
    early_stopping, parent_version_id. Needs approved labels on enough images."""
    return job_json(dispatch.submit_finetune(store_of(request), user, pid, params, celery_app=_celery(request)))


@router.get("/training-jobs/{jid}")
def get_training_job(jid: int, request: Request, user: User = Depends(current_user)) -> dict:
    return job_json(_visible(store_of(request), user, TrainingJob, jid))


@router.delete("/training-jobs/{jid}")
def cancel_training_job(jid: int, request: Request, user: User = Depends(current_user)) -> dict:
    store = store_of(request)
    _visible(store, user, TrainingJob, jid)
    require_role(user, Role.admin, Role.reviewer, doing="cancel fine-tuning")
    return job_json(dispatch.cancel(store, TrainingJob, jid, user, celery_app=_celery(request)))


@router.post("/projects/{pid}/prelabel", status_code=201)
def prelabel(pid: int, body: PrelabelIn, request: Request, user: User = Depends(current_user)) -> dict:
    store = store_of(request)
    version = body.model_version_id or active_version(store, pid).id
    return job_json(dispatch.submit_segment_batch(store, user, pid, version, body.items,
                                                  celery_app=_celery(request)))


@router.post("/projects/{pid}/precompute", status_code=201)
def precompute(pid: int, request: Request, user: User = Depends(current_user),
               body: PrecomputeIn | None = None) -> dict:
    store = store_of(request)
    version = (body.model_version_id if body else None) or active_version(store, pid).id
    return job_json(dispatch.submit_precompute(store, user, pid, version, celery_app=_celery(request)))


@router.get("/jobs/{jid}")
def get_job(jid: int, request: Request, user: User = Depends(current_user)) -> dict:
    """A pre-labelling or precompute job; its masks have ``job_id`` set (see /masks/{id})."""
    return job_json(_visible(store_of(request), user, Job, jid))


@router.delete("/jobs/{jid}")
def cancel_job(jid: int, request: Request, user: User = Depends(current_user)) -> dict:
    store = store_of(request)
    _visible(store, user, Job, jid)
    return job_json(dispatch.cancel(store, Job, jid, user, celery_app=_celery(request)))
