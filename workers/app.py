"""The Celery app factory, configured from the one settings object.

Production points ``MEDSAM_BROKER_URL`` and ``MEDSAM_RESULT_BACKEND`` at Redis.
With nothing set, the broker is kombu's SQLAlchemy transport on a SQLite file
(its filesystem transport crashed workers here), so one laptop runs it all
without a server. JSON only: a message must never be able to run code.

Nothing here runs at import: the web process builds an app when its queue
port first sends, a worker when it starts (``medsam worker``, or
``celery -A workers``, which finds ``workers.celery``).
"""

from __future__ import annotations

import subprocess
import sys

from celery import Celery
from celery.signals import worker_ready, worker_shutdown

from portal.store.settings import Settings, get_settings
from workers import names

# kombu's virtual transports poll once a second by default: 1 s per round trip.
# Its transport options go to create_engine, so the interval is set on the class.
SQLA_POLLING_INTERVAL = 0.02


def make_app(settings: Settings | None = None) -> Celery:
    """A new app for ``settings`` (default: the environment's); connects to nothing until used."""
    settings = settings or get_settings()
    broker = settings.resolved_broker_url
    if broker.startswith("sqla+"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        import kombu.transport.sqlalchemy as sqla_transport

        sqla_transport.Transport.polling_interval = SQLA_POLLING_INTERVAL
        transport_options = {"connect_args": {"timeout": 60}}
    else:
        # A message fetched by a worker that dies comes back after this long;
        # the job reaper requeues much sooner, from the job rows.
        transport_options = {"visibility_timeout": 3600}
    app = Celery("medsam", broker=broker, backend=settings.resolved_result_backend, include=list(names.TASK_MODULES))
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # How long the pool waits for a killed child's result before declaring it lost
        # (and requeueing its task); Celery's default of 10 s is dead time for the user.
        worker_lost_wait=1.0,
        task_track_started=True,
        task_default_queue=names.INFERENCE_QUEUE,
        task_routes={
            names.INFERENCE_TASKS: {"queue": names.INFERENCE_QUEUE},
            names.TRAINING_TASKS: {"queue": names.TRAINING_QUEUE},
        },
        task_annotations=_time_limits(settings),
        broker_transport_options=transport_options,
        result_backend_transport_options=transport_options if not broker.startswith("sqla+") else {},
        broker_connection_retry_on_startup=True,
        result_expires=24 * 3600,
        worker_send_task_events=True,
        task_send_sent_event=True,
    )
    worker_ready.connect(_start_reaper, weak=False)  # connecting the same function twice is a no-op
    worker_shutdown.connect(_stop_reaper, weak=False)
    return app


def _time_limits(settings: Settings) -> dict[str, dict[str, int]]:
    """Hard limits from settings, applied to each task when a worker registers it (the no-op has none)."""
    inference = (
        names.TASK_ENCODE,
        names.TASK_SEGMENT_BATCH,
        names.TASK_PRECOMPUTE,
        names.TASK_PRECOMPUTE_VOLUME,
        names.TASK_PROPAGATE,
    )
    training = (names.TASK_FINETUNE, names.TASK_EVALUATE)
    return {
        **{name: {"time_limit": settings.inference_time_limit_s} for name in inference},
        **{name: {"time_limit": settings.training_time_limit_s} for name in training},
    }


_reaper: subprocess.Popen | None = None


def _die_with_parent() -> None:
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _start_reaper(sender=None, **_kwargs) -> None:
    """The reaper (``workers.reaper``) runs in its own process, never in the worker's main process.

    The prefork pool forks new children from the main process at any moment;
    a child forked while the main process held an SQLite connection inherits
    SQLite's in-process lock state and then finds the database locked for
    good. So the main process opens no database at all.
    """
    global _reaper
    _reaper = subprocess.Popen([sys.executable, "-m", "workers.reaper"], preexec_fn=_die_with_parent)


def _stop_reaper(sender=None, **_kwargs) -> None:
    if _reaper is not None and _reaper.poll() is None:
        _reaper.terminate()
        try:
            _reaper.wait(10)
        except subprocess.TimeoutExpired:
            _reaper.kill()
