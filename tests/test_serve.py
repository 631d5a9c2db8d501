"""`medsam serve`: web and one worker per queue from one command; a signal stops every process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.workerutil import wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_with(data_dir: Path) -> dict[int, str]:
    """Every live process whose environment names this data folder: exactly the ones serve started."""
    found = {}
    marker = f"MEDSAM_DATA_DIR={data_dir}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                found[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue
    return found


def get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())
    except OSError:
        return None, None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_starts_everything_and_stops_it_all(tmp_path, data_dir, sig):
    port = free_port()
    env = {**os.environ, "MEDSAM_DATA_DIR": str(tmp_path), "MEDSAM_PORT": str(port)}
    (data_dir / "onnx").mkdir(exist_ok=True)
    log = open(tmp_path / "serve.log", "wb")
    serve = subprocess.Popen(
        [sys.executable, "-m", "portal.cli", "serve"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(lambda: get(f"http://127.0.0.1:{port}/healthz")[0] == 200, 120, "the web server")
        ready = wait_for(lambda: get(f"http://127.0.0.1:{port}/readyz")[0] == 200, 60, "readiness")
        assert ready
        workers = wait_for(
            lambda: (
                [c for c in processes_with(tmp_path).values() if " worker --queues " in c]
                if len(processes_with(tmp_path)) >= 5
                else None
            ),
            120,
            "both workers and their pools",
        )
        queues = {c.split(" worker --queues ")[1].split()[0] for c in workers}
        assert queues == {"inference", "training"}  # a fine-tune never queues behind an encode
        os.kill(serve.pid, sig)
        serve.wait(60)
        wait_for(lambda: not processes_with(tmp_path), 30, "every child to exit")
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
        for pid in processes_with(tmp_path):
            os.kill(pid, signal.SIGKILL)
    assert serve.returncode == 0, (tmp_path / "serve.log").read_text()[-2000:]


def test_readyz_names_what_is_down(tmp_path):
    from fastapi.testclient import TestClient

    from portal.store.settings import Settings
    from portal.web.app import create_app

    settings = Settings(data_dir=tmp_path, broker_url="redis://127.0.0.1:1/0")  # nothing listens on port 1
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        response = client.get("/readyz")
    body = response.json()
    assert response.status_code == 503 and not body["ready"]
    assert {c["name"]: c["ok"] for c in body["checks"]} == {"database": True, "broker": False, "storage": True}
