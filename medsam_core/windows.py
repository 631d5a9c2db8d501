"""Intensity windows that turn raw medical values into the 8-bit images MedSAM expects.

MedSAM was trained on 8-bit slices made by clipping CT to a level/width window
and MR (and everything else) to the 0.5-99.5 percentile range, then casting to
``uint8``. Reproducing that recipe closely matters more than visual nicety:
the model's masks degrade when the contrast differs from what it saw in training.
"""

from __future__ import annotations

import numpy as np

from medsam_core.errors import MedsamError

# Level/width pairs in Hounsfield units; the usual radiology reading presets.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "abdomen": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "brain": (40.0, 80.0),
    "bone": (400.0, 1800.0),
}

_LOW_PERCENTILE = 0.5
_HIGH_PERCENTILE = 99.5


def _scale_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Shared clip-and-scale so window and percentile paths round identically.

    The final cast truncates rather than rounds, matching the ``np.uint8(...)``
    cast in MedSAM's own preprocessing, so a value at the window centre maps
    to 127, not 128.
    """
    data = np.asarray(values, dtype=np.float64)
    if not high > low:
        # A constant image has no contrast to stretch; black is the honest answer
        # and avoids a division by zero.
        return np.zeros(data.shape, dtype=np.uint8)
    clipped = np.clip(np.nan_to_num(data, nan=low, posinf=high, neginf=low), low, high)
    # Divide before multiplying so the window's upper edge lands on exactly 1.0
    # (hence 255); the final clip guards any remaining floating-point spill.
    scaled = (clipped - low) / (high - low) * 255.0
    return np.clip(scaled, 0.0, 255.0).astype(np.uint8)


def window_bounds(window: str) -> tuple[float, float]:
    """Resolve a preset name early so typos fail with the list of valid names."""
    try:
        level, width = WINDOW_PRESETS[window]
    except (KeyError, TypeError):
        valid = ", ".join(sorted(WINDOW_PRESETS))
        raise MedsamError(f"Unknown CT window {window!r}; choose one of: {valid}.") from None
    return level - width / 2.0, level + width / 2.0


def window_to_uint8(values: np.ndarray, window: str) -> np.ndarray:
    """Apply a named CT window; only meaningful when values are Hounsfield units."""
    low, high = window_bounds(window)
    return _scale_to_uint8(values, low, high)


def percentile_bounds(values: np.ndarray) -> tuple[float, float]:
    """Robust display range that ignores a few extreme voxels (metal, air, noise).

    Non-finite values are skipped so a stray NaN cannot poison the whole range.
    """
    data = np.asarray(values)
    if data.dtype.kind == "f":
        data = data[np.isfinite(data)]
    if data.size == 0:
        return 0.0, 0.0
    low, high = np.percentile(data, [_LOW_PERCENTILE, _HIGH_PERCENTILE])
    return float(low), float(high)


def percentile_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Scale with precomputed bounds so every slice of a volume shares one contrast."""
    return _scale_to_uint8(values, float(low), float(high))
