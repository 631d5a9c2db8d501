"""Encoder speed and accuracy: ONNX Runtime fp32 at batch 1/2/4/8, int8 quantised encoders
(dynamic, and static QDQ per-channel calibrated on Kvasir/BUSI/BRATS images) and OpenVINO (the
``openvino`` backend: bf16 where the CPU has it, two streams) against the fp32 PyTorch reference:
per-image Dice of the masks from GT boxes on the shared Kvasir and BUSI sets.

    PYTHONPATH=. .venv/bin/python bench/encoder.py [--images 30] [--slices 16] [--quant dynamic static openvino]

Prints medians and p95s per slice (BRATS slices, displayed as MedicalImage.display does) with the
load average, since the development machine is shared.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from medsam_core.backends import EXPORT_VERSION, OnnxBackend
from medsam_core.cache import EmbeddingCache
from medsam_core.imageio import read_image
from medsam_core.metrics import dice
from medsam_core.models import load_model
from medsam_core.openvino_backend import OpenVinoBackend
from medsam_core.predictor import Embedding, Predictor

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def load() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def timings(sess: ort.InferenceSession, images: np.ndarray, batch: int, repeats: int) -> list[float]:
    """Milliseconds per slice, one figure per batch call."""
    out = []
    for _ in range(repeats):
        for lo in range(0, len(images) - batch + 1, batch):
            start = time.perf_counter()
            sess.run(None, {"image": images[lo : lo + batch]})
            out.append((time.perf_counter() - start) * 1000 / batch)
    return out


def summary(values: list[float]) -> str:
    return f"median {np.median(values):.0f} ms, p95 {np.percentile(values, 95):.0f} ms (n={len(values)})"


def pairs(name: str, n: int) -> list[tuple[np.ndarray, list[int]]]:
    out = []
    for image in sorted((DATA / name / "images").glob("*.png"))[:n]:
        mask = read_image(DATA / name / "masks" / image.name).display()[..., 0] > 127
        ys, xs = np.nonzero(mask)
        out.append((read_image(image).display(), [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]))
    return out


class Calibration:
    """onnxruntime.quantization's CalibrationDataReader over preprocessed images."""

    def __init__(self, tensors: list[np.ndarray]):
        self.items = iter(tensors)

    def get_next(self) -> dict[str, np.ndarray] | None:
        item = next(self.items, None)
        return None if item is None else {"image": item}


def quantise(fp32: Path, kind: str, calibration: list[np.ndarray], folder: Path) -> Path:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = folder / "prepared.onnx"
    if not prepared.exists():
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    out = folder / f"encoder-{kind}.onnx"
    if kind == "dynamic":
        quantize_dynamic(str(prepared), str(out), weight_type=QuantType.QInt8, per_channel=True)
    else:
        quantize_static(
            str(prepared),
            str(out),
            Calibration(calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    return out


def encoder_runner(kind: str, fp32: Path, model, calibration: list, args: argparse.Namespace) -> Callable:
    """(B, 3, S, S) -> (B, 256, 64, 64) for one of the encoders compared."""
    if kind == "openvino":
        backend = OpenVinoBackend(model, args.work / "onnx")
        print(f"openvino precision {backend.precision}", flush=True)
        return lambda x: backend.encode_batch(torch.from_numpy(x))
    sess = session(fp32 if kind == "fp32" else quantise(fp32, kind, calibration, args.work), args.threads)
    return lambda x: np.concatenate([sess.run(None, {"image": x[i : i + 1]})[0] for i in range(len(x))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=30, help="Kvasir and BUSI images each for the Dice comparison")
    parser.add_argument("--slices", type=int, default=16, help="BRATS slices for the timings")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 2, 4, 8])
    parser.add_argument("--threads", type=int, default=2)
    kinds = ["dynamic", "static", "openvino"]
    parser.add_argument("--quant", nargs="*", default=kinds, choices=kinds, help="encoders to compare with fp32")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "medsam-bench-encoder")
    args = parser.parse_args()
    model = load_model("lite", device="cpu")
    pre = model.family.preprocessor
    onnx_p = Predictor(model, EmbeddingCache(None, memory_items=0), backend="onnx", onnx_dir=args.work / "onnx")
    assert isinstance(onnx_p.backend, OnnxBackend)
    fp32_path = args.work / "onnx" / f"lite-{model.model_digest[:16]}-v{EXPORT_VERSION}" / "encoder.onnx"
    volume = read_image(DATA / "volumes" / "brats" / "images" / "brats_2013_pat0005_1.nii.gz")
    mid = volume.num_slices // 2
    zs = range(mid - args.slices // 2, mid - args.slices // 2 + args.slices)
    slices = np.concatenate([pre.to_tensor(volume.display(z)).numpy() for z in zs])
    fp32 = session(fp32_path, args.threads)
    fp32.run(None, {"image": slices[:1]})  # warm-up
    for batch in args.batches:
        per = timings(fp32, slices, batch, args.repeats)
        print(f"onnx fp32 batch {batch}: {summary(per)}  [load {load()}]", flush=True)
    sets = pairs("kvasir", args.images) + pairs("busi", args.images)
    few = min(8, args.images)
    calibration = [pre.to_tensor(rgb).numpy() for rgb, _ in sets[:few] + sets[args.images : args.images + few]]
    calibration += [slices[i : i + 1] for i in range(0, len(slices), max(1, len(slices) // 4))][:4]
    reference = Predictor(model, EmbeddingCache(None, memory_items=0), backend="torch")
    ref_masks = [reference.decode(reference.encode(rgb), boxes=[box]).masks[0] for rgb, box in sets]
    print(f"fp32 PyTorch reference masks for {len(sets)} images  [load {load()}]", flush=True)
    for kind in ["fp32", *args.quant]:
        run = encoder_runner(kind, fp32_path, model, calibration, args)
        per = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            run(slices)
            per.append((time.perf_counter() - start) * 1000 / len(slices))
        print(f"{kind}, {len(slices)} slices per call: {summary(per)} per slice  [load {load()}]", flush=True)
        scores = []
        for (rgb, box), ref in zip(sets, ref_masks, strict=True):
            features = run(pre.to_tensor(rgb).numpy())
            emb = Embedding(
                features[0].astype(np.float16), "lite", model.encoder_digest, rgb.shape[:2], 256, onnx_p.cache_key(rgb)
            )
            scores.append(dice(ref, onnx_p.decode(emb, boxes=[box]).masks[0]))
        kv, bu = scores[: args.images], scores[args.images :]
        print(
            f"{kind} Dice vs fp32 PyTorch: mean {np.mean(scores):.4f} min {np.min(scores):.4f} "
            f"(Kvasir mean {np.mean(kv):.4f} min {np.min(kv):.4f}; BUSI mean {np.mean(bu):.4f} min {np.min(bu):.4f})",
            flush=True,
        )


if __name__ == "__main__":
    main()
