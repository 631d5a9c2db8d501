"""Queued work: fine-tuning jobs, bulk pre-labelling, embedding precompute, evaluations, and their progress.

Everything is validated by the store's services before the queue port
(``workers.queue``) sends a message, so a bad request is a 4xx now, not a failed job later. The job row is the truth;
the answers here are read from it. Submitting and cancelling go through the queue port, which commits the row
before it sends the message (a worker must find it), so those routes take the store, not the request's ``Db``.
"""

from __future__ import annotations

from fastapi import APIRouter, Body, Depends, Request

from portal.store.models import JobKind, User
from portal.store.services import jobs
from portal.store.services.training import FinetuneParams
from portal.web.api import PREFIX, Db, queue_of, store_of
from portal.web.auth import current_user
from portal.web.schemas.jobs import AnyJobPublic, JobPublic, PrecomputeIn, PrelabelIn, TrainingJobPublic
from workers.queue import JobQueue

router = APIRouter(prefix=PREFIX, tags=["jobs"])
FINETUNES = {JobKind.finetune}


@router.post("/projects/{pid}/training-jobs", status_code=201, response_model=TrainingJobPublic)
def create_training_job(
    pid: int,
    request: Request,
    user: User = Depends(current_user),
    queue: JobQueue = Depends(queue_of),
    params: FinetuneParams | None = Body(
        None, examples=[{"mode": "decoder", "epochs": 5, "lr": 1e-4, "batch_size": 8}]
    ),
) -> JobPublic:
    """Reviewers and admins. Every parameter is optional; a wrong type or a value out of range is a 422
    naming the field. Needs approved labels on enough images."""
    given = params.model_dump(exclude_unset=True) if params else {}
    return JobPublic.of(queue.submit_finetune(store_of(request), user, pid, given))


@router.get("/training-jobs/{jid}", response_model=TrainingJobPublic)
def get_training_job(jid: int, db: Db, user: User = Depends(current_user)) -> JobPublic:
    """A fine-tune; any other kind of job is a 404 here (see /jobs/{id})."""
    return JobPublic.of(jobs.get_job(db, jid, user, kinds=FINETUNES))


@router.delete("/training-jobs/{jid}", response_model=TrainingJobPublic)
def cancel_training_job(
    jid: int, request: Request, user: User = Depends(current_user), queue: JobQueue = Depends(queue_of)
) -> JobPublic:
    """Whoever queued the job, or an admin."""
    return JobPublic.of(queue.cancel(store_of(request), jid, user, kinds=FINETUNES))


@router.post("/projects/{pid}/prelabel", status_code=201, response_model=JobPublic)
def prelabel(
    pid: int,
    body: PrelabelIn,
    request: Request,
    user: User = Depends(current_user),
    queue: JobQueue = Depends(queue_of),
) -> JobPublic:
    """Admins only, like the admin tab that offers it."""
    return JobPublic.of(queue.submit_segment_batch(store_of(request), user, pid, body.model_version_id, body.items))


@router.post("/projects/{pid}/precompute", status_code=201, response_model=JobPublic)
def precompute(
    pid: int,
    request: Request,
    user: User = Depends(current_user),
    queue: JobQueue = Depends(queue_of),
    body: PrecomputeIn | None = None,
) -> JobPublic:
    """Admins only, like the admin tab that offers it."""
    version = body.model_version_id if body else None
    return JobPublic.of(queue.submit_precompute(store_of(request), user, pid, version))


@router.get("/jobs/{jid}", response_model=AnyJobPublic)
def get_job(jid: int, db: Db, user: User = Depends(current_user)) -> JobPublic:
    """Any job: pre-labelling, precompute, evaluation or fine-tune (which has ``epoch_metrics``);
    pre-labelled masks have ``job_id`` set (see /masks/{id})."""
    return JobPublic.of(jobs.get_job(db, jid, user))


@router.delete("/jobs/{jid}", response_model=AnyJobPublic)
def cancel_job(
    jid: int, request: Request, user: User = Depends(current_user), queue: JobQueue = Depends(queue_of)
) -> JobPublic:
    """Whoever queued the job, or an admin."""
    return JobPublic.of(queue.cancel(store_of(request), jid, user))
