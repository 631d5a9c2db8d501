"""Mask downloads: npy for code (uint8, 0/1 or labels 1..K), PNG for eyes (0/255, or a palette)."""

from __future__ import annotations

import io

import numpy as np
from fastapi import APIRouter, Depends
from fastapi.responses import Response

from medsam_core.outputs import mask_png, npy_bytes
from portal.store.models import User
from portal.store.services.masks import get_mask, load_mask
from portal.web.api import PREFIX, Blobs, Db
from portal.web.auth import current_user
from portal.web.schemas.masks import NPY, PNG, MaskPublic

router = APIRouter(prefix=PREFIX, tags=["masks"])


def mask_npy_bytes(labels: np.ndarray) -> bytes:
    return npy_bytes(np.asarray(labels, dtype=np.uint8))


def png_bytes(labels: np.ndarray, palette: list[tuple[int, int, int]] | None = None) -> bytes:
    """``palette``: the label colours (``portal.store.label_colours``) a palette PNG shows its values in."""
    buf = io.BytesIO()
    mask_png(np.asarray(labels, dtype=np.uint8), int(np.max(labels, initial=0)), palette).save(buf, format="PNG")
    return buf.getvalue()


def download(data: bytes, media_type: str, filename: str) -> Response:
    return Response(data, media_type=media_type, headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@router.get("/masks/{mid}.npy", response_class=Response, responses={200: {"content": NPY}})
def mask_npy(mid: int, db: Db, blobs: Blobs, user: User = Depends(current_user)) -> Response:
    return download(
        mask_npy_bytes(load_mask(blobs, get_mask(db, user, mid).blob_sha)),
        "application/octet-stream",
        f"mask_{mid}.npy",
    )


@router.get("/masks/{mid}.png", response_class=Response, responses={200: {"content": PNG}})
def mask_png_route(mid: int, db: Db, blobs: Blobs, user: User = Depends(current_user)) -> Response:
    return download(png_bytes(load_mask(blobs, get_mask(db, user, mid).blob_sha)), "image/png", f"mask_{mid}.png")


@router.get("/masks/{mid}", response_model=MaskPublic)
def mask_info(mid: int, db: Db, user: User = Depends(current_user)) -> MaskPublic:
    return MaskPublic.model_validate(get_mask(db, user, mid))
