"""Load on the portal: many people prompting at once, a burst of large prompts, and a soak.

Against a running `medsam serve` (``--url``, ``--user``, ``--password``; ``--pid`` of the web
process for its memory), or, with ``--start``, one started here in a temporary data folder
(with a user made by `medsam user add`) and stopped afterwards. In order:

1. setup: a project (reused by name), the demo CT slice uploaded, one prompt so its
   embedding is cached;
2. for each ``--clients`` level, that many clients re-prompt cached boxes (a few pixels of
   jitter) for ``--seconds``: requests/s, p50/p95/p99, errors by kind, /healthz latency
   sampled every 0.5 s during the load, and the web process's resident memory before, at
   peak and after;
3. ``--burst`` (on by default): ``--burst-prompts`` prompts of 32 boxes tiling the image,
   and resident memory before, at peak and a few seconds after (target: after within 200 MB
   of before);
4. ``--minutes M``: a soak mixing prompts, annotation saves, uploads of generated PNGs and one
   decoder fine-tune (on annotations an annotator submitted and the admin approved); at the
   end every revision saved is downloaded and compared, and every blob is read back through
   the store's verifying reader (needs --start or --storage-url).

The web server runs inside the `medsam serve` process (uvicorn in its main thread; the
workers are children), so with --start its pid is the one measured. Exit status 1 on any
error, lost revision, bad blob or failed fine-tune; the figures themselves are reported,
never judged against a time. The last line is the same figures as JSON.

    .venv/bin/python bench/load.py --start --clients 10 30 --seconds 20
    .venv/bin/python bench/load.py --start --no-burst --clients 5 --seconds 10 --minutes 5
    .venv/bin/python bench/load.py --url http://127.0.0.1:7860 --user admin --password ... --pid 1234
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from loadutil import BOX, DEMO, Api, HealthProbe, Memory, Tally, errors_text, jitter, start_server, tile_boxes

ANNOTATOR = "bench-annotator"


def setup(admin: Api, name: str) -> dict:
    """The demo slice in a project, with its embedding cached so the load measures decodes only."""
    found = next((p for p in admin.ok("GET", "/projects") if p["name"] == name), None)
    project = found or admin.ok("POST", "/projects", json={"name": name, "modality": "CT", "labels": ["lesion"]})
    image = admin.ok(
        "POST", f"/projects/{project['id']}/images", files={"file": ("ct_abdomen.png", DEMO.read_bytes(), "image/png")}
    )
    t = time.perf_counter()
    first = admin.ok("POST", f"/images/{image['id']}/segment", json={"boxes": [BOX]})
    print(
        f"setup: project '{name}' (id {project['id']}{', reused' if found else ''}), image {image['id']} "
        f"{image['width']}x{image['height']}; first prompt {(time.perf_counter() - t) * 1000:.0f} ms "
        f"(encode wait {first['timing_ms']['encode_wait']:.0f} ms)",
        flush=True,
    )
    return {
        "pid": project["id"],
        "iid": image["id"],
        "width": image["width"],
        "height": image["height"],
        "label": project["labels"][0],
        "created": found is None,
    }


def run_clients(admin: Api, clients: int, body) -> None:
    """`clients` threads, each its own connection, calling `body(api, n)` until it returns."""

    def one(n: int) -> None:
        api = admin.twin()
        try:
            body(api, n)
        finally:
            api.close()

    threads = [threading.Thread(target=one, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def load_level(admin: Api, ctx: dict, clients: int, seconds: float, web_pid: int | None, settle: float) -> dict:
    path, w, h = f"/images/{ctx['iid']}/segment", ctx["width"], ctx["height"]

    def body(api: Api, n: int) -> None:
        rng = np.random.default_rng(n)
        while time.monotonic() < stop:
            tally.timed(api, "POST", path, "segment", json={"boxes": [jitter(BOX, rng, w, h)]})

    with Memory(web_pid) as mem, HealthProbe(admin.url) as health:
        tally = Tally()
        stop = time.monotonic() + seconds
        run_clients(admin, clients, body)
        tally.stop()
    mem.settle(settle)
    s = tally.summary()
    print(
        f"{clients} clients x {seconds:.0f} s: {s['requests']} prompts, {s['per_s']} prompts/s; latency "
        f"p50 {s['p50_ms']:.0f} ms, p95 {s['p95_ms']:.0f} ms, p99 {s['p99_ms']:.0f} ms; errors {errors_text(s)}"
    )
    print("  " + health.line())
    print("  " + mem.line(), flush=True)
    return {"clients": clients, **s, "healthz": health.tally.summary(), "rss": mem.as_dict()}


def burst(admin: Api, ctx: dict, prompts: int, boxes: int, clients: int, web_pid: int | None, settle: float) -> dict:
    """Large prompts back to back: what grew the web process by gigabytes before the caps."""
    tiles = tile_boxes(ctx["width"], ctx["height"], boxes)
    path, left, lock = f"/images/{ctx['iid']}/segment", [prompts], threading.Lock()

    def body(api: Api, n: int) -> None:
        while True:
            with lock:
                if left[0] <= 0:
                    return
                left[0] -= 1
            tally.timed(api, "POST", path, "segment", json={"boxes": tiles})

    with Memory(web_pid) as mem:
        tally = Tally()
        run_clients(admin, clients, body)
        tally.stop()
    mem.settle(settle)
    s, m = tally.summary(), mem.as_dict()
    delta = m.get("after_minus_before_mb")
    verdict = "" if delta is None else f"; target after within 200 MB of before: {'met' if delta <= 200 else 'NOT met'}"
    print(
        f"burst: {prompts} prompts of {len(tiles)} boxes from {clients} clients in {s['seconds']} s: "
        f"p50 {s['p50_ms']:.0f} ms, p95 {s['p95_ms']:.0f} ms; errors {errors_text(s)}"
    )
    print(f"  {mem.line()} after {settle:.0f} s{verdict}", flush=True)
    return {
        "prompts": prompts,
        "boxes": len(tiles),
        "clients": clients,
        **s,
        "rss": m,
        "within_200_mb": None if delta is None else delta <= 200,
    }


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--start", action="store_true", help="start a portal in a temporary data folder and stop it after")
    p.add_argument("--url", help="a running portal, e.g. http://127.0.0.1:7860")
    p.add_argument("--user", default="bench", help="an admin account (with --start: created as 'bench')")
    p.add_argument(
        "--password",
        default=os.environ.get("MEDSAM_BENCH_PASSWORD"),
        help="its password (or MEDSAM_BENCH_PASSWORD; asked for when missing)",
    )
    p.add_argument("--pid", type=int, help="the web process (`medsam serve`) to watch, with --url")
    p.add_argument("--project", default="bench-load", help="project name, created or reused")
    p.add_argument("--clients", type=int, nargs="+", default=[10], help="client levels, run in turn")
    p.add_argument("--seconds", type=float, default=30, help="length of each level")
    p.add_argument("--burst", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--burst-prompts", type=int, default=20)
    p.add_argument("--burst-boxes", type=int, default=32)
    p.add_argument("--burst-clients", type=int, default=2)
    p.add_argument("--settle", type=float, default=5, help="seconds to wait before the 'after' memory figure")
    p.add_argument("--minutes", type=float, default=0, help="also soak for this long")
    p.add_argument("--soak-clients", type=int, default=2, help="prompting clients during the soak")
    p.add_argument("--upload-every", type=float, default=2.0, help="seconds between soak uploads")
    p.add_argument("--annotator", help="with --url: an annotator for the soak's saves (nobody approves their own)")
    p.add_argument("--annotator-password")
    p.add_argument(
        "--train-images",
        type=int,
        help="images labelled and approved for the fine-tune: the "
        "server's minimum plus one for the frozen validation set "
        "(default 3 with --start, where the minimum is set to 2; else 5)",
    )
    p.add_argument("--job-wait", type=float, default=600, help="seconds to wait for the fine-tune after the soak")
    p.add_argument("--storage-url", help="with --url: the blob store to verify (a folder or s3://...)")
    p.add_argument("--keep", action="store_true", help="with --url: keep the project this run created")
    args = p.parse_args()
    if bool(args.start) == bool(args.url):
        p.error("give exactly one of --start and --url")
    return args


def start(folder: Path, password: str) -> tuple[str, subprocess.Popen, str]:
    """A fresh portal, an annotator for the soak, and the settings a two-image fine-tune needs."""
    os.environ.setdefault("MEDSAM_MIN_TRAINING_IMAGES", "2")
    url, proc = start_server(folder, password)  # bench/portal_latency.py: admin 'bench', serve.log
    env = {**os.environ, "MEDSAM_DATA_DIR": str(folder)}
    subprocess.run(
        [sys.executable, "-m", "portal.cli", "user", "add", ANNOTATOR, "--role", "annotator", "--password-stdin"],
        input=password + "\n",
        text=True,
        env=env,
        check=True,
        capture_output=True,
    )
    print(f"started medsam serve (web pid {proc.pid}) in {folder}; {os.cpu_count()} cores", flush=True)
    return url, proc, str(folder / "blobs")


def stop(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGTERM)  # serve stops its worker groups itself
    try:
        proc.wait(90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main() -> int:
    args = parse_args()
    proc = tmp = None
    if args.start:
        password, args.user = secrets.token_urlsafe(12), "bench"
        tmp = tempfile.TemporaryDirectory(prefix="medsam-load-")
        url, proc, storage_url = start(Path(tmp.name), password)
        web_pid, annotator = proc.pid, (ANNOTATOR, password)
        train_images = args.train_images or 3
    else:
        password = args.password or getpass.getpass(f"password for {args.user}: ")
        url, storage_url, web_pid = args.url.rstrip("/"), args.storage_url, args.pid
        annotator = (args.annotator, args.annotator_password) if args.annotator else None
        train_images = args.train_images or 5
    report: dict = {"bench": "load", "url": url, "cores": os.cpu_count(), "levels": []}
    failed = False
    try:
        admin = Api(url, args.user, password)
        ctx = setup(admin, args.project)
        for clients in args.clients:
            level = load_level(admin, ctx, clients, args.seconds, web_pid, args.settle)
            report["levels"].append(level)
            failed |= level["errors"] > 0
        if args.burst:
            report["burst"] = burst(
                admin, ctx, args.burst_prompts, args.burst_boxes, args.burst_clients, web_pid, args.settle
            )
            failed |= report["burst"]["errors"] > 0
        if args.minutes > 0:
            from load_soak import soak  # bench/load_soak.py

            report["soak"] = soak(admin, annotator, ctx, args, web_pid, storage_url, train_images)
            failed |= not report["soak"]["ok"]
        if ctx["created"] and args.url and not args.keep:
            admin.ok("DELETE", f"/projects/{ctx['pid']}")
        admin.close()
    finally:
        if proc is not None:
            stop(proc)
            tmp.cleanup()
    print(json.dumps(report, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
