"""``medsam train``: fine-tune on a folder, like the seed's train_one_gpu.py, with validation."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from medsam_core.training.modes import DEFAULT_CLICK_ROUNDS, MODES
from portal.cli.common import add_model_options
from portal.store.settings import get_settings


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune a model on a labelled folder",
        description="DATA_DIR: imgs/*.npy + gts/*.npy (the seed's layout) or images/ + masks/ PNGs. "
        "Writes checkpoint_latest.pth, checkpoint_best.pth (chosen by validation Dice; "
        "starts as the untouched weights), metrics.json and curves.png into --out.",
    )
    p.add_argument("data_dir", type=Path, metavar="DATA_DIR")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--mode",
        choices=MODES,
        default="decoder",
        help="decoder: frozen encoder, trains on cached embeddings (fast, CPU-friendly); "
        "full: encoder and decoder, as MedSAM does (needs a GPU)",
    )
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--bbox-shift", type=float, default=20.0, help="box jitter in pixels at 1024 (default 20)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of images held out (by volume)")
    p.add_argument(
        "--early-stopping",
        type=int,
        default=None,
        metavar="N",
        help="stop after N epochs without a better validation Dice",
    )
    p.add_argument(
        "--click-rounds",
        type=int,
        default=DEFAULT_CLICK_ROUNDS,
        metavar="N",
        help="per step, up to N simulated corrective clicks, each re-prompting with the previous mask, so "
        f"include/exclude points refine a box (default {DEFAULT_CLICK_ROUNDS}; 0: boxes only)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint_latest.pth")
    p.add_argument("--json", action="store_true", help="one JSON line per epoch, then a summary line")
    add_model_options(p)
    p.set_defaults(handler=run)


# The --json summary line's keys, in the order scripts have always read them.
SUMMARY_KEYS = ("baseline_val_dice", "best_val_dice", "best_epoch", "epochs", "train_images", "val_images", "out")


def run(args: argparse.Namespace) -> int:
    from medsam_core.errors import MedsamError
    from medsam_core.training import TrainConfig, check_mode, finetune, split_by_group
    from medsam_core.training.folder import folder_samples
    from medsam_core.training.folder_sink import FolderSink
    from portal.cli.common import build_predictor

    settings = get_settings()
    config = TrainConfig(
        mode=args.mode,
        epochs=args.epochs,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        lr=args.lr,
        bbox_shift=args.bbox_shift,
        seed=args.seed,
        early_stopping=args.early_stopping,
        click_rounds=args.click_rounds,
    )
    config.validate()
    if not 0 < args.val_fraction < 1:
        raise MedsamError("--val-fraction must be between 0 and 1")
    samples = folder_samples(args.data_dir, settings.max_image_pixels)
    if len(samples) < settings.min_training_images:
        raise MedsamError(
            f"{args.data_dir} has {len(samples)} labelled images; fine-tuning needs at least "
            f"{settings.min_training_images} (MEDSAM_MIN_TRAINING_IMAGES)"
        )
    train, val = split_by_group(samples, args.val_fraction, args.seed)
    bar = _ProgressBar()
    sink = FolderSink(
        args.out,
        resume=args.resume,
        on_step=bar.show,
        on_epoch=(lambda record: print(json.dumps(record), flush=True)) if args.json else None,
    )
    predictor = build_predictor(args, settings)
    check_mode(
        args.mode,
        predictor.model.device.type == "cuda",
        settings.allow_full_finetune_without_gpu,
        remedy=" (about a minute per step on a CPU); use --mode decoder, "
        "or set MEDSAM_ALLOW_FULL_FINETUNE_WITHOUT_GPU=true to insist",
    )
    result = finetune(predictor.model, train, val, config, sink, predictor=predictor)
    bar.close()
    summary = {**result.summary(), "epochs": len(result.history), "out": str(args.out)}
    if args.json:
        print(json.dumps({k: summary[k] for k in SUMMARY_KEYS}))
    else:
        print(
            f"validation Dice {summary['baseline_val_dice']:.4f} before, {summary['best_val_dice']:.4f} best "
            f"(epoch {result.best_epoch}); checkpoints in {args.out}"
        )
    return 0


class _ProgressBar:
    """tqdm on stderr over all epochs' steps, from the first step on; silent when stderr is not a terminal."""

    def __init__(self) -> None:
        self.bar: Any = None

    def show(self, p: dict[str, Any]) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(desc="train", unit="step", file=sys.stderr, disable=None)
        self.bar.total = p["steps"] * p["epochs"]
        self.bar.n = (p["epoch"] - 1) * p["steps"] + p["step"]
        self.bar.set_postfix(epoch=p["epoch"], loss=p["loss"])
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
