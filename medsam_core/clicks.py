"""Corrective clicks, simulated the way interactive segmentation models are trained and scored
(SAM's and RITM's protocol), so one definition serves training and ``medsam evaluate --clicks``.

From a mask and the ground truth, the next click goes into the largest error region: a positive
click in the largest false-negative component, or a negative one in the largest false-positive
component, whichever is bigger, at the pixel farthest from the region's border (the image edge
counts as border). That is where an annotator clicks and where one click fixes the most. Each
round re-prompts with the box, every click so far, and the previous round's low-res logits as
``mask_input``. Everything is deterministic: no random choice, ties go to the first pixel in
row-major order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medsam_core.metrics import dice
from medsam_core.predictor import Embedding, Predictor

NOC_TARGET = 0.90  # noc90: clicks needed to reach this Dice


@dataclass(frozen=True)
class Click:
    x: int
    y: int
    positive: bool

    def as_point(self) -> tuple[float, float, int]:
        """The predictor's ``(x, y, label)``: 1 includes, 0 excludes."""
        return float(self.x), float(self.y), int(self.positive)


def _largest_component(region: np.ndarray) -> tuple[np.ndarray, int]:
    labels, count = ndimage.label(region)
    if count == 0:
        return region, 0
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    biggest = int(np.argmax(sizes))
    return labels == biggest, int(sizes[biggest])


def next_click(prediction: np.ndarray, truth: np.ndarray) -> Click | None:
    """The corrective click for ``prediction`` against ``truth`` (both (H, W) bool); None when they agree."""
    missed, missed_size = _largest_component(truth & ~prediction)
    extra, extra_size = _largest_component(prediction & ~truth)
    if missed_size == 0 and extra_size == 0:
        return None
    positive = missed_size >= extra_size
    region = missed if positive else extra
    # Zero padding makes the image edge a border, so a click never hugs the frame.
    depth = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return Click(int(x), int(y), positive)


@dataclass
class ClickRun:
    dice: list[float]  # index 0: the box alone; index k: after k clicks
    clicks: list[Click]

    def clicks_to(self, target: float = NOC_TARGET) -> int:
        """Clicks needed to reach ``target`` Dice; the cap (the clicks allowed) when never reached."""
        for k, value in enumerate(self.dice):
            if value >= target:
                return k
        return len(self.dice) - 1


def simulate(
    predictor: Predictor, embedding: Embedding, box: Sequence[float], truth: np.ndarray, clicks: int
) -> ClickRun:
    """Box, then up to ``clicks`` corrective clicks on one object; Dice after each round.

    When the mask is already perfect no click is possible, so the remaining rounds repeat its Dice
    (a list of fixed length keeps per-round means comparable across images).
    """
    prediction = predictor.decode(embedding, boxes=[list(box)])
    scores, done = [dice(prediction.masks[0], truth)], []
    for _ in range(clicks):
        click = next_click(prediction.masks[0], truth)
        if click is None:
            scores.append(scores[-1])
            continue
        done.append(click)
        prediction = predictor.decode(
            embedding,
            boxes=[list(box)],
            points=[c.as_point() for c in done],
            mask_input=prediction.low_res_logits[0:1],
        )
        scores.append(dice(prediction.masks[0], truth))
    return ClickRun(dice=scores, clicks=done)
