"""Queued work as the API shows it, and the bodies that queue it."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from portal.store.services.submissions import MAX_BATCH_ITEMS, PrelabelItem
from portal.web.schemas.common import IsoDatetime

STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class JobPublic(BaseModel):
    id: int
    kind: str = Field(description="encode_image, segment_batch, precompute, evaluate or finetune")
    project_id: int | None
    state: str = Field(description="queued, running, succeeded, failed or cancelled")
    progress: dict[str, Any]
    result: dict[str, Any]
    error: str | None
    params: dict[str, Any]
    attempts: int
    cancel_requested: bool
    created_at: IsoDatetime
    started_at: IsoDatetime | None
    finished_at: IsoDatetime | None

    @classmethod
    def of(cls, job: Any) -> JobPublic:
        """A fine-tune (kind ``finetune``) as ``TrainingJobPublic``, with its per-epoch metrics."""
        fields = {k: getattr(job, k) for k in JobPublic.model_fields if k not in ("kind", "state")}
        fields.update(kind=job.kind.value, state=job.state.value)
        if job.kind.value == "finetune":
            return TrainingJobPublic(**fields, epoch_metrics=job.epoch_metrics or [])
        return cls(**fields)


class TrainingJobPublic(JobPublic):
    epoch_metrics: list[Any] = Field(description="one record per finished epoch: losses, validation Dice/NSD")


# What a route that may answer any kind declares: a fine-tune keeps its epoch_metrics, other kinds have none.
AnyJobPublic = Annotated[TrainingJobPublic | JobPublic, Field(union_mode="left_to_right")]


class PrelabelIn(BaseModel):
    model_config = STRICT
    items: list[PrelabelItem] = Field(
        min_length=1,
        max_length=MAX_BATCH_ITEMS,
        description='[{"image_id": 1, "boxes": [[x0, y0, x1, y1]]}, ...]; one box (or points) per item',
    )
    model_version_id: int | None = Field(None, description="default: the project's active version")


class PrecomputeIn(BaseModel):
    model_config = STRICT
    model_version_id: int | None = Field(None, description="default: the project's active version")
