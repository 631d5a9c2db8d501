"""Queue overhead: a task's round trip through the broker against calling the function directly.

For each broker (Redis, and the serverless SQLite default) a real worker is
started in its own process, then a no-op task and ``encode_image`` on a cache
hit are timed end to end (``delay().get()``), next to the same functions
called in this process. Overhead = round trip - direct call, as p50 and p95.

    .venv/bin/python bench/queue_overhead.py [--calls 200] [--brokers redis,serverless]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo" / "ct_abdomen.png"


def pct(values, q):
    return float(np.percentile(values, q))


def timed(fn, calls: int, label: str) -> list[float]:
    fn()  # warm-up: connections, model, caches
    out = []
    for _ in tqdm(range(calls), desc=label, file=sys.stderr, leave=False):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def run_broker(name: str, calls: int, redis_url: str) -> list[tuple[str, list[float]]]:
    folder = Path(tempfile.mkdtemp(prefix=f"medsam-bench-{name}-"))
    env = {"MEDSAM_DATA_DIR": str(folder), "MEDSAM_DATABASE_URL": f"sqlite:///{folder / 'medsam.db'}"}
    if name == "redis":
        import redis

        redis.Redis.from_url(redis_url).flushdb()
        env.update(MEDSAM_BROKER_URL=redis_url, MEDSAM_RESULT_BACKEND=redis_url)
    os.environ.update(env)  # this process is the client: same settings as the worker
    from portal.store.settings import get_settings

    get_settings.cache_clear()
    from portal.store.models import Role
    from portal.store.services import images, model_versions, projects, users
    from portal.store.store import open_store
    from workers.app import make_app
    from workers.names import TASK_ENCODE, TASK_NOOP

    store = open_store()
    with store.transaction() as session:
        admin = users.create_user(session, "bench", "bench-password", Role.admin)
        project = projects.create_project(session, admin, "bench", "ct", ["organ"])
        (image,) = images.add_image(session, store.blobs, store.settings, admin, project.id, DEMO)
    with store.transaction() as db:
        version = model_versions.base_version(db).id
    app = make_app(get_settings())
    log = open(folder / "worker.log", "wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "portal.cli", "worker", "--queues", "inference"],
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        app.send_task(TASK_NOOP, args=[0]).get(timeout=120, interval=0.005)
        app.send_task(TASK_ENCODE, args=[image.id, version]).get(timeout=300, interval=0.01)
        from workers import tasks
        from workers.runtime import get_pool

        get_pool().predictor(version)  # load the model here too, for the direct calls
        rows = [
            (
                f"{name}: noop round trip",
                timed(
                    lambda: app.send_task(TASK_NOOP, args=[1]).get(timeout=60, interval=0.001), calls, f"{name} noop"
                ),
            ),
            ("direct: noop call", timed(lambda: tasks.noop.run(1), calls, "direct noop")),
            (
                f"{name}: encode_image (cache hit) round trip",
                timed(
                    lambda: app.send_task(TASK_ENCODE, args=[image.id, version]).get(timeout=60, interval=0.001),
                    calls,
                    f"{name} encode",
                ),
            ),
            (
                "direct: encode_image (cache hit) call",
                timed(lambda: tasks.encode_image.run(image.id, version), calls, "direct encode"),
            ),
        ]
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)
        store.close()
        shutil.rmtree(folder, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--brokers", default="redis,serverless")
    parser.add_argument("--redis-url", default=os.environ.get("MEDSAM_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"))
    args = parser.parse_args()
    brokers = args.brokers.split(",")
    if len(brokers) == 1:
        print(f"machine: {os.cpu_count()} cores; {args.calls} calls per row after one warm-up; times in ms")
        print(f"{'what':50s} {'p50':>9s} {'p95':>9s}")
    for name in brokers:
        # One broker per process: the Celery app and settings are process-wide.
        if len(brokers) > 1:
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--calls",
                    str(args.calls),
                    "--brokers",
                    name,
                    "--redis-url",
                    args.redis_url,
                ],
                check=True,
            )
            continue
        rows = run_broker(name, args.calls, args.redis_url)
        for label, values in rows:
            print(f"{label:50s} {statistics.median(values):9.1f} {pct(values, 95):9.1f}")
        for kind in ("noop", "encode_image (cache hit)"):
            trip = next(v for lbl, v in rows if lbl.startswith(name) and kind in lbl)
            direct = next(v for lbl, v in rows if lbl.startswith("direct") and kind in lbl)
            print(
                f"{name + ': overhead of ' + kind:50s} {statistics.median(trip) - statistics.median(direct):9.1f}"
                f" {pct(trip, 95) - pct(direct, 95):9.1f}"
            )


if __name__ == "__main__":
    main()
