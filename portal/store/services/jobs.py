"""The job state machine, shared by every kind of job (inference, evaluation, fine-tuning).

queued -> running -> succeeded | failed | cancelled; running -> queued when the
reaper finds a dead worker; queued -> cancelled. Every transition is a
conditional UPDATE, so two workers (or a worker and the reaper) racing on one
job cannot both win. Each function works in the caller's transaction; workers
give claim, heartbeat and finish a short transaction each.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session

from portal.store.errors import PermissionDeniedError, StoreError
from portal.store.models import Job, JobKind, JobState, Role, User, utcnow
from portal.store.services.audit import record
from portal.store.services.projects import is_member, not_found

FINISHED = (JobState.succeeded, JobState.failed, JobState.cancelled)
TARGET = Job.__tablename__  # the audit trail's target_type of state changes


class JobCancelled(Exception):
    """Raised inside a task between steps when someone asked to cancel."""


def create_job(
    db: Session, kind: JobKind, params: dict[str, Any], *, project_id: int | None = None, actor: User | None = None
) -> Job:
    job = Job(
        kind=kind,
        params=params,
        project_id=project_id,
        requested_by=actor.id if actor else None,
        epoch_metrics=[] if kind == JobKind.finetune else None,
    )
    db.add(job)
    db.flush()
    details = params if kind == JobKind.finetune else {}
    record(db, actor, "job.queued", "job", job.id, project_id, kind=kind.value, **details)
    return job


def _label(kinds: Collection[JobKind] | None, job_id: int) -> str:
    return f"training job {job_id}" if kinds is not None and set(kinds) == {JobKind.finetune} else f"job {job_id}"


def _visible(db: Session, job_id: int, actor: User | None, kinds: Collection[JobKind] | None) -> Job:
    """The job if ``actor`` may see it: members of its project, or whoever queued a job that has no project.

    ``kinds``: only jobs of these kinds exist for this caller (a training-jobs route sees fine-tunes only).
    """
    job = db.get(Job, job_id)
    if job is not None and kinds is not None and job.kind not in kinds:
        job = None
    if actor is None:
        if job is None:
            raise not_found(_label(kinds, job_id), trusted=True)
        return job
    if job is None or not (
        is_member(db, actor, job.project_id)
        if job.project_id is not None
        else actor.role == Role.admin or job.requested_by == actor.id
    ):
        raise not_found(_label(kinds, job_id))
    return job


def get_job(db: Session, job_id: int, actor: User | None = None, *, kinds: Collection[JobKind] | None = None) -> Job:
    """``actor`` None is a trusted caller (a worker, the reaper) that sees every job."""
    return _visible(db, job_id, actor, kinds)


def set_task_id(db: Session, job_id: int, task_id: str) -> None:
    db.execute(update(Job).where(Job.id == job_id).values(celery_task_id=task_id))


@dataclass
class Claim:
    job: Job | None
    reason: str = ""


def claim(db: Session, job_id: int, task_id: str | None) -> Claim:
    """Mark the job running for this delivery; a finished job is left alone (idempotent redelivery)."""
    job = db.get(Job, job_id)
    if job is None:
        return Claim(None, f"job {job_id} does not exist")
    if job.state in FINISHED:
        return Claim(None, f"job {job_id} is already {job.state.value}")
    if job.cancel_requested:
        _finish(db, job, JobState.cancelled)
        return Claim(None, f"job {job_id} was cancelled before it started")
    now = utcnow()
    job.state = JobState.running
    job.heartbeat_at = now
    job.started_at = job.started_at or now
    job.attempts += 1
    job.celery_task_id = task_id or job.celery_task_id
    record(db, None, "job.running", TARGET, job_id, job.project_id, attempt=job.attempts)
    return Claim(job)


def heartbeat(db: Session, job_id: int, progress: dict[str, Any] | None = None) -> bool:
    """Prove liveness (and report progress); True if a cancel was asked for (the caller raises JobCancelled
    once this transaction has committed, so the heartbeat is kept)."""
    values: dict[str, Any] = {"heartbeat_at": utcnow()}
    if progress is not None:
        values["progress"] = progress
    db.execute(update(Job).where(Job.id == job_id, Job.state == JobState.running).values(**values))
    return bool(db.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def _finish(
    db: Session, job: Job, state: JobState, error: str | None = None, result: dict[str, Any] | None = None
) -> None:
    job.state = state
    job.finished_at = utcnow()
    job.error = error
    if result is not None:
        job.result = result
    record(db, None, f"job.{state.value}", TARGET, job.id, job.project_id, error=error)


def finish(
    db: Session, job_id: int, state: JobState, *, error: str | None = None, result: dict[str, Any] | None = None
) -> None:
    job = db.get(Job, job_id)
    if job is not None and job.state not in FINISHED:
        _finish(db, job, state, error, result)


def request_cancel(
    db: Session, job_id: int, actor: User | None = None, *, kinds: Collection[JobKind] | None = None
) -> Job:
    """Flag the job; a queued job is cancelled at once, a running one at its next step.

    Only whoever queued it, or an admin, may cancel: a colleague's fine-tune
    of hours is not another member's to stop.
    """
    job = _visible(db, job_id, actor, kinds)
    if actor is not None and actor.role != Role.admin and job.requested_by != actor.id:
        owner = db.get(User, job.requested_by) if job.requested_by else None
        what = _label(kinds, job_id)
        if owner is None:
            raise PermissionDeniedError(f"{what} was not queued by you; ask an admin to cancel it")
        raise PermissionDeniedError(
            f"{what} was queued by {owner.username}; only they or an admin may cancel it: ask them"
        )
    if job.state in FINISHED:
        raise StoreError(f"job {job_id} is already {job.state.value}")
    job.cancel_requested = True
    if job.state == JobState.queued:
        _finish(db, job, JobState.cancelled)
    record(db, actor, "job.cancel", TARGET, job_id, job.project_id)
    return job


def stale_jobs(db: Session, stale_after: timedelta) -> list[int]:
    cutoff = datetime.now(timezone.utc) - stale_after
    return list(db.scalars(select(Job.id).where(Job.state == JobState.running, Job.heartbeat_at < cutoff)))


def requeue_if_stale(db: Session, job_id: int, stale_after: timedelta) -> bool:
    """Move a silent running job back to queued; only one reaper wins the conditional update."""
    cutoff = datetime.now(timezone.utc) - stale_after
    won = cast(
        "CursorResult[Any]",
        db.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == JobState.running, Job.heartbeat_at < cutoff)
            .values(state=JobState.queued, heartbeat_at=None)
        ),
    ).rowcount
    if won:
        record(db, None, "job.requeued", TARGET, job_id, None, reason="stale heartbeat")
    return bool(won)
