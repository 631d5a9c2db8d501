"""The training loop that ``finetune`` (``run.py``) runs for ``medsam train`` and the training worker.

Persistence is the caller's (a sink): after every epoch the trainer hands over a
complete checkpoint dict (model, optimizer, epoch, best weights, history), and
``fit`` accepts one back to resume. The best weights are chosen by validation
Dice, never by training loss, and start as the untouched weights, so the best
checkpoint can never be worse than where training began.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from medsam_core.clicks import Click, next_click
from medsam_core.errors import MedsamError
from medsam_core.metrics import dice, normalized_surface_dice
from medsam_core.models import LoadedModel
from medsam_core.predictor import Predictor
from medsam_core.prompt_decoder import BOX_CORNER_LABELS, PAD_LABEL, PromptDecoder
from medsam_core.prompts import LOW_RES
from medsam_core.training.data import Prepared, Sample, jitter_box, prepare
from medsam_core.training.losses import medsam_loss
from medsam_core.training.modes import DEFAULT_CLICK_ROUNDS, MODES, unknown_mode_message


@dataclass
class TrainConfig:
    mode: str = "decoder"
    epochs: int = 5
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.01
    bbox_shift: float = 20.0  # pixels at 1024, scaled to the family's input size
    seed: int = 0
    early_stopping: int | None = None  # epochs without a better validation Dice
    nsd_tolerance: float = 2.0
    flips: bool = True  # full mode only: cached embeddings cannot be flipped
    click_rounds: int = DEFAULT_CLICK_ROUNDS  # up to this many simulated corrective clicks per step (``clicks.py``)

    def validate(self) -> None:
        if self.mode not in MODES:
            raise MedsamError(unknown_mode_message(self.mode))
        if self.epochs < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise MedsamError("epochs, batch size and gradient accumulation must be at least 1")
        if not (0 < self.lr < 1):
            raise MedsamError(f"learning rate {self.lr} is out of range; MedSAM uses 1e-4")
        if self.bbox_shift < 0:
            raise MedsamError("bbox shift must be 0 or more pixels")
        if not 0 <= self.click_rounds <= MAX_CLICK_ROUNDS:
            raise MedsamError(f"click rounds must be between 0 and {MAX_CLICK_ROUNDS}")


@dataclass
class TrainResult:
    baseline_val_dice: float
    best_val_dice: float
    best_epoch: int  # 0: the starting weights were best
    history: list[dict[str, Any]] = field(default_factory=list)
    best_state: dict[str, Any] | None = None
    train_images: int = 0
    val_images: int = 0

    def summary(self) -> dict[str, Any]:
        """What both the CLI and a training job report at the end."""
        return {
            "baseline_val_dice": round(self.baseline_val_dice, 4),
            "best_val_dice": round(self.best_val_dice, 4),
            "best_epoch": self.best_epoch,
            "train_images": self.train_images,
            "val_images": self.val_images,
        }


StepCallback = Callable[[dict[str, Any]], None]
EpochCallback = Callable[[dict[str, Any], dict[str, Any]], None]  # (epoch record, checkpoint dict)


MAX_CLICK_ROUNDS = 10


@dataclass(frozen=True)
class Clicks:
    """The corrective clicks of a batch so far, in the model's input frame: (B, K, 2) and (B, K)."""

    coords: np.ndarray
    labels: np.ndarray

    def add(self, clicks: list[Click | None], scale: float) -> Clicks:
        """One more click per sample; a sample with nothing left to fix gets SAM's padding point."""
        xy = [((c.x + 0.5) * scale - 0.5, (c.y + 0.5) * scale - 0.5) if c else (0.0, 0.0) for c in clicks]
        labels = [float(c.positive) if c else PAD_LABEL for c in clicks]
        return Clicks(
            np.concatenate([self.coords, np.asarray(xy, np.float32)[:, None]], axis=1),
            np.concatenate([self.labels, np.asarray(labels, np.float32)[:, None]], axis=1),
        )


