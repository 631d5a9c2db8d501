"""Model versions as the API shows them: with their validation scores and whether each is active."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from portal.web.schemas.common import IsoDatetime


class ActivateIn(BaseModel):
    force: bool = False


class EvaluationPublic(BaseModel):
    """A version's score on the project's frozen validation images (absent: not evaluated yet)."""

    val_dice: float | None = None
    val_nsd: float | None = None


class ModelVersionPublic(EvaluationPublic):
    id: int
    name: str
    family: str
    project_id: int | None
    parent_id: int | None
    training_job_id: int | None = Field(description="the fine-tune (a job of kind finetune) that made it")
    metrics: dict[str, Any]
    active: bool
    created_at: IsoDatetime

    @classmethod
    def of(cls, version: Any, active_id: int, evaluation: Any | None, **extra: Any) -> Any:
        fields = {
            k: getattr(version, k)
            for k in ModelVersionPublic.model_fields
            if k not in ("active", "val_dice", "val_nsd")
        }
        return cls(
            **fields,
            active=version.id == active_id,
            val_dice=evaluation.val_dice if evaluation else None,
            val_nsd=evaluation.val_nsd if evaluation else None,
            **extra,
        )


class ModelListPublic(BaseModel):
    active_model_version_id: int
    versions: list[ModelVersionPublic]


class UploadedVersionPublic(ModelVersionPublic):
    evaluation_job_id: int | None = Field(description="the queued evaluation; None when it could not be queued")
    evaluation_note: str | None = Field(description="why no evaluation is queued yet")


class ActiveVersionPublic(BaseModel):
    project_id: int
    active_model_version_id: int | None
