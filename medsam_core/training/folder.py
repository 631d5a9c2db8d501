"""Training samples from a folder: the seed's ``imgs/`` + ``gts/`` npy layout or ``images/`` + ``masks/`` PNGs.

Grouping for the split: files named ``<case>-<slice>`` (what ``medsam prepare``
and the seed's preprocessing write for volumes) group by case, so one volume's
slices stay on one side; other files group by their content hash, so an image
copied under two names cannot be both trained and validated on.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from medsam_core.evaluation import find_pairs, read_labels
from medsam_core.imageio import DEFAULT_MAX_PIXELS, read_image
from medsam_core.training.data import Sample

SLICE_NAME = re.compile(r"^(?P<case>.+)-(?P<slice>\d+)$")


def _content_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def folder_samples(data_dir: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Sample]:
    samples = []
    for pair in find_pairs(data_dir):
        match = SLICE_NAME.match(pair.stem)
        group = f"case:{match['case']}" if match else f"sha:{_content_hash(pair.image)}"
        samples.append(Sample(
            key=pair.stem, group=group,
            load_rgb=lambda p=pair.image: read_image(p, max_pixels=max_pixels).display(),
            load_labels=lambda p=pair.mask: read_labels(p),
        ))
    return samples
