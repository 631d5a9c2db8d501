"""Masks as compressed npy blobs, and the model outputs that proposed them."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from portal.store.errors import NotFoundError, StoreError
from portal.store.models import Image, Mask, User
from portal.store.services.audit import record
from portal.store.services.projects import get_project
from portal.store.store import Store


def mask_to_bytes(mask: np.ndarray) -> bytes:
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise StoreError(f"a mask is a 2-D array, got shape {arr.shape}")
    buf = io.BytesIO()
    np.savez_compressed(buf, mask=(arr > 0).astype(np.uint8))
    return buf.getvalue()


def mask_from_bytes(data: bytes) -> np.ndarray:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return npz["mask"]


def load_mask(store: Store, blob_sha: str) -> np.ndarray:
    return mask_from_bytes(store.blobs.get_bytes(blob_sha))


def check_mask_shape(image: Image, mask: np.ndarray) -> None:
    if tuple(np.shape(mask)) != (image.height, image.width):
        raise StoreError(f"mask is {np.shape(mask)} but image {image.id} is {image.height}x{image.width} (HxW)")


def record_mask(store: Store, actor: User | None, image_id: int, mask: np.ndarray, model_version_id: int | None,
                prompt: dict[str, Any], predicted_iou: float | None = None, *, job_id: int | None = None,
                item_index: int | None = None) -> Mask:
    """Store a model output. With ``job_id``/``item_index`` it is idempotent: a redelivered
    batch task gets the existing row back instead of a duplicate."""
    with store.transaction() as session:
        image = session.get(Image, image_id)
        if image is None:
            raise NotFoundError(f"image {image_id} does not exist")
        if actor is not None:
            get_project(session, actor, image.project_id)
        check_mask_shape(image, mask)
    blob = store.blobs.put_bytes(mask_to_bytes(mask))  # blob first: a crash leaves an orphan, not a dangling row
    try:
        with store.transaction() as session:
            row = Mask(image_id=image_id, model_version_id=model_version_id, prompt=prompt,
                       predicted_iou=None if predicted_iou is None else float(predicted_iou), blob_sha=blob,
                       created_by=actor.id if actor else None, job_id=job_id, item_index=item_index)
            session.add(row)
            session.flush()
            record(session, actor, "mask.create", "mask", row.id, image.project_id, image_id=image_id, job_id=job_id)
        return row
    except IntegrityError:
        if job_id is None:
            raise
        existing = job_item_mask(store, job_id, item_index)
        if existing is None:
            raise
        return existing


def job_item_mask(store: Store, job_id: int, item_index: int) -> Mask | None:
    with store.transaction() as session:
        return session.scalar(select(Mask).where(Mask.job_id == job_id, Mask.item_index == item_index))
