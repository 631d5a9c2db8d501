"""Queued work: fine-tuning jobs, bulk pre-labelling, embedding precompute, evaluations, and their progress.

Everything is validated by the store's services before the queue port
(``workers.queue``) sends a message, so a bad request is a 4xx now, not a failed job later. The job row is the truth;
the answers here are read from it.
"""

from __future__ import annotations

from fastapi import APIRouter, Body, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from portal.store.models import Job, TrainingJob, User
from portal.store.services import jobs
from portal.store.services.submissions import MAX_BATCH_ITEMS, PrelabelItem
from portal.store.services.training import FinetuneParams
from portal.web.api import PREFIX, queue_of, store_of
from portal.web.auth import current_user
from workers.queue import JobQueue

router = APIRouter(prefix=PREFIX, tags=["jobs"])
STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class PrelabelIn(BaseModel):
    model_config = STRICT
    items: list[PrelabelItem] = Field(min_length=1, max_length=MAX_BATCH_ITEMS,
                                      description='[{"image_id": 1, "boxes": [[x0, y0, x1, y1]]}, ...]; '
                                                  "one box (or points) per item")
    model_version_id: int | None = Field(None, description="default: the project's active version")


class PrecomputeIn(BaseModel):
    model_config = STRICT
    model_version_id: int | None = Field(None, description="default: the project's active version")


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


@router.post("/projects/{pid}/training-jobs", status_code=201)
def create_training_job(pid: int, request: Request, user: User = Depends(current_user),
                        queue: JobQueue = Depends(queue_of),
                        params: FinetuneParams | None = Body(None, examples=[{
                            "mode": "decoder", "epochs": 5, "lr": 1e-4, "batch_size": 8}])) -> dict:
    """Reviewers and admins. Every parameter is optional; a wrong type or a value out of range is a 422
    naming the field. Needs approved labels on enough images."""
    given = params.model_dump(exclude_unset=True) if params else {}
    return job_json(queue.submit_finetune(store_of(request), user, pid, given))


@router.get("/training-jobs/{jid}")
def get_training_job(jid: int, request: Request, user: User = Depends(current_user)) -> dict:
    return job_json(jobs.get_job(store_of(request), TrainingJob, jid, user))


@router.delete("/training-jobs/{jid}")
def cancel_training_job(jid: int, request: Request, user: User = Depends(current_user),
                        queue: JobQueue = Depends(queue_of)) -> dict:
    """Whoever queued the job, or an admin."""
    return job_json(queue.cancel(store_of(request), TrainingJob, jid, user))


@router.post("/projects/{pid}/prelabel", status_code=201)
def prelabel(pid: int, body: PrelabelIn, request: Request, user: User = Depends(current_user),
             queue: JobQueue = Depends(queue_of)) -> dict:
    """Admins only, like the admin tab that offers it."""
    return job_json(queue.submit_segment_batch(store_of(request), user, pid, body.model_version_id, body.items))


@router.post("/projects/{pid}/precompute", status_code=201)
def precompute(pid: int, request: Request, user: User = Depends(current_user), queue: JobQueue = Depends(queue_of),
               body: PrecomputeIn | None = None) -> dict:
    """Admins only, like the admin tab that offers it."""
    version = body.model_version_id if body else None
    return job_json(queue.submit_precompute(store_of(request), user, pid, version))


@router.get("/jobs/{jid}")
def get_job(jid: int, request: Request, user: User = Depends(current_user)) -> dict:
    """A pre-labelling, precompute or evaluation job; pre-labelled masks have ``job_id`` set (see /masks/{id})."""
    return job_json(jobs.get_job(store_of(request), Job, jid, user))


@router.delete("/jobs/{jid}")
def cancel_job(jid: int, request: Request, user: User = Depends(current_user),
               queue: JobQueue = Depends(queue_of)) -> dict:
    """Whoever queued the job, or an admin."""
    return job_json(queue.cancel(store_of(request), Job, jid, user))
