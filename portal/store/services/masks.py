"""Masks as compressed npy blobs, and the model outputs that proposed them."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from portal.store.blobs import BlobStore
from portal.store.errors import StoreError
from portal.store.models import Image, Mask, User
from portal.store.services.audit import record
from portal.store.services.projects import get_project, not_found


def mask_to_bytes(mask: np.ndarray, *, labels: bool = False) -> bytes:
    """Binary 0/1 by default (an annotation is one label class, whatever values a PNG carried);
    with ``labels`` a model's label map 1..K for K boxes is kept as it is."""
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise StoreError(f"a mask is a 2-D array, got shape {arr.shape}")
    if labels:
        if arr.dtype != bool and not np.issubdtype(arr.dtype, np.integer):
            raise StoreError(f"a label map holds whole numbers, got {arr.dtype}")
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise StoreError("a label map holds values 0..255")
        stored = arr.astype(np.uint8)
    else:
        stored = (arr > 0).astype(np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, mask=stored)
    return buf.getvalue()


def mask_from_bytes(data: bytes) -> np.ndarray:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        mask: np.ndarray = npz["mask"]
        return mask


def load_mask(blobs: BlobStore, blob_sha: str) -> np.ndarray:
    return mask_from_bytes(blobs.get_bytes(blob_sha))


def check_mask_shape(image: Image, mask: np.ndarray) -> None:
    if tuple(np.shape(mask)) != (image.height, image.width):
        raise StoreError(f"mask is {np.shape(mask)} but image {image.id} is {image.height}x{image.width} (HxW)")


def record_mask(
    db: Session,
    blobs: BlobStore,
    actor: User | None,
    image_id: int,
    mask: np.ndarray,
    model_version_id: int | None,
    prompt: dict[str, Any],
    predicted_iou: float | None = None,
    *,
    job_id: int | None = None,
    item_index: int | None = None,
    label_map: bool = False,
) -> Mask:
    """Store a model output. With ``job_id``/``item_index`` it is idempotent: a redelivered
    batch task gets the existing row back instead of a duplicate. ``label_map`` keeps values
    1..K (one per box) instead of binarising."""
    image = db.get(Image, image_id)
    if actor is not None:
        get_project(db, actor, image.project_id if image else None, what=f"image {image_id}")
    if image is None:  # only a trusted caller gets here with None: get_project refused it for an actor
        raise not_found(f"image {image_id}", trusted=True)
    check_mask_shape(image, mask)
    # Blob before row: content-addressed, so a crash leaves an orphan for gc, never a dangling row.
    blob = blobs.put_bytes(mask_to_bytes(mask, labels=label_map))
    try:
        with db.begin_nested():  # a redelivered task's duplicate must not spoil the caller's transaction
            row = Mask(
                image_id=image_id,
                model_version_id=model_version_id,
                prompt=prompt,
                predicted_iou=None if predicted_iou is None else float(predicted_iou),
                blob_sha=blob,
                created_by=actor.id if actor else None,
                job_id=job_id,
                item_index=item_index,
            )
            db.add(row)
            db.flush()
    except IntegrityError:
        existing = job_item_mask(db, job_id, item_index) if job_id is not None else None
        if existing is None:
            raise
        return existing
    record(db, actor, "mask.create", "mask", row.id, image.project_id, image_id=image_id, job_id=job_id)
    return row


def job_item_mask(db: Session, job_id: int, item_index: int | None) -> Mask | None:
    return db.scalar(select(Mask).where(Mask.job_id == job_id, Mask.item_index == item_index))


def get_mask(db: Session, actor: User | None, mask_id: int) -> Mask:
    """The mask row, if ``actor`` may see its project (``None``: a trusted caller such as the public demo)."""
    mask = db.get(Mask, mask_id)
    if actor is not None:
        image = db.get(Image, mask.image_id) if mask else None
        get_project(db, actor, image.project_id if image else None, what=f"mask {mask_id}")
    if mask is None:  # only a trusted caller gets here with None: get_project refused it for an actor
        raise not_found(f"mask {mask_id}", trusted=True)
    return mask
