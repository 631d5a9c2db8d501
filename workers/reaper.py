"""Requeue jobs whose worker died.

The broker alone cannot save them: kombu's SQLAlchemy transport never returns
a message fetched by a killed worker, and Redis only after its visibility
timeout. The job rows know better: a running job whose heartbeat went stale is
put back on the queue. Tasks are idempotent, so a duplicate is harmless.

It runs as its own process (``python -m workers.reaper``), which the worker
starts when it is ready and stops when it shuts down (``workers.app``).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from portal.store.services import jobs
from portal.store.store import Store
from workers.queue import JobQueue

log = logging.getLogger(__name__)


def reap(store: Store, queue: JobQueue) -> list[tuple[str, int]]:
    stale_after = timedelta(seconds=store.settings.job_stale_s)
    requeued = []
    with store.transaction() as db:
        stale = jobs.stale_jobs(db, stale_after)
    for job_id in stale:
        with store.transaction() as db:  # one job per transaction: the conditional update decides who wins
            job = jobs.get_job(db, job_id) if jobs.requeue_if_stale(db, job_id, stale_after) else None
        if job is None:
            continue  # another reaper got there first
        queue.enqueue(store, job)
        log.warning("requeued %s job %s: its worker stopped sending heartbeats", job.kind.value, job_id)
        requeued.append((job.kind.value, job_id))
    return requeued


def run_forever() -> None:
    """At start-up, then every ``reaper_interval_s``, until the worker that started us stops."""
    import time

    from workers.runtime import get_store

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s: %(levelname)s/reaper] %(message)s")
    store = get_store()
    queue = JobQueue(store.settings)
    while True:
        try:
            reap(store, queue)
        except Exception:  # noqa: BLE001 - the reaper must outlive a database hiccup
            log.exception("reaper pass failed")
        time.sleep(store.settings.reaper_interval_s)


if __name__ == "__main__":
    run_forever()
