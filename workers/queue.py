"""The queue port: all the web side (and the CLI) knows of the workers.

Submitting creates the job row through the store's services, which check
membership, roles and parameters first, and then sends a message naming the
job; cancelling flags the row and revokes the message; ``encode`` is the one
synchronous round trip (an embedding the web process waits for). The Celery
app behind it is built on first use, from the settings given, so creating a
``JobQueue`` connects to nothing and importing this module reads nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from medsam_core.errors import MedsamError
from portal.store.models import Job, JobKind, User
from portal.store.services import evaluations, jobs, submissions, training, volumes_jobs
from portal.store.settings import Settings
from portal.store.store import Store
from workers import names

if TYPE_CHECKING:
    from celery import Celery

TASK_FOR_KIND = {
    JobKind.segment_batch: names.TASK_SEGMENT_BATCH,
    JobKind.precompute_embeddings: names.TASK_PRECOMPUTE,
    JobKind.evaluate: names.TASK_EVALUATE,
    JobKind.finetune: names.TASK_FINETUNE,
    JobKind.precompute_volume: names.TASK_PRECOMPUTE_VOLUME,
    JobKind.propagate: names.TASK_PROPAGATE,
}


class EncodeUnavailableError(MedsamError):
    """No worker encoded the image in time (or it failed): the web layer answers 503."""


def task_for(job: Job) -> str:
    """The task that runs a job row."""
    return TASK_FOR_KIND[job.kind]


class JobQueue:
    """One per process (the web app keeps it on ``app.state.queue``); thread-safe.

    ``JobQueue(settings)`` builds its Celery app from ``settings`` when it first
    sends; ``JobQueue(app=celery_app)`` uses an app the caller made (tests).
    """

    def __init__(self, settings: Settings | None = None, *, app: Celery | None = None):
        self._settings = settings
        self._app = app
        self._lock = threading.Lock()

    @property
    def app(self) -> Celery:
        with self._lock:
            if self._app is None:
                from workers.app import make_app

                self._app = make_app(self._settings)
            return self._app

    # Each submission is one transaction that checks and creates the row; the message is sent once it has
    # committed (a worker must find the row), and the task id is noted in a second, short one.

    def submit_segment_batch(
        self, store: Store, actor: User | None, project_id: int, model_version_id: int | None, items: Any
    ) -> Job:
        """Pre-label ``items`` (``[{"image_id", "boxes" or "points"}, ...]``); version None: the active one."""
        with store.transaction() as db:
            job = submissions.create_segment_batch(db, store.settings, actor, project_id, model_version_id, items)
        return self.enqueue(store, job)

    def submit_precompute(self, store: Store, actor: User | None, project_id: int, model_version_id: int | None) -> Job:
        """Encode every image of the project ahead of the first prompt."""
        with store.transaction() as db:
            job = submissions.create_precompute(db, actor, project_id, model_version_id)
        return self.enqueue(store, job)

    def submit_precompute_volume(
        self, store: Store, actor: User | None, volume_id: int, model_version_id: int | None = None
    ) -> Job:
        """Encode every slice of a volume, in batches, before anyone propagates through it."""
        with store.transaction() as db:
            job = volumes_jobs.create_precompute_volume(db, actor, volume_id, model_version_id)
        return self.enqueue(store, job)

    def submit_propagation(self, store: Store, actor: User, volume_id: int, **params: Any) -> Job:
        """Propagate a box through a volume into a new draft revision (``volumes_jobs.create_propagation``)."""
        with store.transaction() as db:
            job = volumes_jobs.create_propagation(db, actor, volume_id, **params)
        return self.enqueue(store, job)

    def submit_finetune(self, store: Store, actor: User, project_id: int, params: dict[str, Any]) -> Job:
        """Fine-tune on the training queue (one job per GPU worker at a time)."""
        with store.transaction() as db:
            job = training.create_job(db, store.blobs, store.settings, actor, project_id, params)
        return self.enqueue(store, job)

    def submit_evaluation(self, store: Store, actor: User | None, project_id: int, version_id: int) -> Job:
        """Score a version on the frozen validation images (what the promotion gate compares).

        A queued or running evaluation of the same version is returned instead of a second one.
        """
        with store.transaction() as db:
            job = evaluations.create_evaluation(
                db, store.blobs, actor, project_id, version_id, min_training_images=store.settings.min_training_images
            )
        return job if job.celery_task_id else self.enqueue(store, job)

    def cancel(
        self, store: Store, job_id: int, actor: User | None = None, *, kinds: Collection[JobKind] | None = None
    ) -> Job:
        """Flag the row (a running task stops at its next step) and revoke the queued message.

        ``kinds``: only a job of these kinds may be cancelled here (404 otherwise). The flag is what
        counts: revoking is a broadcast that the serverless broker does not carry, and a
        revoked-but-delivered task checks the row anyway.
        """
        with store.transaction() as db:
            job = jobs.request_cancel(db, job_id, actor, kinds=kinds)
        if job.celery_task_id:
            try:
                self.app.control.revoke(job.celery_task_id)
            except Exception:  # noqa: BLE001 - best effort, see above
                pass
        return job

    def enqueue(self, store: Store, job: Job) -> Job:
        """Send the message for an existing, committed row (again, for the reaper) and note its task id."""
        result = self.app.send_task(task_for(job), args=[job.id])
        with store.transaction() as db:
            jobs.set_task_id(db, job.id, result.id)
        job.celery_task_id = result.id
        return job

    def encode(self, image_id: int, version_id: int, timeout_s: float) -> dict[str, Any]:
        """Have an inference worker encode one image into the shared cache, and wait for it."""
        from celery.exceptions import TimeoutError as CeleryTimeout

        result = self.app.send_task(names.TASK_ENCODE, args=[image_id, version_id])
        try:
            return result.get(timeout=timeout_s, interval=0.05)
        except CeleryTimeout:
            raise EncodeUnavailableError(encode_timeout_message(image_id, timeout_s)) from None
        except Exception as exc:  # noqa: BLE001 - the worker's own error, told as it is
            raise EncodeUnavailableError(
                f"the inference worker could not encode image {image_id}: {type(exc).__name__}: {exc}"
            ) from None
        finally:
            try:
                result.forget()
            except Exception:  # noqa: BLE001 - a result left in the backend expires on its own
                pass


def encode_timeout_message(image_id: int, timeout_s: float) -> str:
    return (
        f"no inference worker encoded image {image_id} within {timeout_s:.0f} s; the queue may be busy, or "
        "no worker runs (start one with `medsam worker --queues inference`, or use `medsam serve` without "
        "--no-workers); try again"
    )
