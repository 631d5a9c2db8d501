"""The one decoded-image type every reader in ``medsam_core.imageio`` produces, and its display.

Kept apart from the readers: the readers are about untrusted files, this is about
what a valid image is and how a slice of it becomes the 8-bit RGB the model sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from medsam_core.errors import InvalidImageError
from medsam_core.windows import percentile_bounds, percentile_to_uint8, window_to_uint8


@dataclass(frozen=True, eq=False)
class MedicalImage:
    """A decoded image in a format-independent layout.

    ``eq=False`` keeps identity equality and hashing: comparing or hashing
    large arrays field-wise would be slow or raise.
    """

    pixels: np.ndarray
    raw: bool
    source_format: str

    def __post_init__(self) -> None:
        # Constructed directly by tests and callers too, so the invariants the
        # display path relies on are enforced here rather than only in readers.
        px = self.pixels
        if not isinstance(px, np.ndarray) or px.dtype.kind not in "uif":
            raise InvalidImageError("MedicalImage.pixels must be a numeric numpy array.")
        if not (px.ndim == 3 or (px.ndim == 4 and px.shape[-1] == 3)):
            raise InvalidImageError(f"MedicalImage.pixels must be (S, H, W) or (S, H, W, 3), got shape {px.shape}.")
        if not self.raw and px.dtype != np.uint8:
            raise InvalidImageError("A non-raw MedicalImage must hold uint8 pixels.")

    @property
    def num_slices(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[2])

    @property
    def window_applies(self) -> bool:
        """Lets callers warn that a requested CT window will be ignored for 8-bit images."""
        return self.raw

    @cached_property
    def _display_bounds(self) -> tuple[float, float]:
        # Computed once over the whole volume so scrolling through slices does
        # not flicker in contrast; cached_property writes to __dict__ directly,
        # which a frozen dataclass allows.
        px = self.pixels
        if px.dtype.kind == "f":
            finite = px[np.isfinite(px)]
            if finite.size and float(finite.min()) >= 0.0 and float(finite.max()) <= 1.0:
                return 0.0, 1.0  # already normalised: plain x255
        return percentile_bounds(px)

    def display(self, slice_index: int | None = None, window: str | None = None) -> np.ndarray:
        """Produce the 8-bit RGB slice the model and viewer consume."""
        index = self.num_slices // 2 if slice_index is None else slice_index
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not (0 <= index < self.num_slices):
            raise InvalidImageError(
                f"Slice index {slice_index!r} is out of range: this image has "
                f"{self.num_slices} slice(s), valid indices are 0 to {self.num_slices - 1}."
            )
        plane = self.pixels[int(index)]
        if not self.raw:
            out = plane
        elif window is not None:
            out = window_to_uint8(plane, window)
        else:
            out = percentile_to_uint8(plane, *self._display_bounds)
        if out.ndim == 2:
            out = np.repeat(out[:, :, None], 3, axis=2)
        return np.ascontiguousarray(out, dtype=np.uint8)
