"""Requeue jobs whose worker died.

The broker alone cannot save them: kombu's SQLAlchemy transport never returns
a message fetched by a killed worker, and Redis only after its visibility
timeout. The job rows know better: a running job whose heartbeat went stale is
put back on the queue. Tasks are idempotent, so a duplicate is harmless.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from portal.store.models import Job, TrainingJob
from portal.store.services import jobs
from portal.store.store import Store
from workers.app import app

log = logging.getLogger(__name__)


def reap(store: Store) -> list[tuple[str, int]]:
    stale_after = timedelta(seconds=store.settings.job_stale_s)
    requeued = []
    for model in (Job, TrainingJob):
        for job_id in jobs.stale_jobs(store, model, stale_after):
            if not jobs.requeue_if_stale(store, model, job_id, stale_after):
                continue  # another reaper got there first
            job = jobs.get_job(store, model, job_id)
            from workers.dispatch import task_name

            result = app.send_task(task_name(model, job), args=[job_id])
            jobs.set_task_id(store, model, job_id, result.id)
            log.warning("requeued %s %s: its worker stopped sending heartbeats", model.__tablename__, job_id)
            requeued.append((model.__tablename__, job_id))
    return requeued


class ReaperThread(threading.Thread):
    """Runs in the worker's main process: at start-up, then every ``reaper_interval_s``."""

    def __init__(self, store: Store):
        super().__init__(daemon=True, name="medsam-reaper")
        self.store = store
        self.stop = threading.Event()

    def run(self) -> None:
        while True:
            try:
                reap(self.store)
            except Exception:  # noqa: BLE001 - the reaper must outlive a database hiccup
                log.exception("reaper pass failed")
            if self.stop.wait(self.store.settings.reaper_interval_s):
                return
