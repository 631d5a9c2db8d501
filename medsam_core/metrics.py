"""Dice, IoU and normalised surface Dice on binary masks, vectorised numpy.

NSD follows the MedSAM/MSD definition: the fraction of both boundaries that lie
within ``tolerance`` pixels of the other boundary. Distances come from SciPy's
exact Euclidean distance transform.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage


def _pair(pred: ArrayLike, truth: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p, t = np.asarray(pred).astype(bool), np.asarray(truth).astype(bool)
    if p.shape != t.shape:
        raise ValueError(f"prediction {p.shape} and ground truth {t.shape} differ in shape")
    return p, t


def dice(pred: ArrayLike, truth: ArrayLike) -> float:
    """1.0 when both are empty: nothing to find, nothing found."""
    p, t = _pair(pred, truth)
    total = p.sum() + t.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(p, t).sum() / total)


def iou(pred: ArrayLike, truth: ArrayLike) -> float:
    p, t = _pair(pred, truth)
    union = np.logical_or(p, t).sum()
    return 1.0 if union == 0 else float(np.logical_and(p, t).sum() / union)


def _boundary(mask: np.ndarray) -> np.ndarray:
    eroded: np.ndarray = ndimage.binary_erosion(mask, structure=np.ones((3,) * mask.ndim), border_value=0)
    boundary: np.ndarray = mask & ~eroded
    return boundary


def normalized_surface_dice(
    pred: ArrayLike, truth: ArrayLike, tolerance: float = 2.0, spacing: Sequence[float] | None = None
) -> float:
    """Any number of dimensions; ``spacing`` (one size per axis, e.g. mm) puts ``tolerance`` in those units."""
    p, t = _pair(pred, truth)
    if not p.any() and not t.any():
        return 1.0
    if not p.any() or not t.any():
        return 0.0
    bp, bt = _boundary(p), _boundary(t)
    dist_to_t = ndimage.distance_transform_edt(~bt, sampling=spacing)
    dist_to_p = ndimage.distance_transform_edt(~bp, sampling=spacing)
    close = (dist_to_t[bp] <= tolerance).sum() + (dist_to_p[bt] <= tolerance).sum()
    return float(close / (bp.sum() + bt.sum()))
