"""Fine-tuning requests, the frozen validation set, evaluations and the promotion gate.

Every function works in the caller's transaction (``db``); settings and blobs
are passed where they are needed.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from medsam_core.models import FAMILIES
from medsam_core.training.data import Sample, split_by_group
from medsam_core.training.modes import DEFAULT_CLICK_ROUNDS, MODES, Mode, check_mode, unknown_mode_message
from portal.store.blobs import BlobStore
from portal.store.errors import PermissionDeniedError, StoreError
from portal.store.models import Job, JobKind, ModelActivation, ModelEvaluation, Project, Role, User
from portal.store.services import jobs
from portal.store.services.audit import record
from portal.store.services.model_versions import active_version, base_version, set_active, usable_version
from portal.store.services.projects import existing_project, get_project
from portal.store.services.training_rows import TrainingRow, training_rows
from portal.store.services.users import require_role
from portal.store.settings import Settings


class FinetuneParams(BaseModel):
    """The one definition of a fine-tune's parameters: the API's body schema and the service's check.

    Strict, so a string, a list or ``true`` where a number belongs is refused,
    not coerced; NaN and infinities are refused too. A null means "the default".
    Each description completes "<name> must be ...", the service's message.
    """

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

    mode: Mode = Field("decoder", description=" or ".join(MODES))
    epochs: int = Field(5, ge=1, le=1000, description="a whole number from 1 to 1000")
    lr: float = Field(1e-4, gt=0, lt=1, description="a number between 0 and 1 (MedSAM uses 1e-4)")
    batch_size: int = Field(8, ge=1, le=256, description="a whole number from 1 to 256")
    bbox_shift: float = Field(20.0, ge=0, le=1024, description="0 to 1024 pixels (at 1024x1024)")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="a whole number from 0 to 4294967295")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="a number between 0 and 1")
    early_stopping: int | None = Field(None, ge=1, le=1000, description="a whole number of epochs from 1 to 1000")
    click_rounds: int = Field(DEFAULT_CLICK_ROUNDS, ge=0, le=10, description="a whole number from 0 to 10")
    parent_version_id: int | None = Field(None, ge=1, description="a model version id; default: the active one")

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


def parse_params(params: Any) -> dict[str, Any]:
    """A dict from the UI or the CLI, checked by the same model the API declares; 400-style message on error."""
    try:
        return FinetuneParams.model_validate(params).model_dump()
    except ValidationError as exc:
        errors = exc.errors()
        unknown = sorted(str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden")
        if unknown:
            raise StoreError(f"unknown training parameter(s): {', '.join(unknown)}") from None
        first = errors[0]
        if not first["loc"]:
            raise StoreError('training parameters are a JSON object such as {"epochs": 5}') from None
        name = str(first["loc"][0])
        if name == "mode":
            raise StoreError(unknown_mode_message(first["input"])) from None
        raise StoreError(
            f"{name.replace('_', ' ')} must be {FinetuneParams.model_fields[name].description}; "
            f"got {repr(first['input'])[:60]}"
        ) from None


def training_gpu(settings: Settings) -> bool:
    if settings.training_gpu is not None:
        return settings.training_gpu
    import torch

    return torch.cuda.is_available()


def validate_request(
    db: Session, blobs: BlobStore, settings: Settings, actor: User, project_id: int, params: dict[str, Any]
) -> dict[str, Any]:
    """Every reason a fine-tune would fail, found before anything is queued.

    Membership first (404 outside one's projects), then role (403), then the parameters.
    """
    get_project(db, actor, project_id)
    require_role(actor, Role.admin, Role.reviewer, doing="queue fine-tuning")
    clean = parse_params(params)
    check_mode(
        clean["mode"],
        training_gpu(settings),
        settings.allow_full_finetune_without_gpu,
        remedy=" worker, and none is configured (MEDSAM_TRAINING_GPU); use decoder mode, which trains on a "
        "CPU in seconds per epoch",
        error=StoreError,
    )
    parent = (
        active_version(db, project_id)
        if clean.get("parent_version_id") is None
        else usable_version(db, actor, clean["parent_version_id"], project_id)
    )
    if parent.family not in FAMILIES:
        raise StoreError(f"unknown model family '{parent.family}'")
    if parent.family != "lite" and (parent.checkpoint_blob is None or not blobs.exists(parent.checkpoint_blob)):
        raise StoreError(
            f"model version {parent.id} ({parent.family}) has no checkpoint in the blob store; "
            "register the ViT checkpoint first"
        )
    rows = training_rows(db, blobs, project_id)
    labelled = {row.image.id for row in rows}
    if len(labelled) < settings.min_training_images:
        raise StoreError(
            f"the project has {len(labelled)} images with approved labels; fine-tuning needs at least "
            f"{settings.min_training_images}"
        )
    _check_training_split(db, settings.min_training_images, project_id, rows, clean)
    clean["parent_version_id"] = parent.id
    return clean


def _check_training_split(
    db: Session, minimum: int, project_id: int, rows: list[TrainingRow], clean: dict[str, Any]
) -> None:
    """The worker's own split, done now: a job that can only fail later must be refused at once."""
    frozen = existing_project(db, project_id).validation_image_ids
    samples = [
        Sample(key=str(row.image.id), group=row.image.sha256, load_rgb=None, load_labels=None)  # type: ignore[arg-type]
        for row in rows
    ]
    if frozen is None:
        train, _ = split_by_group(samples, clean["val_fraction"], clean["seed"])
    else:
        train, _ = split_by_group(samples, 0, fixed_val_keys={str(i) for i in frozen})
    if len(train) < minimum:
        held = "the project's frozen validation set" if frozen is not None else "validation"
        raise StoreError(
            f"only {len(train)} labelled images would be left for training once {held} takes its "
            f"share; fine-tuning needs at least {minimum}. Approve more labelled images"
        )


def create_job(
    db: Session, blobs: BlobStore, settings: Settings, actor: User, project_id: int, params: dict[str, Any]
) -> Job:
    """A fine-tune: a job of kind ``finetune``, checked, queued, not yet sent."""
    clean = validate_request(db, blobs, settings, actor, project_id, params)
    return jobs.create_job(db, JobKind.finetune, clean, project_id=project_id, actor=actor)


def freeze_validation_set(db: Session, project_id: int, image_ids: list[int]) -> list[int]:
    """The first job's choice wins for the project's lifetime; later callers get the frozen set."""
    db.execute(
        update(Project)
        .where(Project.id == project_id, Project.validation_image_ids.is_(None))
        .values(validation_image_ids=sorted(image_ids))
    )
    frozen = db.scalar(select(Project.validation_image_ids).where(Project.id == project_id))
    return list(frozen or [])


def record_evaluation(
    db: Session,
    version_id: int,
    project_id: int,
    val_dice: float,
    val_nsd: float | None,
    images: int,
    *,
    replace: bool = False,
) -> ModelEvaluation:
    row = evaluation(db, version_id, project_id)
    if row is not None and not replace:
        return row
    if row is None:
        row = ModelEvaluation(
            model_version_id=version_id, project_id=project_id, val_dice=val_dice, val_nsd=val_nsd, images=images
        )
        db.add(row)
    else:
        row.val_dice, row.val_nsd, row.images = val_dice, val_nsd, images
    return row


def evaluation(db: Session, version_id: int, project_id: int) -> ModelEvaluation | None:
    return db.scalar(
        select(ModelEvaluation).where(
            ModelEvaluation.model_version_id == version_id, ModelEvaluation.project_id == project_id
        )
    )


class GateError(StoreError):
    """The candidate scored below the active version on the frozen validation images."""


def promote(db: Session, actor: User, project_id: int, version_id: int, *, force: bool = False) -> Project:
    """Activate ``version_id`` only if it is at least as good as the active version on the same images.

    The promotion and its gate record are one transaction: the caller's.
    """
    require_role(actor, Role.admin, doing="promote model versions")
    active = active_version(db, project_id)
    if active.id == version_id:
        raise StoreError(f"model version {version_id} is already active")
    candidate, current = evaluation(db, version_id, project_id), evaluation(db, active.id, project_id)
    if candidate is None or current is None:
        missing = version_id if candidate is None else active.id
        if not force:
            raise GateError(
                f"model version {missing} has not been evaluated on this project's validation images "
                "yet; an uploaded version's evaluation is queued when it is registered, and any "
                "version's can be queued (Evaluate in the UI, POST .../evaluate in the API); "
                "promote it once it has a score, or force it"
            )
    elif candidate.val_dice < current.val_dice and not force:
        raise GateError(
            f"model version {version_id} scores validation Dice {candidate.val_dice:.4f}, below the "
            f"active version {active.id}'s {current.val_dice:.4f} on the same {current.images} images; "
            "not promoted (an admin may force it)"
        )
    gate = {
        "candidate_dice": candidate.val_dice if candidate else None,
        "active_dice": current.val_dice if current else None,
        "forced": force,
    }
    project = set_active(db, actor, project_id, version_id, reason="promote.forced" if force else "promote")
    record(db, actor, "model.gate", "model_version", version_id, project_id, **gate)
    return project


def activate_earlier(db: Session, actor: User, project_id: int, version_id: int) -> Project:
    """Roll back to any version that was active before; no gate, but audited."""
    was_active = db.scalar(
        select(ModelActivation.id)
        .where(ModelActivation.project_id == project_id, ModelActivation.model_version_id == version_id)
        .limit(1)
    )
    if was_active is None and version_id != base_version(db).id:
        raise PermissionDeniedError(
            f"model version {version_id} was never active in this project; promote it through the gate instead"
        )
    return set_active(db, actor, project_id, version_id, reason="rollback")
