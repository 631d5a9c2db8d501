"""How long a user waits for a mask, and how much the embedding cache saves.

The encoder dominates and is cached; decode is what every extra box costs. This
measures both, plus the two end-to-end paths a user actually sees: an image the
service has never encoded (miss) and one whose embedding is already on disk
after a restart (hit), for each inference backend on the bundled LiteMedSAM.

    .venv/bin/python bench/segment_latency.py [--backend onnx|torch] [--runs N] [--quick] [--json]

Wall-clock is taken with time.perf_counter around the public calls, so the
numbers include everything a caller pays (hashing, cache I/O, preprocessing,
mask upsampling), not only what the engine's own ms fields cover.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from medsam_core.cache import DirectoryEmbeddingStore, EmbeddingCache
from medsam_core.imageio import read_image
from medsam_core.models import load_model
from medsam_core.predictor import Predictor

REPO = Path(__file__).resolve().parents[1]
DEMO_BOX = [95, 255, 190, 350]
KVASIR_IMAGES = 10
CACHE_BUDGET = 1 << 30  # far above what a run writes, so eviction never enters the timings
METRICS = ("encode", "decode (cached emb)", "e2e miss (empty cache)", "e2e hit (disk cache)")


def machine() -> dict:
    """Latency on 2 shared cores is not latency on a server; rows must say where they came from."""
    import onnxruntime
    import openvino

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "openvino": openvino.__version__.split("-")[0],
        "python": platform.python_version(),
    }


def tight_box(mask_path: Path) -> list[int]:
    """The box a careful annotator would draw, so decode sees a realistic prompt."""
    ys, xs = np.nonzero(read_image(mask_path).display().any(axis=2))
    if xs.size == 0:
        raise SystemExit(f"{mask_path}: the mask is empty, so it gives no box prompt")
    return [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]


def datasets() -> dict[str, list[tuple[np.ndarray, list[int]]]]:
    """A CT slice and ten endoscopy frames: different sizes, so resize cost is represented."""
    data = Path(os.environ.get("MEDSAM_SAMPLE_DATA") or REPO.parent / "shared" / "data")
    images = sorted((data / "kvasir" / "images").glob("*.png"))[:KVASIR_IMAGES]
    if len(images) < KVASIR_IMAGES:
        raise SystemExit(
            f"need {KVASIR_IMAGES} Kvasir images under {data / 'kvasir' / 'images'}; "
            "set MEDSAM_SAMPLE_DATA to the sample-data folder"
        )
    kvasir = [(read_image(p).display(), tight_box(data / "kvasir" / "masks" / p.name)) for p in images]
    return {
        "demo": [(read_image(REPO / "demo" / "ct_abdomen.png").display(), DEMO_BOX)],
        f"kvasir x{KVASIR_IMAGES}": kvasir,
    }


def timed(fn, items, runs: int, bar: tqdm, before=None) -> list[float]:
    """One untimed warm-up first, because the first call pays allocator and kernel set-up."""
    times = []
    for i in range(runs + 1):
        item = items[(i - 1) % len(items)] if i else items[0]
        if before is not None:
            before(item)
        start = time.perf_counter()
        fn(item)
        elapsed = (time.perf_counter() - start) * 1000
        if i:
            times.append(elapsed)
        bar.update(1)
    return times


def bench_backend(model, backend: str, items, runs: int, tmp: Path, bar: tqdm) -> dict[str, list[float]]:
    onnx_dir = tmp / "onnx"
    never = Predictor(model, EmbeddingCache(store=None, memory_items=0), backend=backend, onnx_dir=onnx_dir)

    embeddings = {id(rgb): never.encode(rgb) for rgb, _ in items}
    out = {
        "encode": timed(lambda it: never.encode(it[0]), items, runs, bar),
        "decode (cached emb)": timed(lambda it: never.decode(embeddings[id(it[0])], boxes=[it[1]]), items, runs, bar),
    }

    # The miss path writes to a real store, as the service does, so a miss and a
    # hit differ only in whether the entry was there; the entry is removed
    # between runs, outside the timing, to keep every run a miss.
    miss_store = DirectoryEmbeddingStore(tmp / f"miss-{backend}", CACHE_BUDGET)
    miss = Predictor(model, EmbeddingCache(miss_store, memory_items=0), backend=backend, onnx_dir=onnx_dir)

    def forget(item):
        (miss_store.root / f"{miss.cache_key(item[0]).name}.npy").unlink(missing_ok=True)

    def miss_e2e(item):
        emb = miss.encode(item[0])
        assert not emb.cache_hit, "the miss path hit the cache"
        miss.decode(emb, boxes=[item[1]])

    out["e2e miss (empty cache)"] = timed(miss_e2e, items, runs, bar, before=forget)

    # Warm the disk store with one process-lifetime's predictor, then read it
    # through a fresh one with no memory tier: the state after a restart, where
    # the entry has to come back from disk (usually from the OS page cache).
    hit_dir = tmp / f"hit-{backend}"
    writer = Predictor(
        model,
        EmbeddingCache(DirectoryEmbeddingStore(hit_dir, CACHE_BUDGET), memory_items=16),
        backend=backend,
        onnx_dir=onnx_dir,
    )
    for rgb, _ in items:
        writer.encode(rgb)
    reader = Predictor(
        model,
        EmbeddingCache(DirectoryEmbeddingStore(hit_dir, CACHE_BUDGET), memory_items=0),
        backend=backend,
        onnx_dir=onnx_dir,
    )

    def hit_e2e(item):
        emb = reader.encode(item[0])
        assert emb.cache_hit, "the hit path missed the cache"
        reader.decode(emb, boxes=[item[1]])

    out["e2e hit (disk cache)"] = timed(hit_e2e, items, runs, bar)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backend",
        choices=("onnx", "torch"),
        action="append",
        help="measure only this backend (repeatable; default: onnx and torch)",
    )
    parser.add_argument("--runs", type=int, default=20, help="timed runs per measurement (default 20)")
    parser.add_argument("--quick", action="store_true", help="3 runs: a smoke test, not a measurement")
    parser.add_argument("--json", action="store_true", help="one JSON object per measured row")
    args = parser.parse_args(argv)
    runs = 3 if args.quick else args.runs
    if runs < 1:
        parser.error("--runs must be at least 1")
    backends = args.backend or ["onnx", "torch"]

    info = machine()
    data = datasets()
    model = load_model("lite")
    rows = []
    total = len(backends) * len(data) * len(METRICS) * (runs + 1)
    with (
        tempfile.TemporaryDirectory(prefix="medsam-bench-") as tmp,
        tqdm(total=total, file=sys.stderr, unit="run", desc="benchmark") as bar,
    ):
        for backend in backends:
            for name, items in data.items():
                bar.set_postfix_str(f"{backend} / {name}")
                for metric, times in bench_backend(model, backend, items, runs, Path(tmp), bar).items():
                    rows.append(
                        {
                            "model": "lite",
                            "backend": backend,
                            "images": name,
                            "metric": metric,
                            "runs": len(times),
                            "median_ms": round(float(np.median(times)), 2),
                            "p95_ms": round(float(np.percentile(times, 95)), 2),
                        }
                    )

    if args.json:
        for row in rows:
            print(json.dumps({**row, "machine": info}))
        return 0
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, torch threads {info['torch_threads']}, "
        f"torch {info['torch']}, onnxruntime {info['onnxruntime']}, python {info['python']}"
    )
    print(f"model: lite; {runs} timed runs per row after 1 warm-up; p95 is numpy's linear-interpolated percentile")
    print()
    header = f"{'backend':<8} {'images':<10} {'metric':<24} {'runs':>4} {'median ms':>10} {'p95 ms':>10}"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['backend']:<8} {row['images']:<10} {row['metric']:<24} {row['runs']:>4} "
            f"{row['median_ms']:>10.1f} {row['p95_ms']:>10.1f}"
        )
    print()
    for backend in backends:
        for name in data:
            med = {r["metric"]: r["median_ms"] for r in rows if r["backend"] == backend and r["images"] == name}
            miss, hit = med["e2e miss (empty cache)"], med["e2e hit (disk cache)"]
            print(
                f"{backend} / {name}: a cache hit saves {miss - hit:.1f} ms median "
                f"({miss / hit:.1f}x faster end to end)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
