"""Decoder-mode fine-tuning on the 100 shared Kvasir images (80 train / 20 validation).

Prints the one-time encode cost, seconds per epoch once embeddings are cached,
and validation Dice before and after, with tight boxes and with boxes jittered
by 20 px (seeded, so before and after see the same boxes).

    .venv/bin/python bench/finetune.py [--epochs 5] [--lr 1e-4] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from medsam_core.cache import DirectoryEmbeddingStore, EmbeddingCache
from medsam_core.evaluation import Pair, evaluate, find_pairs, summarize
from medsam_core.models import from_module, load_model
from medsam_core.predictor import Predictor
from medsam_core.training import TrainConfig, Trainer, split_by_group
from medsam_core.training.folder import folder_samples

REPO = Path(__file__).resolve().parents[1]


def jittered_dice(predictor: Predictor, pairs: list[Pair], jitter: int) -> float:
    return summarize(list(evaluate(predictor, pairs, box_jitter=jitter, seed=0)))["mean_dice"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--jitter", type=int, default=20)
    args = parser.parse_args()
    data = Path(os.environ.get("MEDSAM_SAMPLE_DATA", REPO.parent / "shared" / "data")) / "kvasir"
    samples = folder_samples(data)
    pairs = {p.stem: p for p in find_pairs(data)}
    val_keys = {s.key for s in samples[-20:]}
    train, val = split_by_group(samples, 0, fixed_val_keys=val_keys)
    val_pairs = [pairs[s.key] for s in val]
    work = Path(tempfile.mkdtemp(prefix="medsam-finetune-bench-"))
    model = load_model("lite", device="cpu")
    cache = EmbeddingCache(DirectoryEmbeddingStore(work / "embeddings", 10**10), memory_items=128)
    predictor = Predictor(model, cache, backend="auto", onnx_dir=work / "onnx")
    print(
        f"machine: {os.cpu_count()} cores; {len(train)} train / {len(val)} validation images; "
        f"{args.epochs} epochs, lr {args.lr}, batch {args.batch_size}, bbox shift 20 px at 1024"
    )
    start = time.perf_counter()
    for s in samples:
        predictor.encode(s.load_rgb())
    encode_s = time.perf_counter() - start
    print(
        f"one-time encode of {len(samples)} images ({predictor.backend.name}): {encode_s:.1f} s "
        f"({encode_s / len(samples) * 1000:.0f} ms per image)"
    )
    before_jitter = jittered_dice(predictor, val_pairs, args.jitter)
    trainer = Trainer(model, TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size), predictor)
    result = trainer.fit(
        train,
        val,
        on_epoch=lambda r, _c: print(
            f"epoch {r['epoch']}: {r['seconds']:.1f} s, train loss {r['train_loss']:.4f}, "
            f"val Dice {r['val_dice']:.4f}, val NSD {r['val_nsd']:.4f}",
            flush=True,
        ),
    )
    trained = from_module("lite", model.module, device="cpu")
    model.module.load_state_dict(result.best_state)
    after = Predictor(trained, cache, backend="torch")
    after_jitter = jittered_dice(after, val_pairs, args.jitter)
    seconds = [h["seconds"] for h in result.history]
    print(f"seconds per epoch: median {statistics.median(seconds):.1f}, max {max(seconds):.1f}")
    print(
        f"validation Dice, tight boxes: {result.baseline_val_dice:.4f} before -> {result.best_val_dice:.4f} "
        f"after (best epoch {result.best_epoch})"
    )
    print(f"validation Dice, boxes jittered {args.jitter} px: {before_jitter:.4f} before -> {after_jitter:.4f} after")


if __name__ == "__main__":
    main()
