"""A fine-tuning run written into a folder, what ``medsam train --out`` leaves behind.

``checkpoint_latest.pth`` (everything needed to resume), ``checkpoint_best.pth``
(chosen by validation Dice, starting as the untouched weights, in the layout
every loader accepts), ``metrics.json`` and ``curves.png``; each is rewritten
atomically after every epoch, so a run killed at any moment leaves a usable set.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from medsam_core.errors import MedsamError
from medsam_core.outputs import atomic_write
from medsam_core.training.artifacts import best_checkpoint, checkpoint_bytes, checkpoint_from_bytes, curves_png
from medsam_core.training.run import RunInfo
from medsam_core.training.trainer import TrainResult

LATEST, BEST, METRICS, CURVES = "checkpoint_latest.pth", "checkpoint_best.pth", "metrics.json", "curves.png"


class FolderSink:
    info: RunInfo  # set by start()

    def __init__(
        self,
        out: Path,
        *,
        resume: bool = False,
        on_step: Callable[[dict[str, Any]], None] | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
    ):
        """``resume``: continue from ``out/checkpoint_latest.pth``, which must exist (checked now, before any
        model is loaded). ``on_step`` / ``on_epoch`` show progress; they run after the files are written."""
        self.out, self.resume = Path(out), resume
        self.on_step, self.on_epoch = on_step, on_epoch
        if resume and not (self.out / LATEST).exists():
            raise MedsamError(f"--resume: {self.out / LATEST} does not exist")

    def start(self, info: RunInfo) -> dict[str, Any] | None:
        self.info = info
        resume = checkpoint_from_bytes((self.out / LATEST).read_bytes()) if self.resume else None
        self.out.mkdir(parents=True, exist_ok=True)
        return resume

    def progress(self, values: dict[str, Any]) -> None:
        if self.on_step is not None:
            self.on_step(values)

    def epoch_done(self, record: dict[str, Any], checkpoint: dict[str, Any]) -> None:
        atomic_write(self.out / LATEST, checkpoint_bytes(checkpoint))
        if checkpoint["best_epoch"] == record["epoch"] or not (self.out / BEST).exists():
            self._write_best(checkpoint["best_model"], checkpoint["best_epoch"], checkpoint["best_val_dice"])
        self._write_metrics(checkpoint)
        self._write_curves(checkpoint["history"], checkpoint["baseline_val_dice"])
        if self.on_epoch is not None:
            self.on_epoch(record)

    def finished(self, result: TrainResult) -> None:
        assert result.best_state is not None  # Trainer.fit always returns the best weights
        self._write_best(result.best_state, result.best_epoch, result.best_val_dice)
        self._write_curves(result.history, result.baseline_val_dice)

    def _write_best(self, state: dict[str, Any], epoch: int, val_dice: float) -> None:
        checkpoint = best_checkpoint(state, self.info.family, epoch, val_dice)
        atomic_write(self.out / BEST, checkpoint_bytes(checkpoint))

    def _write_curves(self, history: list[dict[str, Any]], baseline_val_dice: float) -> None:
        title = f"{self.info.family}, {self.info.config.mode} mode"
        atomic_write(self.out / CURVES, curves_png(history, baseline_val_dice, title))

    def _write_metrics(self, checkpoint: dict[str, Any]) -> None:
        info = self.info
        metrics = {
            "family": info.family,
            "config": asdict(info.config),
            "train_images": info.train_keys,
            "val_images": info.val_keys,
            "baseline_val_dice": checkpoint["baseline_val_dice"],
            "best_val_dice": checkpoint["best_val_dice"],
            "best_epoch": checkpoint["best_epoch"],
            "epochs": checkpoint["history"],
        }
        atomic_write(self.out / METRICS, json.dumps(metrics, indent=2).encode())
