"""A stored model output, as the API shows it (the pixels are the .npy and .png routes)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from portal.web.schemas.common import IsoDatetime


class MaskPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    image_id: int
    model_version_id: int | None
    prompt: dict[str, Any] | None
    predicted_iou: float | None
    job_id: int | None
    item_index: int | None
    created_at: IsoDatetime


NPY = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
PNG = {"image/png": {"schema": {"type": "string", "format": "binary"}}}
ZIP = {"application/zip": {"schema": {"type": "string", "format": "binary"}}}
