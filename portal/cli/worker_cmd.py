"""``medsam worker``: a Celery worker with this project's defaults (prefork, one task at a time)."""

from __future__ import annotations

import argparse

from workers.names import QUEUES


def register(sub) -> None:
    p = sub.add_parser(
        "worker",
        help="run a Celery worker for the inference and/or training queue",
        description="A thin wrapper over `celery -A workers worker`: the prefork pool (a killed "
        "task process is noticed and its task requeued) and concurrency 1, since "
        "one encode or one fine-tune already uses the whole CPU or GPU.",
    )
    p.add_argument("--queues", "-Q", default="inference", help="comma-separated: inference, training")
    p.add_argument("--concurrency", "-c", type=int, default=1, help="task processes (default 1)")
    p.add_argument("--pool", "-P", default="prefork", choices=("prefork", "solo", "threads"))
    p.add_argument("--loglevel", "-l", default="INFO")
    p.add_argument("--hostname", "-n", default=None, help="worker name (default QUEUES@%%h)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from medsam_core.errors import MedsamError

    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    unknown = [q for q in queues if q not in QUEUES]
    if not queues or unknown:
        raise MedsamError(f"unknown queue(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(QUEUES)}")
    if args.concurrency < 1:
        raise MedsamError("--concurrency must be at least 1")
    from portal.store.settings import get_settings
    from workers.app import make_app

    app = make_app(get_settings())
    name = args.hostname or f"{'+'.join(queues)}@%h"
    app.worker_main(
        [
            "worker",
            "-Q",
            ",".join(queues),
            "-c",
            str(args.concurrency),
            "-P",
            args.pool,
            "-l",
            args.loglevel,
            "-n",
            name,
            "--without-gossip",
            "--without-mingle",
        ]
    )
    return 0
