"""``medsam serve``: the web process plus one worker process per queue, in one command.

Workers run as child processes, each in its own process group, so that a
fine-tune on the training queue never blocks the encodes that people who are
labelling wait for. A worker that dies is restarted. SIGINT or SIGTERM stops
the web server, then every worker group (warm shutdown first, then a kill), so
no process is orphaned.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time

from portal.store.settings import get_settings
from workers.names import QUEUES as WORKER_QUEUES

STOP_GRACE_S = 15


def register(sub) -> None:
    p = sub.add_parser("serve", help="run the portal (web + workers)")
    p.add_argument("--host", default=None, help="listen address (default MEDSAM_HOST, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default MEDSAM_PORT, 7860)")
    p.add_argument("--no-workers", action="store_true", help="web only; workers run elsewhere (production)")
    p.set_defaults(handler=run)


class Supervisor:
    def __init__(self, queues: tuple[str, ...]):
        self.queues = queues
        self.procs: dict[str, subprocess.Popen] = {}
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="worker-supervisor")

    def _spawn(self, queue: str) -> None:
        cmd = [sys.executable, "-m", "portal.cli", "worker", "--queues", queue, "--loglevel", "WARNING"]
        self.procs[queue] = subprocess.Popen(cmd, start_new_session=True)
        print(f"medsam serve: started the {queue} worker (pid {self.procs[queue].pid})", file=sys.stderr)

    def start(self) -> None:
        for queue in self.queues:
            self._spawn(queue)
        self._thread.start()

    def _watch(self) -> None:
        while not self.stopping.wait(2):
            for queue, proc in list(self.procs.items()):
                if proc.poll() is not None and not self.stopping.is_set():
                    print(
                        f"medsam serve: the {queue} worker exited ({proc.returncode}); restarting it", file=sys.stderr
                    )
                    _signal_group(proc, signal.SIGKILL)  # its pool children must not linger
                    self._spawn(queue)

    def stop(self) -> None:
        self.stopping.set()
        for proc in self.procs.values():
            _signal_group(proc, signal.SIGTERM)  # Celery's warm shutdown
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in self.procs.values():
            _signal_group(proc, signal.SIGKILL)  # whatever is left, pool children included
            proc.wait()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from portal.web.app import create_app

    settings = get_settings()
    host, port = args.host or settings.host, args.port or settings.port
    app = create_app(settings)  # migrations and the base model before any worker starts
    supervisor = Supervisor(() if args.no_workers else WORKER_QUEUES)
    # uvicorn handles SIGINT/SIGTERM while it serves, then restores the previous
    # handlers and re-raises the signal. With Python's defaults that re-raise
    # would kill us before the workers are stopped, so the handlers in place
    # before uvicorn only note the signal and let shutdown continue.
    received: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: received.append(signum))
    signal.signal(signal.SIGHUP, lambda *_: os.kill(os.getpid(), signal.SIGTERM))  # terminal closed
    supervisor.start()
    print(f"medsam serve: portal at http://{host}:{port}/ (API docs at /api/docs)", file=sys.stderr, flush=True)
    try:
        uvicorn.Server(
            uvicorn.Config(
                app, host=host, port=port, log_level="warning", forwarded_allow_ips=settings.forwarded_allow_ips
            )
        ).run()
    finally:
        print("medsam serve: stopping the workers", file=sys.stderr, flush=True)
        supervisor.stop()
    return 0
