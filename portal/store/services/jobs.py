"""The job state machine, shared by inference and training jobs.

queued -> running -> succeeded | failed | cancelled; running -> queued when the
reaper finds a dead worker; queued -> cancelled. Every transition is a
conditional UPDATE, so two workers (or a worker and the reaper) racing on one
job cannot both win.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session

from portal.store.errors import PermissionDeniedError, StoreError
from portal.store.models import Job, JobKind, JobState, Role, TrainingJob, User, utcnow
from portal.store.services.audit import record
from portal.store.services.projects import is_member, not_found
from portal.store.store import Store

JobModel = type[Job] | type[TrainingJob]
FINISHED = (JobState.succeeded, JobState.failed, JobState.cancelled)


class JobCancelled(Exception):
    """Raised inside a task between steps when someone asked to cancel."""


def create_job(store: Store, kind: JobKind, params: dict[str, Any], *, project_id: int | None = None,
               actor: User | None = None) -> Job:
    with store.transaction() as session:
        job = Job(kind=kind, params=params, project_id=project_id, requested_by=actor.id if actor else None)
        session.add(job)
        session.flush()
        record(session, actor, "job.queued", "job", job.id, project_id, kind=kind.value)
        return job


def _label(model: JobModel, job_id: int) -> str:
    return f"{model.__tablename__[:-1].replace('_', ' ')} {job_id}"


def _get(session: Session, model: JobModel, job_id: int) -> Job | TrainingJob | None:
    # Typed for mypy only: ``Session.get`` of a union of classes would be typed as their common base.
    return cast("Job | TrainingJob | None", session.get(model, job_id))


def _visible(session: Session, model: JobModel, job_id: int, actor: User | None) -> Job | TrainingJob:
    """The job if ``actor`` may see it: members of its project, or whoever queued a job that has no project."""
    job = _get(session, model, job_id)
    if actor is None:
        if job is None:
            raise not_found(_label(model, job_id), trusted=True)
        return job
    if job is None or not (is_member(session, actor, job.project_id) if job.project_id is not None
                           else actor.role == Role.admin or job.requested_by == actor.id):
        raise not_found(_label(model, job_id))
    return job


def get_job(store: Store, model: JobModel, job_id: int, actor: User | None = None) -> Job | TrainingJob:
    """``actor`` None is a trusted caller (a worker, the reaper) that sees every job."""
    with store.transaction() as session:
        return _visible(session, model, job_id, actor)


def set_task_id(store: Store, model: JobModel, job_id: int, task_id: str) -> None:
    with store.transaction() as session:
        session.execute(update(model).where(model.id == job_id).values(celery_task_id=task_id))


@dataclass
class Claim:
    job: Job | TrainingJob | None
    reason: str = ""


def claim(store: Store, model: JobModel, job_id: int, task_id: str | None) -> Claim:
    """Mark the job running for this delivery; a finished job is left alone (idempotent redelivery)."""
    with store.transaction() as session:
        job = _get(session, model, job_id)
        if job is None:
            return Claim(None, f"job {job_id} does not exist")
        if job.state in FINISHED:
            return Claim(None, f"job {job_id} is already {job.state.value}")
        if job.cancel_requested:
            _finish(session, job, JobState.cancelled)
            return Claim(None, f"job {job_id} was cancelled before it started")
        now = utcnow()
        job.state = JobState.running
        job.heartbeat_at = now
        job.started_at = job.started_at or now
        job.attempts += 1
        job.celery_task_id = task_id or job.celery_task_id
        record(session, None, "job.running", model.__tablename__, job_id, job.project_id, attempt=job.attempts)
        return Claim(job)


def heartbeat(store: Store, model: JobModel, job_id: int, progress: dict[str, Any] | None = None) -> None:
    """Prove liveness (and report progress); raise JobCancelled if a cancel was asked for."""
    with store.transaction() as session:
        values: dict[str, Any] = {"heartbeat_at": utcnow()}
        if progress is not None:
            values["progress"] = progress
        session.execute(update(model).where(model.id == job_id, model.state == JobState.running).values(**values))
        cancel = session.scalar(select(model.cancel_requested).where(model.id == job_id))
    if cancel:
        raise JobCancelled(f"job {job_id} was cancelled")


def _finish(session: Session, job: Job | TrainingJob, state: JobState, error: str | None = None,
            result: dict[str, Any] | None = None) -> None:
    job.state = state
    job.finished_at = utcnow()
    job.error = error
    if result is not None:
        job.result = result
    record(session, None, f"job.{state.value}", type(job).__tablename__, job.id, job.project_id, error=error)


def finish(store: Store, model: JobModel, job_id: int, state: JobState, *, error: str | None = None,
           result: dict[str, Any] | None = None) -> None:
    with store.transaction() as session:
        job = _get(session, model, job_id)
        if job is not None and job.state not in FINISHED:
            _finish(session, job, state, error, result)


def request_cancel(store: Store, model: JobModel, job_id: int, actor: User | None = None) -> Job | TrainingJob:
    """Flag the job; a queued job is cancelled at once, a running one at its next step.

    Only whoever queued it, or an admin, may cancel: a colleague's fine-tune
    of hours is not another member's to stop.
    """
    with store.transaction() as session:
        job = _visible(session, model, job_id, actor)
        if actor is not None and actor.role != Role.admin and job.requested_by != actor.id:
            owner = session.get(User, job.requested_by) if job.requested_by else None
            if owner is None:
                raise PermissionDeniedError(f"{_label(model, job_id)} was not queued by you; ask an admin to cancel it")
            raise PermissionDeniedError(f"{_label(model, job_id)} was queued by {owner.username}; only they or an "
                                        "admin may cancel it: ask them")
        if job.state in FINISHED:
            raise StoreError(f"job {job_id} is already {job.state.value}")
        job.cancel_requested = True
        if job.state == JobState.queued:
            _finish(session, job, JobState.cancelled)
        record(session, actor, "job.cancel", model.__tablename__, job_id, job.project_id)
        return job


def stale_jobs(store: Store, model: JobModel, stale_after: timedelta) -> list[int]:
    cutoff = datetime.now(timezone.utc) - stale_after
    with store.transaction() as session:
        return list(session.scalars(select(model.id).where(model.state == JobState.running,
                                                           model.heartbeat_at < cutoff)))


def requeue_if_stale(store: Store, model: JobModel, job_id: int, stale_after: timedelta) -> bool:
    """Move a silent running job back to queued; only one reaper wins the conditional update."""
    cutoff = datetime.now(timezone.utc) - stale_after
    with store.transaction() as session:
        won = cast("CursorResult[Any]", session.execute(
            update(model).where(model.id == job_id, model.state == JobState.running, model.heartbeat_at < cutoff)
            .values(state=JobState.queued, heartbeat_at=None)
        )).rowcount
        if won:
            record(session, None, "job.requeued", model.__tablename__, job_id, None, reason="stale heartbeat")
        return bool(won)
