"""What fine-tuning trains on: approved 2-D masks, and approved 3-D label maps as 2-D samples per slice.

MedSAM is a 2-D model prompted by a box, so a 3-D label map trains it slice by
slice: each slice a map marks becomes one sample (per label), keyed by that
slice's image row, exactly like a 2-D mask drawn on that slice. Slices the map
leaves empty are skipped, not capped: with no object there is no box to prompt
and no target (the trainer would drop them anyway), so counting them would only
inflate "images with approved labels" and the share validation takes, and
MedSAM's own preprocessing (``medsam prepare``) drops them too. A slice row's
``sha256`` is its volume's, and that is the split's group, so a volume's slices
all land on one side of the train/validation split, whether they were labelled
in 2-D or in 3-D.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.store.blobs import BlobStore
from portal.store.models import Annotation, AnnotationRevision, AnnotationStatus, Image, at_current_revision
from portal.store.models import Volume as VolumeRow
from portal.store.services.masks import load_mask
from portal.store.services.volumes import slice_rows
from portal.store.services.volumes_labels import label_map_from_bytes

DECODED_MAPS = 4  # 3-D label maps kept decoded per process while a fine-tune reads their slices

_decoded: OrderedDict[str, np.ndarray] = OrderedDict()
_decoded_lock = threading.Lock()


@dataclass(frozen=True)
class TrainingRow:
    """One approved label on one 2-D image or slice. ``z`` None: ``blob`` is the image's 2-D mask;
    otherwise ``blob`` is a 3-D label map and the sample is its slice ``z`` (``image`` is that slice's row)."""

    image: Image
    label: str
    blob: str
    z: int | None = None


def training_set(db: Session, project_id: int) -> list[tuple[Image, str, str]]:
    """(image, label, mask blob) of every approved annotation, at its approved revision."""
    rows = db.execute(
        select(Image, Annotation.label, AnnotationRevision.blob_sha)
        .join(Annotation, Annotation.image_id == Image.id)
        .join(
            AnnotationRevision,
            at_current_revision(),
        )
        .where(Image.project_id == project_id, Annotation.status == AnnotationStatus.approved)
        .order_by(Image.id, Annotation.label)
    ).all()
    return [(image, label, blob) for image, label, blob in rows]


def training_rows(db: Session, blobs: BlobStore, project_id: int) -> list[TrainingRow]:
    """Every approved 2-D annotation, then every slice an approved 3-D label map marks."""
    rows = [TrainingRow(image, label, blob) for image, label, blob in training_set(db, project_id)]
    return rows + volume_slice_rows(db, blobs, project_id)


def volume_slice_rows(db: Session, blobs: BlobStore, project_id: int) -> list[TrainingRow]:
    """(slice row, label, label map, z) for each slice an approved 3-D label map marks, by volume, label, z."""
    maps = db.execute(
        select(Annotation.volume_id, Annotation.label, AnnotationRevision.blob_sha)
        .join(VolumeRow, VolumeRow.id == Annotation.volume_id)
        .join(
            AnnotationRevision,
            at_current_revision(),
        )
        .where(VolumeRow.project_id == project_id, Annotation.status == AnnotationStatus.approved)
        .order_by(Annotation.volume_id, Annotation.label)
    ).all()
    out: list[TrainingRow] = []
    slices: dict[int, dict[int, Image]] = {}
    for volume_id, label, blob in maps:
        assert volume_id is not None  # joined to its volume above
        if volume_id not in slices:
            slices[volume_id] = {image.slice_index: image for image in slice_rows(db, volume_id)}
        marked = np.flatnonzero(label_map(blobs, blob).any(axis=(1, 2)))
        out += [TrainingRow(slices[volume_id][int(z)], label, blob, int(z)) for z in marked]
    return out


def row_labels(blobs: BlobStore, row: TrainingRow) -> np.ndarray:
    """The (H, W) uint8 0/1 mask of the row's label on its image or slice."""
    if row.z is None:
        return load_mask(blobs, row.blob)
    mask: np.ndarray = label_map(blobs, row.blob)[row.z].astype(np.uint8)
    return mask


def label_map(blobs: BlobStore, blob: str) -> np.ndarray:
    """A decoded 3-D label map, kept in a small per-process LRU: a fine-tune reads it once per marked slice
    and epoch, and decoding a packed 155-slice map each time would cost more than the slice itself."""
    with _decoded_lock:
        found = _decoded.get(blob)
        if found is not None:
            _decoded.move_to_end(blob)
            return found
    decoded = label_map_from_bytes(blobs.get_bytes(blob))
    with _decoded_lock:
        _decoded[blob] = decoded
        while len(_decoded) > DECODED_MAPS:
            _decoded.popitem(last=False)
    return decoded
