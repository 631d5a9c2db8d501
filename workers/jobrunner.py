"""Running a job row inside a task: claim, heartbeat, finish, and plain-language failures.

A task body gets a ``Step`` object; calling ``step.progress(...)`` between
units of work records progress, proves liveness and raises ``JobCancelled``
if someone cancelled, so a cancel lands within one step.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from medsam_core.errors import MedsamError
from portal.store.models import Job, JobState
from portal.store.redact import scrub
from portal.store.services import jobs
from portal.store.store import Store

log = logging.getLogger(__name__)


def beat(store: Store, job_id: int, progress: dict[str, Any] | None = None) -> None:
    """One short transaction of its own; raises JobCancelled after it committed when a cancel was asked for."""
    with store.transaction() as db:
        cancel = jobs.heartbeat(db, job_id, progress)
    if cancel:
        raise jobs.JobCancelled(f"job {job_id} was cancelled")


def finish(store: Store, job_id: int, state: JobState, **outcome: Any) -> None:
    with store.transaction() as db:
        jobs.finish(db, job_id, state, **outcome)


class Step:
    def __init__(self, store: Store, job_id: int):
        self.store, self.job_id = store, job_id

    def progress(self, **values: Any) -> None:
        beat(self.store, self.job_id, values)


class _Heartbeat(threading.Thread):
    """Keeps ``heartbeat_at`` fresh during long steps (a ViT-H encode, a training epoch)."""

    def __init__(self, store: Store, job_id: int, every_s: float):
        super().__init__(daemon=True, name=f"heartbeat-{job_id}")
        self.store, self.job_id, self.every_s = store, job_id, every_s
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every_s):
            try:
                beat(self.store, self.job_id)
            except jobs.JobCancelled:
                pass  # the task body notices at its next step
            except Exception:  # noqa: BLE001 - a hiccup here must not kill the task
                log.exception("heartbeat of job %s failed", self.job_id)


def run_job(store: Store, job_id: int, task_id: str | None, body: Callable[[Job, Step], dict | None]) -> dict:
    with store.transaction() as db:
        claim = jobs.claim(db, job_id, task_id)
    if claim.job is None:
        log.info("skipping: %s", claim.reason)
        return {"job_id": job_id, "skipped": claim.reason}
    beating = _Heartbeat(store, job_id, store.settings.job_heartbeat_s)
    beating.start()
    try:
        result = body(claim.job, Step(store, job_id)) or {}
    except jobs.JobCancelled:
        finish(store, job_id, JobState.cancelled)
        return {"job_id": job_id, "state": "cancelled"}
    except (MedsamError, LookupError) as exc:
        # Bad input: fail the job with the reason and keep serving; retrying cannot help.
        finish(store, job_id, JobState.failed, error=scrub(str(exc)))
        return {"job_id": job_id, "state": "failed", "error": scrub(str(exc))}
    except Exception as exc:  # the row is read by users: no server paths in it (the log has the full story)
        finish(store, job_id, JobState.failed, error=scrub(f"internal error: {type(exc).__name__}: {exc}"))
        raise
    finally:
        beating.stop.set()
    finish(store, job_id, JobState.succeeded, result=result)
    return {"job_id": job_id, "state": "succeeded", **result}
