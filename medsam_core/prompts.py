"""Prompt validation: every box, point and mask input is checked against the image before the model sees it.

Prompts arrive as whatever a caller sent (JSON lists, arrays, junk), hence ``Any`` on the way in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from medsam_core.errors import PromptError

LOW_RES = 256


def _short(value: Any, limit: int = 80) -> str:
    """A prompt as echoed in a message: enough to recognise, never a megabyte of it."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def check_prompt_size(boxes: Any, points: Any, max_boxes: int, max_points: int) -> None:
    """Refuse oversized prompts by counting rows, before any array is built or anything decoded.

    Work per request must be bounded: each box costs a decoder pass and a full-size mask.
    """
    for values, limit, what, setting in (
        (boxes, max_boxes, "boxes", "MEDSAM_MAX_BOXES_PER_PROMPT"),
        (points, max_points, "points", "MEDSAM_MAX_POINTS_PER_PROMPT"),
    ):
        if values is None:
            continue
        try:
            count = len(values)
        except TypeError:
            raise PromptError(f"{what} must be a list, got {_short(values)}") from None
        if count > limit:
            raise PromptError(
                f"{count} {what} in one prompt; at most {limit} {what} per prompt ({setting}). "
                "Split the prompt into several requests"
            )


def _rows(values: Any, columns: int, what: str, form: str) -> np.ndarray | None:
    """Any nested sequence -> (N, columns) finite float64, or None for nothing given."""
    if values is None:
        return None
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise PromptError(f"a {what} must be numbers {form}, got {_short(values)}") from None
    if arr.size == 0:
        return None
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != columns:
        raise PromptError(f"each {what} needs exactly {columns} numbers {form}; got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise PromptError(f"{what} coordinates must be finite numbers")
    return arr


def validate_boxes(boxes: Any, size: tuple[int, int]) -> np.ndarray | None:
    """(B, 4) float32 boxes clipped to the image.

    Corners may come in either order (a drag from bottom-right to top-left is
    still a box). A box of zero width or height, or one that lies wholly
    outside the image, is refused with the image size in the message.
    """
    arr = _rows(boxes, 4, "box", "[x0, y0, x1, y1]")
    if arr is None:
        return None
    height, width = size
    out = np.empty_like(arr)
    for i, (x0, y0, x1, y1) in enumerate(arr):
        x0, x1 = sorted((x0, x1))
        y0, y1 = sorted((y0, y1))
        if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
            raise PromptError(
                f"box {i + 1} [{x0:g}, {y0:g}, {x1:g}, {y1:g}] lies wholly outside the "
                f"{width}x{height} image (x from 0 to {width}, y from 0 to {height})"
            )
        cx0, cx1 = np.clip([x0, x1], 0, width)
        cy0, cy1 = np.clip([y0, y1], 0, height)
        if cx1 - cx0 < 1 or cy1 - cy0 < 1:
            raise PromptError(
                f"box {i + 1} [{x0:g}, {y0:g}, {x1:g}, {y1:g}] has no area inside the image; "
                "draw a box at least 1 pixel wide and high"
            )
        out[i] = (cx0, cy0, cx1, cy1)
    return out.astype(np.float32)


def validate_points(points: Any, size: tuple[int, int]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(N, 3) rows of x, y, label (1 include, 0 exclude) -> (N, 2) coords and (N,) labels."""
    arr = _rows(points, 3, "point", "(x, y, label)")
    if arr is None:
        return None, None
    height, width = size
    for i, (x, y, label) in enumerate(arr):
        if label not in (0, 1):
            raise PromptError(f"point {i + 1} has label {label:g}; use 1 to include or 0 to exclude")
        if not (0 <= x <= width and 0 <= y <= height):
            raise PromptError(f"point {i + 1} ({x:g}, {y:g}) lies outside the {width}x{height} image")
    return arr[:, :2].astype(np.float32), arr[:, 2].astype(np.float32)


@dataclass(frozen=True)
class Prompts:
    """Boxes and points checked against one image size: what ``Predictor.decode_prompts`` takes.

    Checking once at the boundary (the web request, or ``Predictor.decode``)
    and handing this on means a prompt is never validated twice per request.
    """

    size: tuple[int, int]  # (height, width) the coordinates were checked and clipped against
    boxes: np.ndarray | None  # (B, 4) float32, clipped
    points: np.ndarray | None  # (N, 2) float32
    point_labels: np.ndarray | None  # (N,) float32, 1 include / 0 exclude


def validate_prompts(boxes: Any, points: Any, size: tuple[int, int]) -> Prompts:
    """At least one box or point, each inside an image of ``size``; raises ``PromptError`` otherwise."""
    box_arr = validate_boxes(boxes, size)
    pts, labels = validate_points(points, size)
    if box_arr is None and pts is None:
        raise PromptError("give at least one box [x0, y0, x1, y1] or one point [x, y, label]")
    return Prompts(size=(int(size[0]), int(size[1])), boxes=box_arr, points=pts, point_labels=labels)


def validate_mask_input(mask_input: Any, n_prompts: int) -> tuple[np.ndarray, np.ndarray]:
    """Previous low-res logits (from ``Prediction.low_res_logits``) -> (B, 1, 256, 256) and the has-mask flag."""
    if mask_input is None:
        return np.zeros((n_prompts, 1, LOW_RES, LOW_RES), np.float32), np.zeros(1, np.float32)
    flat = np.asarray(mask_input, dtype=np.float32)
    arr = flat.reshape((-1, 1, LOW_RES, LOW_RES)) if flat.size % (LOW_RES * LOW_RES) == 0 else None
    if arr is None or arr.shape[0] not in (1, n_prompts):
        raise PromptError("mask_input must be the 256x256 low-res logits of a previous prediction, one per prompt")
    if not np.isfinite(arr).all():
        raise PromptError("mask_input holds non-finite values")
    arr = np.ascontiguousarray(np.broadcast_to(arr, (n_prompts, 1, LOW_RES, LOW_RES)))
    return arr, np.ones(1, np.float32)
