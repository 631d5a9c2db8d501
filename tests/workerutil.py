"""A real Celery worker in a separate process, against a real broker, for tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

WORKER_ENV = {
    "MEDSAM_JOB_HEARTBEAT_S": "0.5",
    "MEDSAM_JOB_STALE_S": "6",
    "MEDSAM_REAPER_INTERVAL_S": "1",
}


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """If pytest itself is killed, its workers must not live on and steal the next run's tasks.

    ``medsam serve`` gets SIGTERM instead (``serve_dies_with_parent``), so it stops its own workers.
    """
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, sig)


def serve_dies_with_parent() -> None:
    die_with_parent(signal.SIGTERM)


class WorkerProcess:
    def __init__(self, env: dict[str, str], log: Path, queues: str = "inference"):
        self.env, self.log, self.queues = env, log, queues
        self.proc: subprocess.Popen | None = None

    def start(self) -> WorkerProcess:
        out = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "portal.cli", "worker", "--queues", self.queues, "--loglevel", "INFO"],
            env={**os.environ, **self.env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        return self

    def pool_children(self) -> list[int]:
        try:
            text = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except FileNotFoundError:
            return []
        pids = [int(p) for p in text.split()]
        return [p for p in pids if b"portal.cli" in Path(f"/proc/{p}/cmdline").read_bytes()]  # not the reaper

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log.read_text()[-3000:]}")
            if b" ready." in self.log.read_bytes():
                return
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready:\n{self.log.read_text()[-3000:]}")

    def kill_all(self) -> None:
        """SIGKILL the whole worker: main process and pool children, as a machine crash would."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill_all()


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
