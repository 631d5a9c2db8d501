"""``medsam train``: fine-tune on a folder, like the seed's train_one_gpu.py, with validation."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from portal.cli.common import add_model_options
from portal.store.settings import get_settings


def register(sub) -> None:
    p = sub.add_parser("train", help="fine-tune a model on a labelled folder",
                       description="DATA_DIR: imgs/*.npy + gts/*.npy (the seed's layout) or images/ + masks/ PNGs. "
                                   "Writes checkpoint_latest.pth, checkpoint_best.pth (chosen by validation Dice; "
                                   "starts as the untouched weights), metrics.json and curves.png into --out.")
    p.add_argument("data_dir", type=Path, metavar="DATA_DIR")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--mode", choices=("decoder", "full"), default="decoder",
                   help="decoder: frozen encoder, trains on cached embeddings (fast, CPU-friendly); "
                        "full: encoder and decoder, as MedSAM does (needs a GPU)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--bbox-shift", type=float, default=20.0, help="box jitter in pixels at 1024 (default 20)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of images held out (by volume)")
    p.add_argument("--early-stopping", type=int, default=None, metavar="N",
                   help="stop after N epochs without a better validation Dice")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint_latest.pth")
    p.add_argument("--json", action="store_true", help="one JSON line per epoch, then a summary line")
    add_model_options(p)
    p.set_defaults(handler=run)


def check_full_mode(mode: str, device, settings) -> None:
    from medsam_core.errors import MedsamError

    if mode == "full" and device.type != "cuda" and not settings.allow_full_finetune_without_gpu:
        raise MedsamError("full fine-tuning needs a GPU (about a minute per step on a CPU); use --mode decoder, "
                          "or set MEDSAM_ALLOW_FULL_FINETUNE_WITHOUT_GPU=true to insist")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from medsam_core.errors import MedsamError
    from medsam_core.outputs import atomic_write
    from medsam_core.training import TrainConfig, Trainer, split_by_group
    from medsam_core.training.artifacts import best_checkpoint, checkpoint_bytes, checkpoint_from_bytes, curves_png
    from medsam_core.training.folder import folder_samples
    from portal.cli.common import build_predictor

    settings = get_settings()
    config = TrainConfig(mode=args.mode, epochs=args.epochs, batch_size=args.batch_size, grad_accum=args.grad_accum,
                         lr=args.lr, bbox_shift=args.bbox_shift, seed=args.seed, early_stopping=args.early_stopping)
    config.validate()
    if not 0 < args.val_fraction < 1:
        raise MedsamError("--val-fraction must be between 0 and 1")
    samples = folder_samples(args.data_dir, settings.max_image_pixels)
    if len(samples) < settings.min_training_images:
        raise MedsamError(f"{args.data_dir} has {len(samples)} labelled images; fine-tuning needs at least "
                          f"{settings.min_training_images} (MEDSAM_MIN_TRAINING_IMAGES)")
    train, val = split_by_group(samples, args.val_fraction, args.seed)
    latest = args.out / "checkpoint_latest.pth"
    resume = None
    if args.resume:
        if not latest.exists():
            raise MedsamError(f"--resume: {latest} does not exist")
        resume = checkpoint_from_bytes(latest.read_bytes())
    predictor = build_predictor(args, settings)
    check_full_mode(args.mode, predictor.model.device, settings)
    args.out.mkdir(parents=True, exist_ok=True)
    family = predictor.family
    bar = tqdm(desc="train", unit="step", file=sys.stderr, disable=None)

    def write_best(state, epoch, dice):
        atomic_write(args.out / "checkpoint_best.pth", checkpoint_bytes(best_checkpoint(state, family, epoch, dice)))

    def on_step(p):
        bar.total = p["steps"] * p["epochs"]
        bar.n = (p["epoch"] - 1) * p["steps"] + p["step"]
        bar.set_postfix(epoch=p["epoch"], loss=p["loss"])
        bar.refresh()

    def on_epoch(record, checkpoint):
        atomic_write(latest, checkpoint_bytes(checkpoint))
        if checkpoint["best_epoch"] == record["epoch"] or not (args.out / "checkpoint_best.pth").exists():
            write_best(checkpoint["best_model"], checkpoint["best_epoch"], checkpoint["best_val_dice"])
        write_metrics(args.out, family, config, train, val, checkpoint)
        atomic_write(args.out / "curves.png", curves_png(checkpoint["history"], checkpoint["baseline_val_dice"],
                                                         f"{family}, {config.mode} mode"))
        if args.json:
            print(json.dumps(record), flush=True)

    trainer = Trainer(predictor.model, config, predictor)
    result = trainer.fit(train, val, resume=resume, on_step=on_step, on_epoch=on_epoch)
    bar.close()
    write_best(result.best_state, result.best_epoch, result.best_val_dice)
    atomic_write(args.out / "curves.png", curves_png(result.history, result.baseline_val_dice,
                                                     f"{family}, {config.mode} mode"))
    summary = {"baseline_val_dice": round(result.baseline_val_dice, 4), "best_val_dice": round(result.best_val_dice, 4),
               "best_epoch": result.best_epoch, "epochs": len(result.history), "train_images": len(train),
               "val_images": len(val), "out": str(args.out)}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"validation Dice {summary['baseline_val_dice']:.4f} before, {summary['best_val_dice']:.4f} best "
              f"(epoch {result.best_epoch}); checkpoints in {args.out}")
    return 0


def write_metrics(out: Path, family: str, config, train, val, checkpoint: dict) -> None:
    from dataclasses import asdict

    from medsam_core.outputs import atomic_write

    metrics = {"family": family, "config": asdict(config), "train_images": [s.key for s in train],
               "val_images": [s.key for s in val], "baseline_val_dice": checkpoint["baseline_val_dice"],
               "best_val_dice": checkpoint["best_val_dice"], "best_epoch": checkpoint["best_epoch"],
               "epochs": checkpoint["history"]}
    atomic_write(out / "metrics.json", json.dumps(metrics, indent=2).encode())
