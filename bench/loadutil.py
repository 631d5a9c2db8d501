"""Shared pieces of bench/load.py: an authenticated client, tallies, samplers and checks.

Kept apart so load.py reads as its phases. The server start, the demo box and the
percentile come from bench/portal_latency.py, so both benches start a portal the same way.
"""

from __future__ import annotations

import io
import threading
import time
from collections import Counter

import httpx
import numpy as np
from PIL import Image

from portal_latency import BOX, DEMO, pct, start_server  # noqa: F401 - re-exported for load.py

HEALTH_EVERY_S = 0.5
RSS_EVERY_S = 0.2


class Api:
    """One logged-in client (its own connection pool): a bench thread is one user at one browser."""

    def __init__(self, url: str, user: str, password: str, timeout: float = 300):
        self.url = url
        self.client = httpx.Client(base_url=url + "/api/v1", timeout=timeout)
        r = self.client.post("/auth/token", data={"username": user, "password": password})
        if r.status_code != 200:
            raise SystemExit(f"cannot log in as {user} at {url}: {r.status_code} {r.text[:200]}")
        self.client.headers["Authorization"] = "Bearer " + r.json()["access_token"]

    def twin(self) -> Api:
        """Another connection for the same account, without logging in again."""
        other = object.__new__(Api)
        other.url = self.url
        other.client = httpx.Client(
            base_url=self.client.base_url, headers=self.client.headers, timeout=self.client.timeout
        )
        return other

    def ok(self, method: str, path: str, **kwargs) -> dict:
        """For setup steps: a refusal there means the figures would be meaningless, so stop."""
        r = self.client.request(method, path, **kwargs)
        if r.status_code >= 300:
            raise SystemExit(f"{method} {path} was refused: {r.status_code} {r.text[:300]}")
        return r.json()

    def close(self) -> None:
        self.client.close()


class Tally:
    """Latencies of the answered calls and errors by kind, shared by the client threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ms: list[float] = []
        self.errors: Counter[str] = Counter()
        self.examples: dict[str, str] = {}
        self.started = time.monotonic()
        self.wall = 0.0

    def timed(self, api: Api, method: str, path: str, kind: str, **kwargs) -> httpx.Response | None:
        """The response when it is a 2xx, else None with the error counted under `kind`."""
        t = time.perf_counter()
        try:
            r = api.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            self.error(f"{kind}: {type(exc).__name__}", str(exc))
            return None
        ms = (time.perf_counter() - t) * 1000
        if r.status_code >= 300:
            self.error(f"{kind}: HTTP {r.status_code}", r.text)
            return None
        with self.lock:
            self.ms.append(ms)
        return r

    def error(self, kind: str, example: str) -> None:
        with self.lock:
            self.errors[kind] += 1
            self.examples.setdefault(kind, example[:200])

    def stop(self) -> None:
        self.wall = time.monotonic() - self.started

    def summary(self) -> dict:
        n = len(self.ms)
        return {
            "requests": n,
            "seconds": round(self.wall, 1),
            "per_s": round(n / self.wall, 1) if self.wall else None,
            "p50_ms": round(pct(self.ms, 50), 1),
            "p95_ms": round(pct(self.ms, 95), 1),
            "p99_ms": round(pct(self.ms, 99), 1),
            "errors": sum(self.errors.values()),
            "errors_by_kind": dict(self.errors),
            "error_examples": self.examples,
        }


def errors_text(summary: dict) -> str:
    if not summary["errors"]:
        return "0"
    kinds = ", ".join(f"{k} x{n}" for k, n in summary["errors_by_kind"].items())
    first = next(iter(summary["error_examples"].values()))
    return f"{summary['errors']} ({kinds}; first: {first[:120]!r})"


class Sampler:
    """Calls `probe` every `every` seconds on its own thread until stopped."""

    def __init__(self, every: float, probe):
        self.every, self.probe = every, probe
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.monotonic()
            self.probe()
            self._stop.wait(max(0.0, self.every - (time.monotonic() - t)))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class HealthProbe:
    """/healthz latency while the load runs: what a load balancer's check would see."""

    def __init__(self, url: str):
        self.client = httpx.Client(base_url=url, timeout=30)
        self.tally = Tally()
        self.sampler = Sampler(HEALTH_EVERY_S, lambda: self.tally.timed(self, "GET", "/healthz", "/healthz"))

    def __enter__(self) -> HealthProbe:
        self.sampler.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.sampler.__exit__()
        self.tally.stop()
        self.client.close()

    def line(self) -> str:
        s = self.tally.summary()
        return (
            f"/healthz during load: {s['requests']} samples, p50 {s['p50_ms']:.1f} ms, p95 {s['p95_ms']:.1f} ms, "
            f"max {max(self.tally.ms, default=float('nan')):.1f} ms, errors {errors_text(s)}"
        )


