"""Training samples, the train/validation split, and targets in the model's frame.

A sample is lazy (two callables) so a project of thousands of images is never
held in memory; what training keeps is small: per object a 256x256 target
and a box, plus the embedding's cache key in decoder mode.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from medsam_core.preprocess import Preprocessor
from medsam_core.prompts import LOW_RES


@dataclass
class Sample:
    key: str  # a name people recognise: file stem or image id
    group: str  # split unit: a volume, or the content hash of a 2-D image
    load_rgb: Callable[[], np.ndarray]  # uint8 (H, W, 3), exactly what the encoder sees
    load_labels: Callable[[], np.ndarray]  # (H, W) ints; every non-zero value is one object


@dataclass
class Target:
    """One object of one sample, prepared once."""

    label: int
    low_res: torch.Tensor  # (1, 256, 256) float 0/1 in the model frame (padded like the input)
    box: np.ndarray  # (4,) tight box in the model frame


@dataclass
class Prepared:
    sample: Sample
    size: tuple[int, int]
    targets: list[Target] = field(default_factory=list)


def split_by_group(
    samples: list[Sample], val_fraction: float, seed: int = 0, fixed_val_keys: set[str] | None = None
) -> tuple[list[Sample], list[Sample]]:
    """Validation takes whole groups, so slices of one volume (or copies of one image) never straddle.

    With ``fixed_val_keys`` the validation set is given (a project's frozen set):
    those samples, and their whole groups, are never trained on.
    """
    if fixed_val_keys is not None:
        val_groups = {s.group for s in samples if s.key in fixed_val_keys}
    else:
        groups = sorted({s.group for s in samples}, key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())
        n_val = max(1, round(len(groups) * val_fraction)) if val_fraction > 0 else 0
        n_val = min(n_val, len(groups) - 1)
        val_groups = set(groups[:n_val])
    train = [s for s in samples if s.group not in val_groups]
    val = [s for s in samples if s.group in val_groups]
    return train, val


def prepare(sample: Sample, pre: Preprocessor, min_object_px: int = 1) -> Prepared:
    labels = np.asarray(sample.load_labels())
    height, width = labels.shape
    new_h, new_w = pre.resized_size(height, width)
    out = Prepared(sample, (height, width))
    for value in np.unique(labels):
        if value == 0:
            continue
        mask = labels == value
        if mask.sum() < min_object_px:
            continue
        frame = torch.zeros(1, 1, pre.input_size, pre.input_size)
        resized = F.interpolate(
            torch.from_numpy(mask[None, None].astype(np.float32)), size=(new_h, new_w), mode="nearest"
        )
        frame[..., :new_h, :new_w] = resized
        if not frame.any():
            continue  # too small to survive the resize
        ys, xs = torch.nonzero(frame[0, 0], as_tuple=True)
        box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float32)
        low = (
            F.interpolate(frame, size=(LOW_RES, LOW_RES), mode="nearest")[0] if pre.input_size != LOW_RES else frame[0]
        )
        out.targets.append(Target(int(value), low, box))
    return out


def jitter_box(box: np.ndarray, shift: float, limit: int, rng: np.random.Generator) -> np.ndarray:
    """MedSAM's bbox_shift: each side pushed out by a random 0..shift pixels, clipped to the frame."""
    if shift <= 0:
        return box.copy()
    d = rng.integers(0, int(round(shift)) + 1, size=4)
    x0, y0, x1, y1 = box
    return np.array(
        [max(0, x0 - d[0]), max(0, y0 - d[1]), min(limit - 1, x1 + d[2]), min(limit - 1, y1 + d[3])], dtype=np.float32
    )
