"""3-D label maps: one annotation per (volume, label), with the revisions, conflicts and review of 2-D masks.

A label map is stored as a bit-packed boolean (Z, H, W) array in a compressed
npz (``shape`` and ``packed``), read back with ``allow_pickle=False``: a
155-slice 240x240 map is about 1 MB packed before deflate, a few KB after,
where a uint8 array would be eight times larger before compression. The
revision, conflict and review rules are those of ``annotations`` itself
(``write_revision``; ``submit``/``approve``/``reject`` take its id).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.store.blobs import BlobStore
from portal.store.errors import NotFoundError, StoreError
from portal.store.models import Annotation, AnnotationRevision, User
from portal.store.models import Volume as VolumeRow
from portal.store.services.annotations import check_label, get_revision, write_revision
from portal.store.services.projects import get_project
from portal.store.services.volumes import get_volume


def label_map_to_bytes(mask: np.ndarray) -> bytes:
    arr = np.asarray(mask)
    if arr.ndim != 3:
        raise StoreError(f"a 3-D label map is a (Z, H, W) array, got shape {arr.shape}")
    buf = io.BytesIO()
    np.savez_compressed(buf, shape=np.asarray(arr.shape, dtype=np.int64), packed=np.packbits(arr > 0, axis=None))
    return buf.getvalue()


def label_map_from_bytes(data: bytes) -> np.ndarray:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        shape = tuple(int(v) for v in npz["shape"])
        packed = npz["packed"]
    count = int(np.prod(shape))
    return np.unpackbits(packed, count=count).astype(bool).reshape(shape)


def check_shape(volume: VolumeRow, mask: np.ndarray) -> None:
    want = (volume.depth, volume.height, volume.width)
    if tuple(np.shape(mask)) != want:
        raise StoreError(f"the label map is {tuple(np.shape(mask))} but volume {volume.id} is {want} (Z, H, W)")


def save_label_map(
    db: Session,
    blobs: BlobStore,
    actor: User,
    volume_id: int,
    label: str,
    mask: np.ndarray,
    base_revision: int,
    *,
    model_version_id: int | None = None,
    prompt: dict[str, Any] | None = None,
    comment: str | None = None,
    submit: bool = False,
) -> AnnotationRevision:
    """Append revision ``base_revision + 1`` of the volume's ``label`` map; a stale base is a ``ConflictError``."""
    volume = get_volume(db, actor, volume_id)
    project = get_project(db, actor, volume.project_id, what=f"volume {volume_id}")
    check_label(project, label)
    check_shape(volume, mask)
    # Blob before row: content-addressed, so a crash leaves an orphan for gc, never a dangling row.
    blob = blobs.put_bytes(label_map_to_bytes(mask))
    return write_revision(
        db,
        actor,
        {"volume_id": volume_id},
        volume.project_id,
        label,
        base_revision,
        blob,
        submit=submit,
        model_version_id=model_version_id,
        prompt=prompt,
        comment=comment,
    )


def find_annotation(db: Session, actor: User | None, volume_id: int, label: str) -> Annotation | None:
    get_volume(db, actor, volume_id)
    return db.scalar(select(Annotation).where(Annotation.volume_id == volume_id, Annotation.label == label))


def read_label_map(
    db: Session, blobs: BlobStore, actor: User, volume_id: int, label: str, revision: int | None = None
) -> tuple[Annotation, AnnotationRevision, np.ndarray]:
    """The label map at ``revision`` (default the latest), with its annotation and revision rows."""
    annotation = find_annotation(db, actor, volume_id, label)
    if annotation is None or annotation.current_revision == 0:
        raise NotFoundError(f"volume {volume_id} has no '{label}' label map yet")
    number = annotation.current_revision if revision is None else revision
    row = get_revision(db, actor, annotation.id, number)
    return annotation, row, label_map_from_bytes(blobs.get_bytes(row.blob_sha))


def volume_annotations(db: Session, actor: User, volume_id: int) -> list[Annotation]:
    """Every label map of the volume (one per label), by label."""
    get_volume(db, actor, volume_id)
    return list(db.scalars(select(Annotation).where(Annotation.volume_id == volume_id).order_by(Annotation.label)))


def combined_labels(
    db: Session, blobs: BlobStore, actor: User, volume_id: int, *, approved_only: bool = False
) -> tuple[np.ndarray, dict[int, str]]:
    """One uint8 (Z, H, W) map of every label at its latest revision, valued by the project's label order
    (1 for the first class, ...), for NIfTI and DICOM-SEG export; a later class wins where maps overlap."""
    volume = get_volume(db, actor, volume_id)
    project = get_project(db, actor, volume.project_id, what=f"volume {volume_id}")
    order = {c["name"]: n for n, c in enumerate(project.label_classes, 1)}
    out = np.zeros((volume.depth, volume.height, volume.width), np.uint8)
    names: dict[int, str] = {}
    for annotation in sorted(volume_annotations(db, actor, volume_id), key=lambda a: order.get(a.label, 0)):
        if annotation.current_revision == 0 or annotation.label not in order:
            continue
        if approved_only and annotation.status.value != "approved":
            continue
        row = get_revision(db, actor, annotation.id, annotation.current_revision)
        value = order[annotation.label]
        out[label_map_from_bytes(blobs.get_bytes(row.blob_sha))] = value
        names[value] = annotation.label
    return out, names