def rss_mb(pid: int | None, field: str = "VmRSS") -> float | None:
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Memory:
    """The web process's resident memory before, at peak and after a phase.

    Peak is sampled every 0.2 s; where the kernel lets us reset the high-water mark
    (``/proc/PID/clear_refs``, same user), VmHWM also catches spikes between samples.
    """

    def __init__(self, pid: int | None):
        self.pid = pid
        self.before = self.peak = self.after = None
        self._exact = False
        self._sampler = Sampler(RSS_EVERY_S, self._sample)

    def _sample(self) -> None:
        now = rss_mb(self.pid)
        if now is not None:
            self.peak = max(self.peak or 0.0, now)

    def __enter__(self) -> Memory:
        self.before = rss_mb(self.pid)
        if self.pid is not None:
            try:
                with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                    f.write("5")
                self._exact = True
            except OSError:
                pass
        self._sampler.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._sampler.__exit__()
        if self._exact:
            hwm = rss_mb(self.pid, "VmHWM")
            if hwm is not None:
                self.peak = max(self.peak or 0.0, hwm)

    def settle(self, seconds: float) -> None:
        time.sleep(seconds)
        self.after = rss_mb(self.pid)

    def as_dict(self) -> dict:
        out = {"before_mb": self.before, "peak_mb": self.peak, "after_mb": self.after}
        if self.before is not None and self.after is not None:
            out["after_minus_before_mb"] = self.after - self.before
        return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in out.items()}

    def line(self) -> str:
        if self.pid is None:
            return "web RSS: not measured (give --pid, or use --start)"
        d = self.as_dict()
        if None in (d["before_mb"], d["peak_mb"], d["after_mb"]):
            return f"web RSS (pid {self.pid}): could not be read from /proc ({d})"
        return (
            f"web RSS (pid {self.pid}): before {d['before_mb']:.0f} MB, peak {d['peak_mb']:.0f} MB, "
            f"after {d['after_mb']:.0f} MB ({d['after_minus_before_mb']:+.0f} MB)"
        )


def jitter(box: list[int], rng: np.random.Generator, width: int, height: int, by: int = 4) -> list[int]:
    """A slightly different box each time, as a hand would drag it, kept inside the image."""
    x0, y0, x1, y1 = (int(v) + int(d) for v, d in zip(box, rng.integers(-by, by + 1, 4), strict=False))
    return [max(0, x0), max(0, y0), min(width - 1, x1), min(height - 1, y1)]


def tile_boxes(width: int, height: int, n: int = 32, cols: int = 8) -> list[list[int]]:
    """n distinct boxes tiling the image (cols across), each a few pixels inside its cell."""
    rows = -(-n // cols)
    cw, ch = width / cols, height / rows
    return [
        [int(c * cw) + 2, int(r * ch) + 2, int((c + 1) * cw) - 3, int((r + 1) * ch) - 3]
        for r in range(rows)
        for c in range(cols)
    ][:n]


SMALL = 160  # side of the generated uploads


def small_png(seed: int) -> bytes:
    """A crop of the demo slice at a seeded place, with a seeded speckle: never the same bytes twice,
    so every upload is a new image and its first prompt a real encode."""
    rng = np.random.default_rng(seed)
    demo = np.asarray(Image.open(DEMO).convert("L"), dtype=np.int16)
    y, x = rng.integers(0, demo.shape[0] - SMALL), rng.integers(0, demo.shape[1] - SMALL)
    crop = demo[y : y + SMALL, x : x + SMALL] + rng.integers(-3, 4, (SMALL, SMALL))
    buf = io.BytesIO()
    Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def verify_blobs(storage_url: str) -> tuple[int, list[str]]:
    """Read every blob through the store's own verifying reader: (how many, those that failed).

    The verdict is the store's (SHA-256 of the bytes against the name), reached by streaming,
    so a large checkpoint is never held whole.
    """
    from portal.store.blobs import open_blob_store

    store = open_blob_store(storage_url)
    count, bad = 0, []
    for info in store.iter_blobs():
        count += 1
        try:
            with store.open(info.digest) as f:
                while f.read(1 << 20):
                    pass
        except Exception as exc:  # noqa: BLE001 - every failure is a finding, reported by name
            bad.append(f"{info.digest[:12]}: {type(exc).__name__}: {exc}"[:200])
    return count, bad
