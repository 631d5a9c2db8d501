"""Saving, reviewing and reading annotations. A stale save is a 409 that names the newer revision."""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np
from fastapi import APIRouter, Depends
from fastapi.responses import Response
from PIL import Image as PILImage

from portal.store.errors import StoreError
from portal.store.models import User
from portal.store.services import annotations
from portal.store.services.images import get_image
from portal.store.services.masks import load_mask
from portal.web.api import PREFIX, Blobs, Db
from portal.web.api.masks import download, mask_npy_bytes, png_bytes
from portal.web.auth import current_user
from portal.web.schemas.annotations import (
    AnnotationIn,
    AnnotationReviewed,
    AnnotationSaved,
    ReviewIn,
    RevisionPublic,
)
from portal.web.schemas.masks import NPY, PNG

router = APIRouter(prefix=PREFIX, tags=["annotations"])


def _png_mask(data: str, width: int, height: int) -> np.ndarray:
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise StoreError("mask_png_base64 is not valid base64") from None
    if not raw.startswith(b"\x89PNG\r\n\x1a\n"):
        raise StoreError("mask_png_base64 must hold a PNG")
    try:
        with PILImage.open(io.BytesIO(raw)) as im:
            if im.size != (width, height):  # checked from the header, before any pixel is decoded
                raise StoreError(f"the mask PNG is {im.size[0]}x{im.size[1]} but the image is {width}x{height}")
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = np.asarray(im.convert("RGBA"))
                return (rgba[..., 3] > 0) & (rgba[..., :3].max(axis=2) > 0)
            if im.mode == "RGB":
                return np.asarray(im).max(axis=2) > 0
            return np.asarray(im) > 0  # L, 1, P (palette index), I;16
    except (OSError, PILImage.DecompressionBombError) as exc:  # a bomb's header is refused before its pixels
        raise StoreError(f"the mask PNG cannot be read: {exc}") from None


@router.put("/images/{iid}/annotations/{label}", response_model=AnnotationSaved)
def save_annotation(
    iid: int, label: str, body: AnnotationIn, db: Db, blobs: Blobs, user: User = Depends(current_user)
) -> AnnotationSaved:
    if (body.mask_id is None) == (body.mask_png_base64 is None):  # the body's shape, not a rule
        raise StoreError("give exactly one of mask_id and mask_png_base64")
    submit = body.status == "submitted"
    if body.mask_id is not None:
        revision = annotations.save_proposal(
            db, blobs, user, iid, label, body.mask_id, body.base_revision, comment=body.comment, submit=submit
        )
    else:
        image = get_image(db, user, iid)
        mask = _png_mask(body.mask_png_base64 or "", image.width, image.height)
        revision = annotations.save_revision(
            db, blobs, user, iid, label, mask, body.base_revision, comment=body.comment, submit=submit
        )
    return AnnotationSaved(annotation_id=revision.annotation_id, revision=revision.number, status=body.status)


@router.post("/annotations/{aid}/review", response_model=AnnotationReviewed)
def review(aid: int, body: ReviewIn, db: Db, user: User = Depends(current_user)) -> AnnotationReviewed:
    if body.decision == "approve":
        annotation = annotations.approve(db, user, aid, body.comment)
    else:
        annotation = annotations.reject(db, user, aid, body.comment or "")
    return AnnotationReviewed(
        annotation_id=annotation.id, status=annotation.status.value, revision=annotation.current_revision
    )


@router.get("/annotations/{aid}/revisions", response_model=list[RevisionPublic])
def revisions(aid: int, db: Db, user: User = Depends(current_user)) -> list[RevisionPublic]:
    return [
        RevisionPublic(
            number=r.number,
            author=author,
            created_at=r.created_at,
            model_version_id=r.model_version_id,
            base_mask_id=r.base_mask_id,
            prompt=r.prompt,
            comment=r.comment,
        )
        for r, author in annotations.revision_history(db, user, aid)
    ]


@router.get("/annotations/{aid}/revisions/{number}.npy", response_class=Response, responses={200: {"content": NPY}})
def revision_npy(aid: int, number: int, db: Db, blobs: Blobs, user: User = Depends(current_user)) -> Response:
    blob = annotations.get_revision(db, user, aid, number).blob_sha
    return download(
        mask_npy_bytes(load_mask(blobs, blob)), "application/octet-stream", f"annotation_{aid}_r{number}.npy"
    )


@router.get("/annotations/{aid}/revisions/{number}.png", response_class=Response, responses={200: {"content": PNG}})
def revision_png(aid: int, number: int, db: Db, blobs: Blobs, user: User = Depends(current_user)) -> Response:
    blob = annotations.get_revision(db, user, aid, number).blob_sha
    return download(png_bytes(load_mask(blobs, blob)), "image/png", f"annotation_{aid}_r{number}.png")
