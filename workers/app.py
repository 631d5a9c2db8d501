"""The Celery app, configured from the one settings object.

Production points ``MEDSAM_BROKER_URL`` and ``MEDSAM_RESULT_BACKEND`` at Redis.
With nothing set, the broker is kombu's SQLAlchemy transport on a SQLite file
(its filesystem transport crashed workers here), so one laptop runs it all
without a server. JSON only: a message must never be able to run code.
"""

from __future__ import annotations

from celery import Celery

from portal.store.settings import Settings, get_settings

INFERENCE_QUEUE = "inference"
TRAINING_QUEUE = "training"
# kombu's virtual transports poll once a second by default: 1 s per round trip.
# Its transport options go to create_engine, so the interval is set on the class.
SQLA_POLLING_INTERVAL = 0.02


def make_app(settings: Settings | None = None) -> Celery:
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
    app = Celery("medsam", broker=broker, backend=settings.resolved_result_backend, include=["workers.tasks", "workers.training_tasks"])
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
        task_default_queue=INFERENCE_QUEUE,
        task_routes={
            "medsam.inference.*": {"queue": INFERENCE_QUEUE},
            "medsam.training.*": {"queue": TRAINING_QUEUE},
        },
        broker_transport_options=transport_options,
        result_backend_transport_options=transport_options if not broker.startswith("sqla+") else {},
        broker_connection_retry_on_startup=True,
        result_expires=24 * 3600,
        worker_send_task_events=True,
        task_send_sent_event=True,
    )
    return app


app = make_app()


def _start_reaper(sender=None, **_kwargs) -> None:
    """The reaper runs in its own process, never in the worker's main process.

    The prefork pool forks new children from the main process at any moment;
    a child forked while the main process held an SQLite connection inherits
    SQLite's in-process lock state and then finds the database locked for
    good. So the main process opens no database at all.
    """
    from workers.reaper import start_reaper_process

    start_reaper_process()


from celery.signals import worker_ready, worker_shutdown  # noqa: E402

worker_ready.connect(_start_reaper, weak=False)


def _stop_reaper(sender=None, **_kwargs) -> None:
    from workers.reaper import stop_reaper_process

    stop_reaper_process()


worker_shutdown.connect(_stop_reaper, weak=False)
