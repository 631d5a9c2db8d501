"""One fine-tuning run, the same whoever asked for it: ``medsam train`` or a queued training job.

The caller loads the model, splits the samples and checks the mode against its
hardware (``check_mode``); ``finetune`` trains and hands everything that must
outlive the process to a ``Sink``: a folder for the CLI, blobs and a job row
for the worker. The sink also decides where a run resumes from and whether it
stops early (a cancelled job raises from ``progress``), so the loop itself never
touches a file or a database.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from medsam_core.models import LoadedModel
from medsam_core.predictor import Predictor
from medsam_core.training.data import Sample
from medsam_core.training.trainer import TrainConfig, Trainer, TrainResult


@dataclass(frozen=True)
class RunInfo:
    """What a sink may want to record about a run before its first epoch."""

    family: str
    config: TrainConfig
    train_keys: list[str]
    val_keys: list[str]


class Sink(Protocol):
    def start(self, info: RunInfo) -> dict[str, Any] | None:
        """Called once before training; returns the checkpoint to resume from, or None to start afresh."""

    def progress(self, values: dict[str, Any]) -> None:
        """After every step (epoch, step, loss, ETA); raising here ends the run, e.g. when a job is cancelled."""

    def epoch_done(self, record: dict[str, Any], checkpoint: dict[str, Any]) -> None:
        """After every epoch: its metrics and a complete checkpoint that ``start`` can hand back to resume."""

    def finished(self, result: TrainResult) -> None:
        """After the last epoch (or early stopping): the best weights and the whole history."""


def finetune(
    model: LoadedModel,
    train: list[Sample],
    val: list[Sample],
    config: TrainConfig,
    sink: Sink,
    *,
    predictor: Predictor | None = None,
) -> TrainResult:
    """Fine-tune ``model`` in place; the result's ``best_state`` holds the weights to keep.

    Decoder mode reads the frozen encoder's embeddings through ``predictor`` (its
    cache is shared with inference, so images are encoded once for both). The
    predictor must wrap this very model: a second copy of the encoder would
    double the memory of a ViT-H for nothing. Full mode needs no predictor.
    """
    config.validate()
    if config.mode == "decoder":
        if predictor is None:
            raise ValueError("decoder mode needs a predictor (with its embedding cache) for the frozen encoder")
        if predictor.model is not model:
            raise ValueError("the predictor must wrap the model being trained, not a second copy of it")
    else:
        predictor = None
    info = RunInfo(model.family.name, config, [s.key for s in train], [s.key for s in val])
    resume = sink.start(info)
    result = Trainer(model, config, predictor).fit(
        train, val, resume=resume, on_step=sink.progress, on_epoch=sink.epoch_done
    )
    sink.finished(result)
    return result
