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
from portal.store.models import JobState
from portal.store.redact import scrub
from portal.store.services import jobs
from portal.store.store import Store

log = logging.getLogger(__name__)


class Step:
    def __init__(self, store: Store, model, job_id: int):
        self.store, self.model, self.job_id = store, model, job_id

    def progress(self, **values: Any) -> None:
        jobs.heartbeat(self.store, self.model, self.job_id, values)


class _Heartbeat(threading.Thread):
    """Keeps ``heartbeat_at`` fresh during long steps (a ViT-H encode, a training epoch)."""

    def __init__(self, store: Store, model, job_id: int, every_s: float):
        super().__init__(daemon=True, name=f"heartbeat-{job_id}")
        self.store, self.model, self.job_id, self.every_s = store, model, job_id, every_s
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every_s):
            try:
                jobs.heartbeat(self.store, self.model, self.job_id)
            except jobs.JobCancelled:
                pass  # the task body notices at its next step
            except Exception:  # noqa: BLE001 - a hiccup here must not kill the task
                log.exception("heartbeat of job %s failed", self.job_id)


def run_job(store: Store, model, job_id: int, task_id: str | None,
            body: Callable[[Any, Step], dict | None]) -> dict:
    claim = jobs.claim(store, model, job_id, task_id)
    if claim.job is None:
        log.info("skipping: %s", claim.reason)
        return {"job_id": job_id, "skipped": claim.reason}
    beat = _Heartbeat(store, model, job_id, store.settings.job_heartbeat_s)
    beat.start()
    try:
        result = body(claim.job, Step(store, model, job_id)) or {}
    except jobs.JobCancelled:
        jobs.finish(store, model, job_id, JobState.cancelled)
        return {"job_id": job_id, "state": "cancelled"}
    except (MedsamError, LookupError) as exc:
        # Bad input: fail the job with the reason and keep serving; retrying cannot help.
        jobs.finish(store, model, job_id, JobState.failed, error=scrub(str(exc)))
        return {"job_id": job_id, "state": "failed", "error": scrub(str(exc))}
    except Exception as exc:  # the row is read by users: no server paths in it (the log has the full story)
        jobs.finish(store, model, job_id, JobState.failed,
                    error=scrub(f"internal error: {type(exc).__name__}: {exc}"))
        raise
    finally:
        beat.stop.set()
    jobs.finish(store, model, job_id, JobState.succeeded, result=result)
    return {"job_id": job_id, "state": "succeeded", **result}
