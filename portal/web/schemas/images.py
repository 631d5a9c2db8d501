"""Images as the API shows them: the row, its annotation states per label, and an upload's slices."""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, Field

from portal.web.schemas.common import IsoDatetime


class AnnotationState(BaseModel):
    """Where one label's annotation of an image stands."""

    annotation_id: int
    status: str
    revision: int
    author: str | None
    updated_at: IsoDatetime


class ImagePublic(BaseModel):
    id: int
    project_id: int
    filename: str
    width: int
    height: int
    slice_index: int
    num_slices: int
    window: str | None
    created_at: IsoDatetime
    annotations: dict[str, AnnotationState] = Field(default_factory=dict, description="by label class name")

    @classmethod
    def of(cls, image: Any, states: dict[str, AnnotationState] | None = None, **extra: Any) -> Self:
        """From an ``Image`` row; the states come from one query for the whole project, not from the row."""
        fields = {k: getattr(image, k) for k in ImagePublic.model_fields if k != "annotations"}
        return cls(**fields, annotations=states or {}, **extra)


class SliceRef(BaseModel):
    id: int
    slice_index: int


class UploadedImagePublic(ImagePublic):
    """The first row of an upload; a volume's rows, one per slice, are all in ``slices``."""

    slices: list[SliceRef]


class SegmentIn(BaseModel):
    boxes: list[list[float]] | None = Field(None, description="[[x0, y0, x1, y1], ...] in image pixels")
    points: list[list[float]] | None = Field(None, description="[[x, y, 1|0], ...]: include or exclude")
    model_version_id: int | None = Field(None, description="default: the project's active version")


class SegmentTiming(BaseModel):
    encode_wait: float
    decode: float
    total: float


class SegmentPublic(BaseModel):
    """A proposed mask: stored as ``mask_id``, a label map 1..K for K boxes."""

    mask_id: int
    image_id: int
    area: int
    predicted_iou: float = Field(description="the mean over the boxes")
    model_version_id: int
    cache_hit: bool
    areas: list[int] = Field(description="one per box")
    predicted_ious: list[float] = Field(description="one per box")
    timing_ms: SegmentTiming


class ImportReportPublic(BaseModel):
    images: int
    annotations: int
    skipped: list[str]
    notes: list[str] = Field(
        default_factory=list,
        description="what was inferred, e.g. the label of a 0/255 mask in a project of several labels",
    )
