"""Training samples from a folder: the seed's ``imgs/`` + ``gts/`` npy layout or ``images/`` + ``masks/`` PNGs.

Grouping for the split: files named ``<case>-<slice>`` (what ``medsam prepare``
and the seed's preprocessing write for volumes) group by case, so one volume's
slices stay on one side; other files group by their content hash, so an image
copied under two names cannot be both trained and validated on.
"""

from __future__ import annotations

import hashlib
import re
from functools import partial
from pathlib import Path

import numpy as np

from medsam_core.evaluation import find_pairs, read_labels
from medsam_core.imageio import DEFAULT_MAX_PIXELS, read_image
from medsam_core.training.data import Sample

SLICE_NAME = re.compile(r"^(?P<case>.+)-(?P<slice>\d+)$")


def _content_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _display(path: Path, max_pixels: int) -> np.ndarray:
    return read_image(path, max_pixels=max_pixels).display()


def folder_samples(data_dir: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Sample]:
    samples = []
    for pair in find_pairs(data_dir):
        match = SLICE_NAME.match(pair.stem)
        group = f"case:{match['case']}" if match else f"sha:{_content_hash(pair.image)}"
        samples.append(
            Sample(
                key=pair.stem,
                group=group,
                load_rgb=partial(_display, pair.image, max_pixels),
                load_labels=partial(read_labels, pair.mask),
            )
        )
    return samples