def _constant(value: np.ndarray) -> Callable[[], np.ndarray]:
    return lambda: value


class Trainer:
    def __init__(self, model: LoadedModel, config: TrainConfig, predictor: Predictor | None = None):
        config.validate()
        self.model, self.config = model, config
        self.module = model.module
        self.device = model.device
        self.pre = model.family.preprocessor
        self.shift = config.bbox_shift * self.pre.input_size / 1024
        # Decoder mode reads embeddings through the predictor's cache: encoded once, shared with inference.
        self.predictor = predictor
        if config.mode == "decoder" and predictor is None:
            raise ValueError("decoder mode needs a predictor (with its embedding cache) for the frozen encoder")
        self.decoder = PromptDecoder(self.module.prompt_encoder, self.module.mask_decoder)
        for p in self.module.parameters():
            p.requires_grad_(False)
        trainable = list(self.module.mask_decoder.parameters())
        if config.mode == "full":
            trainable += list(self.module.image_encoder.parameters())
        for p in trainable:
            p.requires_grad_(True)
        self.optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
        self.amp_dtype = None
        if self.device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

    # -- data -------------------------------------------------------------

    def _prepare(self, samples: list[Sample]) -> list[Prepared]:
        prepared = [prepare(s, self.pre) for s in samples]
        return [p for p in prepared if p.targets]

    def _embedding(self, item: Prepared) -> torch.Tensor:
        assert self.predictor is not None  # decoder mode alone reads embeddings, and __init__ demands one for it
        return torch.from_numpy(self.predictor.encode(item.sample.load_rgb()).features.astype(np.float32))

    # -- one batch ----------------------------------------------------------

    def _forward(
        self, embeddings: torch.Tensor, boxes: np.ndarray, clicks: Clicks | None = None, previous: Any = None
    ) -> torch.Tensor:
        """Box (and clicks, ahead of the box corners as ``build_prompt_arrays`` puts them) -> best-mask logits;
        ``previous`` logits, if given, go in as ``mask_input``."""
        coords = boxes.reshape(-1, 2, 2).astype(np.float32)
        labels = np.tile(np.asarray(BOX_CORNER_LABELS, np.float32), (len(boxes), 1))
        if clicks is not None:
            coords = np.concatenate([clicks.coords, coords], axis=1)
            labels = np.concatenate([clicks.labels, labels], axis=1)
        if previous is None:
            mask_in = torch.zeros(len(boxes), 1, LOW_RES, LOW_RES, device=self.device)
            has_mask = torch.zeros(1, device=self.device)
        else:
            mask_in, has_mask = previous.detach(), torch.ones(1, device=self.device)
        logits: torch.Tensor
        logits, _ = self.decoder(
            embeddings,
            torch.from_numpy(coords).to(self.device),
            torch.from_numpy(labels).to(self.device),
            mask_in,
            has_mask,
        )
        return logits[:, :1]

    def _click_loss(
        self, embeddings: torch.Tensor, boxes: np.ndarray, gts: torch.Tensor, logits: torch.Tensor, rounds: int
    ) -> torch.Tensor:
        """SAM's and RITM's interactive training: each round adds a corrective click per sample where the
        last mask is most wrong (``clicks.next_click`` on the low-res frame) and re-prompts with the
        previous logits as ``mask_input``, so the decoder learns to use both. Mean loss over the rounds."""
        truth = (gts[:, 0] > 0.5).cpu().numpy()
        scale = self.pre.input_size / LOW_RES
        clicks = Clicks(np.zeros((len(boxes), 0, 2), np.float32), np.zeros((len(boxes), 0), np.float32))
        total = torch.zeros((), device=self.device)
        for _ in range(rounds):
            predicted = (logits.detach()[:, 0] > 0).cpu().numpy()
            clicks = clicks.add([next_click(p, t) for p, t in zip(predicted, truth, strict=True)], scale)
            logits = self._forward(embeddings, boxes, clicks, previous=logits)
            total = total + medsam_loss(logits, gts)
        return total / rounds

    def _batch_inputs(
        self, batch: list[Prepared], rng: np.random.Generator
    ) -> tuple[torch.Tensor, np.ndarray, torch.Tensor]:
        targets = [item.targets[rng.integers(len(item.targets))] for item in batch]  # one object per image
        boxes = np.stack([jitter_box(t.box, self.shift, self.pre.input_size, rng) for t in targets])
        gts = torch.stack([t.low_res for t in targets]).to(self.device)
        if self.config.mode == "decoder":
            with torch.no_grad():
                embeddings = torch.stack([self._embedding(item) for item in batch]).to(self.device)
            return embeddings, boxes, gts
        images, flipped_gts, flipped_boxes = [], [], []
        for item, target in zip(batch, targets, strict=True):
            rgb, labels = item.sample.load_rgb(), np.asarray(item.sample.load_labels())
            if self.config.flips and rng.random() < 0.5:  # flip before preprocessing: padding stays right
                rgb, labels = np.ascontiguousarray(rgb[:, ::-1]), np.ascontiguousarray(labels[:, ::-1])
                redo = prepare(Sample(item.sample.key, item.sample.group, _constant(rgb), _constant(labels)), self.pre)
                target = next(t for t in redo.targets if t.label == target.label)
            images.append(self.pre.to_tensor(rgb)[0])
            flipped_gts.append(target.low_res)
            flipped_boxes.append(jitter_box(target.box, self.shift, self.pre.input_size, rng))
        x = torch.stack(images).to(self.device)
        return self.module.image_encoder(x), np.stack(flipped_boxes), torch.stack(flipped_gts).to(self.device)

    # -- validation ---------------------------------------------------------

    @torch.no_grad()
    def validate(self, val: list[Prepared]) -> dict[str, float]:
        self.module.eval()
        dices, nsds = [], []
        for item in val:
            if self.config.mode == "decoder":
                emb = self._embedding(item)[None].to(self.device)
            else:
                emb = self.module.image_encoder(self.pre.to_tensor(item.sample.load_rgb()).to(self.device))
            boxes = np.stack([t.box for t in item.targets])
            with self._autocast():
                logits = self._forward(emb, boxes)
            full = self.pre.logits_to_original(logits.float().cpu(), item.size)[:, 0] > 0
            labels = np.asarray(item.sample.load_labels())
            dices.append(np.mean([dice(m.numpy(), labels == t.label) for m, t in zip(full, item.targets, strict=True)]))
            nsds.append(
                np.mean(
                    [
                        normalized_surface_dice(m.numpy(), labels == t.label, self.config.nsd_tolerance)
                        for m, t in zip(full, item.targets, strict=True)
                    ]
                )
            )
        return {
            "val_dice": float(np.mean(dices)) if dices else float("nan"),
            "val_nsd": float(np.mean(nsds)) if nsds else float("nan"),
        }

    def _train_mode(self) -> None:
        """Decoder mode keeps the frozen encoder in eval mode: the predictor encodes with this very module.

        LiteMedSAM's TinyViT has BatchNorm and dropout. In train mode a cache miss
        would store batch-statistics embeddings under the inference cache's key and
        move the running statistics, so the "unchanged" encoder's digest would drift.
        """
        self.module.train()
        if self.config.mode == "decoder":
            self.module.image_encoder.eval()

    def _autocast(self) -> torch.autocast:
        if self.amp_dtype is None:
            return torch.autocast("cpu", enabled=False)
        return torch.autocast("cuda", dtype=self.amp_dtype)

    # -- the loop -------------------------------------------------------------

    def _train_epoch(
        self, train: list[Any], rng: np.random.Generator, epoch: int, steps: int, on_step: StepCallback | None
    ) -> list[float]:
        """One pass in the seeded order; losses per step (undivided by grad_accum, as logged)."""
        cfg = self.config
        order = rng.permutation(len(train))
        self._train_mode()
        started, losses = time.perf_counter(), []
        for step in range(steps):
            batch = [train[i] for i in order[step * cfg.batch_size : (step + 1) * cfg.batch_size]]
            with self._autocast():
                embeddings, boxes, gts = self._batch_inputs(batch, rng)
                logits = self._forward(embeddings, boxes)
                loss = medsam_loss(logits, gts)
                rounds = int(rng.integers(0, cfg.click_rounds + 1)) if cfg.click_rounds else 0  # SAM samples it too
                if rounds:
                    loss = (loss + self._click_loss(embeddings, boxes, gts, logits, rounds)) / 2
                loss = loss / cfg.grad_accum
            self.scaler.scale(loss).backward()
            if (step + 1) % cfg.grad_accum == 0 or step + 1 == steps:
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()) * cfg.grad_accum)
            if on_step is not None:
                elapsed = time.perf_counter() - started
                remaining = elapsed / (step + 1) * (steps - step - 1) + (cfg.epochs - epoch - 1) * (
                    elapsed / (step + 1) * steps
                )
                on_step(
                    {
                        "epoch": epoch + 1,
                        "epochs": cfg.epochs,
                        "step": step + 1,
                        "steps": steps,
                        "loss": round(losses[-1], 5),
                        "eta_s": round(remaining, 1),
                    }
                )
        return losses

    def fit(
        self,
        train_samples: list[Sample],
        val_samples: list[Sample],
        *,
        resume: dict[str, Any] | None = None,
        on_step: StepCallback | None = None,
        on_epoch: EpochCallback | None = None,
    ) -> TrainResult:
        cfg = self.config
        train, val = self._prepare(train_samples), self._prepare(val_samples)
        if not train:
            raise MedsamError("no training image has a labelled object")
        if not val:
            raise MedsamError("no validation image has a labelled object; add labelled images")
        if resume is not None:
            self.module.load_state_dict(resume["model"])
            self.optimizer.load_state_dict(resume["optimizer"])
            start, history = int(resume["epoch"]), list(resume["history"])
            baseline, best_dice, best_epoch = resume["baseline_val_dice"], resume["best_val_dice"], resume["best_epoch"]
            best_state = resume["best_model"]
        else:
            baseline = self.validate(val)["val_dice"]
            start, history, best_dice, best_epoch = 0, [], baseline, 0
            best_state = copy.deepcopy(self.module.state_dict())
        steps = math.ceil(len(train) / cfg.batch_size)
        for epoch in range(start, cfg.epochs):
            rng = np.random.default_rng([cfg.seed, epoch])  # same order and jitter after a resume
            torch.manual_seed(cfg.seed * 1000 + epoch)
            started = time.perf_counter()
            losses = self._train_epoch(train, rng, epoch, steps, on_step)
            scores = self.validate(val)
            record = {
                "epoch": epoch + 1,
                "train_loss": float(np.mean(losses)),
                **scores,
                "seconds": round(time.perf_counter() - started, 2),
            }
            history.append(record)
            if scores["val_dice"] > best_dice:
                best_dice, best_epoch = scores["val_dice"], epoch + 1
                best_state = copy.deepcopy(self.module.state_dict())
            if on_epoch is not None:
                on_epoch(
                    record,
                    {
                        "model": self.module.state_dict(),
                        "optimizer": self.optimizer.state_dict(),
                        "epoch": epoch + 1,
                        "history": history,
                        "baseline_val_dice": baseline,
                        "best_val_dice": best_dice,
                        "best_epoch": best_epoch,
                        "best_model": best_state,
                        "family": self.model.family.name,
                        "config": asdict(cfg),
                    },
                )
            if cfg.early_stopping and epoch + 1 - max(best_epoch, start) >= cfg.early_stopping:
                break
        self.module.eval()
        return TrainResult(baseline, best_dice, best_epoch, history, best_state, len(train_samples), len(val_samples))
