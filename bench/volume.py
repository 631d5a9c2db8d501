"""What a volume costs: encoding every slice (precompute), then propagating one object through cached slices.

    .venv/bin/python bench/volume.py [--backend auto|onnx|openvino|torch] [--slices N] [--reps N] [--json]

Precompute encodes a whole BRATS volume (155 slices of 240 x 240) into an empty
cache, the way a worker does before anyone draws a box: slices per second, and
median/p95 seconds per slice. Propagation then runs one object over a 75-slice
range around the tumour whose slices are all cached, so it measures decoding and
box bookkeeping only: median/p95 of the total seconds over a few repetitions.
Targets (issue 12): >= 3 slices/s and <= 3 s. The machine's load average is
printed with the figures, because the 2 cores may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from medsam_core.backends import BACKENDS
from medsam_core.cache import DirectoryEmbeddingStore, EmbeddingCache
from medsam_core.models import load_model
from medsam_core.predictor import Predictor
from medsam_core.propagation import SliceEncoder, propagate
from medsam_core.volume import labels_onto, read_volume
from medsam_core.volume_evaluation import prompt_for
from segment_latency import machine  # bench/ is on sys.path when this file runs as a script

REPO = Path(__file__).resolve().parents[1]
CASE = "brats_2013_pat0005_1"
RANGE = 75
CACHE_BUDGET = 1 << 32


def brats() -> tuple[Path, Path]:
    data = Path(os.environ.get("MEDSAM_SAMPLE_DATA") or REPO.parent / "shared" / "data")
    image, labels = (data / "volumes" / "brats" / sub / f"{CASE}.nii.gz" for sub in ("images", "labels"))
    if not image.is_file() or not labels.is_file():
        raise SystemExit(f"need {image} and {labels}; set MEDSAM_SAMPLE_DATA to the sample-data folder")
    return image, labels


def stats(values: list[float]) -> dict[str, float]:
    return {"median": float(np.median(values)), "p95": float(np.percentile(values, 95))}


def precompute(predictor: Predictor, encoder: SliceEncoder, zs: list[int]) -> dict[str, float]:
    """Whole-volume encode through ``SliceEncoder.prefetch`` (batched where the predictor can)."""
    per_slice = []
    start = time.perf_counter()
    if hasattr(predictor, "encode_many"):
        encoder.prefetch(zs)
        per_slice = [(time.perf_counter() - start) / len(zs)]  # batches give no per-slice time
    else:
        for z in zs:
            t = time.perf_counter()
            encoder(z)
            per_slice.append(time.perf_counter() - t)
    total = time.perf_counter() - start
    s = stats(per_slice)
    return {"slices": len(zs), "seconds": total, "slices_per_s": len(zs) / total, "per_slice_median_s": s["median"]} | {
        "per_slice_p95_s": s["p95"]
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=BACKENDS, default="auto", help="inference backend (auto)")
    parser.add_argument("--slices", type=int, default=None, help="encode only the first N slices (default all)")
    parser.add_argument("--reps", type=int, default=5, help="propagation repetitions (default 5)")
    parser.add_argument("--json", action="store_true", help="one JSON object")
    args = parser.parse_args(argv)
    image_path, label_path = brats()
    import nibabel as nib

    volume = read_volume(image_path)
    prompt = prompt_for(labels_onto(volume, nib.load(label_path)) > 0, 1)
    assert prompt is not None
    model = load_model("lite", device="cpu")
    with tempfile.TemporaryDirectory(prefix="medsam-bench-volume-") as tmp:
        onnx_dir = Path(tmp) / "onnx"
        warm = Predictor(model, EmbeddingCache(None, memory_items=0), backend=args.backend, onnx_dir=onnx_dir)
        warm.decode(warm.encode(volume.slice_image(0).display()), boxes=[[0, 0, 10, 10]])  # export, first-call set-up
        cache = EmbeddingCache(DirectoryEmbeddingStore(Path(tmp) / "emb", CACHE_BUDGET), memory_items=0)
        predictor = Predictor(model, cache, backend=args.backend, onnx_dir=onnx_dir)
        encoder = SliceEncoder(predictor, lambda z: volume.slice_image(z).display())
        load_before = os.getloadavg()
        zs = list(range(volume.shape[0]))[: args.slices]
        pre = precompute(predictor, encoder, zs)
        z0 = max(0, prompt.key_slice - RANGE // 2)
        z_range = (z0, z0 + RANGE - 1)
        encoder.prefetch(list(range(z_range[0], z_range[1] + 1)))
        rows = {}
        for name in ("cvpr24", "refined"):
            totals = []
            for _ in range(args.reps):
                t = time.perf_counter()
                result = propagate(
                    predictor, encoder, volume.shape[0], prompt.key_slice, prompt.box, z_range, scheme=name
                )
                totals.append(time.perf_counter() - t)
            rows[name] = {"slices": len(result.slices), **stats(totals)}
        load_after = os.getloadavg()
    out = {
        "machine": machine(),
        "backend": predictor.backend.name,
        "batched": hasattr(predictor, "encode_many"),
        "precompute": pre,
        "propagate_75": rows,
        "z_range": z_range,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
    }
    if args.json:
        print(json.dumps(out))
        return 0
    info = out["machine"]
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, onnxruntime {info['onnxruntime']}, "
        f"openvino {info['openvino']}, torch {info['torch']}"
    )
    print(f"load average (1/5/15 min) before {load_before}, after {load_after}")
    how = "batched" if out["batched"] else "one slice at a time"
    print(
        f"precompute ({predictor.backend.name}, {how}): {pre['slices']} "
        f"slices in {pre['seconds']:.1f} s = {pre['slices_per_s']:.2f} slices/s; per slice median "
        f"{pre['per_slice_median_s']:.2f} s, p95 {pre['per_slice_p95_s']:.2f} s (target >= 3 slices/s)"
    )
    for name, row in rows.items():
        print(
            f"propagate one object, {name}, slices {z_range[0]}-{z_range[1]} cached ({row['slices']} decoded): "
            f"median {row['median']:.2f} s, p95 {row['p95']:.2f} s over {args.reps} runs (target <= 3 s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
