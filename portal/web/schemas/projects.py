"""Projects and their members, in and out."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from portal.web.schemas.common import IsoDatetime


class ProjectIn(BaseModel):
    name: str
    modality: str = "other"
    labels: list[str | dict[str, Any]] = Field(
        default_factory=lambda: ["lesion"], description='label class names, or {"name", "color": "#rrggbb"}'
    )
    keep_original_names: bool = Field(False, description="keep DICOM upload names (they often name the patient)")
    allow_self_review: bool = Field(False, description="let a reviewer approve their own work (one-person projects)")


class ProjectSettingsIn(BaseModel):
    """Only what may change after creation; anything else is a 422, not silently ignored."""

    model_config = ConfigDict(extra="forbid")
    keep_original_names: bool | None = None
    allow_self_review: bool | None = None


class MemberIn(BaseModel):
    username: str
    role: str | None = Field(None, description="optional check: roles belong to accounts, not projects")


class LabelClass(BaseModel):
    name: str
    color: str | None = None


class ProjectPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    modality: str
    labels: list[str] = Field(description="the label class names, in order")
    label_classes: list[dict[str, Any]] = Field(description='[{"name", "color": "#rrggbb"}, ...]')
    active_model_version_id: int | None
    keep_original_names: bool
    allow_self_review: bool
    created_at: IsoDatetime

    @classmethod
    def of(cls, project: Any) -> ProjectPublic:
        """``labels`` is derived from the row's label classes; everything else is read as it is."""
        return cls.model_validate(
            {
                **{k: getattr(project, k) for k in cls.model_fields if k != "labels"},
                "labels": [c["name"] for c in project.label_classes],
            }
        )


class MemberPublic(BaseModel):
    project_id: int
    username: str
    role: str
