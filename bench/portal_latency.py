"""REST latency of the portal: what a user feels per click, alone and under load.

Against a running `medsam serve` (``--url`` and a login), or one started here
in a fresh data folder (the default). It measures:
* the re-prompt latency on a cached image (p50/p95 over ``--prompts``), next to the
  server's own decode time for the same prompts;
* the first prompt on a new image (the worker's encode included);
* ``--clients`` concurrent clients prompting for ``--seconds`` (throughput, p95, errors);
* with ``--browser``, also in Debian's chromium (Playwright) on the Segment demo page: from
  the mouse-up that ends a box drag to the overlay image being drawn, over ``--browser-prompts``
  (timed inside the page, so Playwright's own round trips are not counted).

    .venv/bin/python bench/portal_latency.py --browser        # starts its own server
    .venv/bin/python bench/portal_latency.py --url http://127.0.0.1:7860 --user admin --password-stdin
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo" / "ct_abdomen.png"
BOX = [95, 255, 190, 350]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def start_server(folder: Path, password: str) -> tuple[str, subprocess.Popen]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MEDSAM_DATA_DIR": str(folder), "MEDSAM_PORT": str(port)}
    medsam = [sys.executable, "-m", "portal.cli"]
    subprocess.run(
        [*medsam, "user", "add", "bench", "--role", "admin", "--password-stdin"],
        input=password + "\n",
        text=True,
        env=env,
        check=True,
        capture_output=True,
    )
    proc = subprocess.Popen(
        [*medsam, "serve"],
        env=env,
        stdout=open(folder / "serve.log", "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return url, proc
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the server did not start: {(folder / 'serve.log').read_text()[-2000:]}")


def new_image(seed: int) -> bytes:
    """The demo slice, shifted by a seed: different pixels, so a real encode (cache miss)."""
    arr = np.roll(np.asarray(Image.open(DEMO).convert("L")), seed, axis=1)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="a running portal; default: start one in a temporary data folder")
    p.add_argument("--user", default="bench")
    p.add_argument("--password-stdin", action="store_true")
    p.add_argument("--prompts", type=int, default=50)
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--browser", action="store_true", help="also measure mouse-up to overlay in chromium")
    p.add_argument("--browser-prompts", type=int, default=10)
    args = p.parse_args()
    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else "bench-password-1"
    proc, tmp = None, None
    if args.url:
        url = args.url.rstrip("/")
    else:
        tmp = tempfile.TemporaryDirectory(prefix="portal-bench-")
        url, proc = start_server(Path(tmp.name), password)
    try:
        code = run(url, args, password)
        if args.browser:
            from portal_browser import browser_latency  # bench/portal_browser.py

            browser_latency(url, args.user, password, args.browser_prompts)
        return code
    finally:
        if proc is not None:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(60)
            tmp.cleanup()


def run(url: str, args, password: str) -> int:
    client = httpx.Client(base_url=url + "/api/v1", timeout=300)
    token = client.post("/auth/token", data={"username": args.user, "password": password}).raise_for_status()
    client.headers["Authorization"] = "Bearer " + token.json()["access_token"]
    pid = (
        client.post("/projects", json={"name": f"bench-{int(time.time())}", "modality": "CT", "labels": ["lesion"]})
        .raise_for_status()
        .json()["id"]
    )

    def upload(seed: int) -> int:
        r = client.post(f"/projects/{pid}/images", files={"file": (f"b{seed}.png", new_image(seed), "image/png")})
        return r.raise_for_status().json()["id"]

    def prompt(c: httpx.Client, iid: int, k: int) -> tuple[float, dict]:
        box = [BOX[0] + k % 7, BOX[1], BOX[2], BOX[3] - k % 5]
        t = time.perf_counter()
        r = c.post(f"/images/{iid}/segment", json={"boxes": [box]})
        elapsed = (time.perf_counter() - t) * 1000
        return elapsed, r.raise_for_status().json()

    iid = upload(0)
    first_ms, first = prompt(client, iid, 0)
    print(
        f"first prompt on a new image: {first_ms:.0f} ms (encode wait {first['timing_ms']['encode_wait']:.0f} ms, "
        f"decode {first['timing_ms']['decode']:.0f} ms)"
    )
    for k in range(3):  # warm the connection and the server's pixel cache
        prompt(client, iid, k)
    api, decode = [], []
    for k in range(args.prompts):
        ms, body = prompt(client, iid, k)
        api.append(ms)
        decode.append(body["timing_ms"]["decode"])
    print(
        f"cached re-prompt over {args.prompts}: p50 {pct(api, 50):.1f} ms, p95 {pct(api, 95):.1f} ms through the "
        f"API; server decode p50 {pct(decode, 50):.1f} ms, p95 {pct(decode, 95):.1f} ms"
    )
    second_ms, second = prompt(client, upload(1), 0)
    print(
        f"first prompt on another new image: {second_ms:.0f} ms (encode wait "
        f"{second['timing_ms']['encode_wait']:.0f} ms)"
    )

    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = time.monotonic() + args.seconds

    def worker(n: int) -> None:
        with httpx.Client(base_url=client.base_url, headers=client.headers, timeout=120) as c:
            k = 0
            while time.monotonic() < stop:
                try:
                    ms, _ = prompt(c, iid, n * 1000 + k)
                    with lock:
                        lat.append(ms)
                except Exception as exc:  # noqa: BLE001 - counted, not fatal
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}"[:200])
                k += 1

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    print(
        f"{args.clients} clients for {args.seconds:.0f} s: {len(lat)} prompts, {len(lat) / wall:.1f} prompts/s, "
        f"p50 {pct(lat, 50):.0f} ms, p95 {pct(lat, 95):.0f} ms, errors {len(errors)}"
        + (f" (first: {errors[0]})" if errors else "")
    )
    client.delete(f"/projects/{pid}")
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
