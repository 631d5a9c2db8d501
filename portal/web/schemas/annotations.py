"""Saving and reviewing annotations, and their revision history."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from portal.web.schemas.common import IsoDatetime


class AnnotationIn(BaseModel):
    mask_id: int | None = Field(None, description="a mask from /segment, saved as proposed")
    mask_png_base64: str | None = Field(
        None, description="a corrected mask: PNG at the image's size, non-zero (or opaque, non-black) = foreground"
    )
    base_revision: int = Field(ge=0, description="the revision you started from; 0 for a new annotation")
    status: Literal["draft", "submitted"] = "draft"
    comment: str | None = None


class ReviewIn(BaseModel):
    decision: Literal["approve", "reject"]
    comment: str | None = None


class AnnotationSaved(BaseModel):
    annotation_id: int
    revision: int
    status: str


class AnnotationReviewed(BaseModel):
    annotation_id: int
    status: str
    revision: int


class RevisionPublic(BaseModel):
    number: int
    author: str | None = Field(description="who saved it; null once the account is deleted")
    created_at: IsoDatetime
    model_version_id: int | None
    base_mask_id: int | None
    prompt: dict[str, Any] | None
    comment: str | None
