"""Volumes as the API shows them: geometry, slices, label maps, and the bodies that queue their work."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field

from portal.web.schemas.common import IsoDatetime

STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)
NIFTI = {"application/gzip": {"schema": {"type": "string", "format": "binary"}}}
DICOM = {"application/dicom": {"schema": {"type": "string", "format": "binary"}}}


class LabelMapState(BaseModel):
    """Where one label's 3-D label map stands (review it with /annotations/{annotation_id}/review)."""

    label: str
    annotation_id: int
    status: str
    revision: int
    updated_at: IsoDatetime


class VolumePublic(BaseModel):
    id: int
    project_id: int
    filename: str
    source_format: str = Field(description="nifti or dicom")
    modality: str
    window: str | None
    shape: list[int] = Field(description="(Z, H, W): slices, rows, columns")
    affine: list[list[float]] | None = Field(description="4x4, voxel (column, row, z) -> RAS+ mm (NIfTI)")
    spacing: list[float] | None = Field(description="(column, row, slice) in mm")
    orientation: str | None = Field(description="axis codes of (column, row, z), e.g. LPS")
    slice_positions: list[float] | None = Field(description="DICOM: each slice's position along the normal, mm")
    slice_image_ids: list[int] = Field(description="the image row of each slice, Z order: the 2-D tools take them")
    labels: list[LabelMapState] = Field(default_factory=list)
    created_at: IsoDatetime

    @classmethod
    def of(cls, row: Any, slice_ids: list[int], labels: list[LabelMapState], **extra: Any) -> Self:
        return cls(
            id=row.id,
            project_id=row.project_id,
            filename=row.filename,
            source_format=row.source_format,
            modality=row.modality,
            window=row.window,
            shape=[row.depth, row.height, row.width],
            affine=row.affine,
            spacing=row.spacing,
            orientation=row.orientation,
            slice_positions=row.slice_positions,
            slice_image_ids=slice_ids,
            labels=labels,
            created_at=row.created_at,
            **extra,
        )


class UploadedVolumePublic(VolumePublic):
    new: bool = Field(description="false: the project held this content already, and nothing was added")


Box = Annotated[list[float], Field(min_length=4, max_length=4)]
ZRange = Annotated[list[int], Field(min_length=2, max_length=2)]


class PropagateIn(BaseModel):
    model_config = STRICT
    label: str = Field(description="a label class of the project: the map the result is saved into")
    key_slice: int = Field(ge=0, description="the slice the box is drawn on")
    box: Box = Field(description="[x0, y0, x1, y1] in the slice's pixels")
    z_range: ZRange | None = Field(None, description="[z0, z1] inclusive; default the whole volume")
    scheme: Literal["refined", "cvpr24"] = Field("refined", description="cvpr24: the plain MedSAM-on-laptop one")
    model_version_id: int | None = Field(None, description="default: the project's active version")
    base_revision: int | None = Field(
        None, ge=0, description="the label map revision the result builds on; default the latest at submission"
    )


class LabelMapSaved(BaseModel):
    annotation_id: int
    revision: int
    status: Literal["draft", "submitted"]


class LabelUploadFields(BaseModel):
    """The form fields beside the label file of ``PUT /volumes/{id}/labels/{label}``."""

    model_config = ConfigDict(extra="ignore")
    base_revision: int = Field(ge=0, description="the revision you started from; 0 for a new label map")
    status: Literal["draft", "submitted"] = "draft"
    comment: str | None = Field(None, max_length=2000)
    value: int | None = Field(None, ge=1, le=255, description="take voxels of this value only (default: all > 0)")
