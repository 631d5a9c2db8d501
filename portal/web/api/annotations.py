"""Saving, reviewing and reading annotations. A stale save is a 409 that names the newer revision."""

from __future__ import annotations

import base64
import binascii
import io
from typing import Literal

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from PIL import Image as PILImage
from pydantic import BaseModel, Field
from sqlalchemy import select

from portal.store.errors import NotFoundError, StoreError
from portal.store.models import AnnotationRevision, User
from portal.store.services import annotations
from portal.store.services.images import get_image
from portal.store.services.masks import get_mask, load_mask
from portal.web.api import PREFIX, store_of
from portal.web.api.masks import download, npy_bytes, png_bytes
from portal.web.auth import current_user

router = APIRouter(prefix=PREFIX, tags=["annotations"])


class AnnotationIn(BaseModel):
    mask_id: int | None = Field(None, description="a mask from /segment, saved as proposed")
    mask_png_base64: str | None = Field(None, description="a corrected mask: PNG at the image's size, "
                                                          "non-zero (or opaque, non-black) = foreground")
    base_revision: int = Field(ge=0, description="the revision you started from; 0 for a new annotation")
    status: Literal["draft", "submitted"] = "draft"
    comment: str | None = None


class ReviewIn(BaseModel):
    decision: Literal["approve", "reject"]
    comment: str | None = None


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


@router.put("/images/{iid}/annotations/{label}")
def save_annotation(iid: int, label: str, body: AnnotationIn, request: Request,
                    user: User = Depends(current_user)) -> dict:
    store = store_of(request)
    if (body.mask_id is None) == (body.mask_png_base64 is None):
        raise StoreError("give exactly one of mask_id and mask_png_base64")
    image = get_image(store, user, iid)
    base_mask_id = version_id = prompt = None
    if body.mask_id is not None:
        proposal = get_mask(store, user, body.mask_id)
        if proposal.image_id != iid:
            raise StoreError(f"mask {body.mask_id} belongs to image {proposal.image_id}, not {iid}")
        mask = load_mask(store, proposal.blob_sha) > 0
        base_mask_id, version_id, prompt = proposal.id, proposal.model_version_id, proposal.prompt
    else:
        mask = _png_mask(body.mask_png_base64, image.width, image.height)
    revision = annotations.save_revision(store, user, iid, label, mask, body.base_revision,
                                         base_mask_id=base_mask_id, model_version_id=version_id, prompt=prompt,
                                         comment=body.comment, submit=body.status == "submitted")
    return {"annotation_id": revision.annotation_id, "revision": revision.number, "status": body.status}


@router.post("/annotations/{aid}/review")
def review(aid: int, body: ReviewIn, request: Request, user: User = Depends(current_user)) -> dict:
    store = store_of(request)
    if body.decision == "approve":
        annotation = annotations.approve(store, user, aid, body.comment)
    else:
        annotation = annotations.reject(store, user, aid, body.comment or "")
    return {"annotation_id": annotation.id, "status": annotation.status.value,
            "revision": annotation.current_revision}


@router.get("/annotations/{aid}/revisions")
def revisions(aid: int, request: Request, user: User = Depends(current_user)) -> list[dict]:
    store = store_of(request)
    rows = annotations.revisions(store, user, aid)
    with store.transaction() as session:
        names = dict(session.execute(select(User.id, User.username).where(
            User.id.in_({r.author_id for r in rows if r.author_id}))).all())
    return [{"number": r.number, "author": names.get(r.author_id), "created_at": r.created_at.isoformat(),
             "model_version_id": r.model_version_id, "base_mask_id": r.base_mask_id, "prompt": r.prompt,
             "comment": r.comment} for r in rows]


def _revision(store, user: User, aid: int, number: int) -> AnnotationRevision:
    found = next((r for r in annotations.revisions(store, user, aid) if r.number == number), None)
    if found is None:
        raise NotFoundError(f"annotation {aid} has no revision {number}")
    return found


@router.get("/annotations/{aid}/revisions/{number}.npy", response_class=Response)
def revision_npy(aid: int, number: int, request: Request, user: User = Depends(current_user)) -> Response:
    store = store_of(request)
    blob = _revision(store, user, aid, number).blob_sha
    return download(npy_bytes(load_mask(store, blob)), "application/octet-stream", f"annotation_{aid}_r{number}.npy")


@router.get("/annotations/{aid}/revisions/{number}.png", response_class=Response)
def revision_png(aid: int, number: int, request: Request, user: User = Depends(current_user)) -> Response:
    store = store_of(request)
    blob = _revision(store, user, aid, number).blob_sha
    return download(png_bytes(load_mask(store, blob)), "image/png", f"annotation_{aid}_r{number}.png")
