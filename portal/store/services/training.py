"""Fine-tuning requests, the frozen validation set, evaluations and the promotion gate."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update

from medsam_core.models import FAMILIES
from portal.store.errors import NotFoundError, PermissionDeniedError, StoreError
from portal.store.models import (
    ModelActivation,
    ModelEvaluation,
    ModelVersion,
    Project,
    Role,
    TrainingJob,
    User,
)
from portal.store.services.annotations import training_set
from portal.store.services.audit import record
from portal.store.services.model_versions import active_version, base_version, set_active
from portal.store.services.projects import get_project
from portal.store.services.users import require_role
from portal.store.store import Store

DEFAULTS = {"mode": "decoder", "epochs": 5, "lr": 1e-4, "batch_size": 8, "bbox_shift": 20.0, "seed": 0,
            "val_fraction": 0.2, "early_stopping": None}


def training_gpu(store: Store) -> bool:
    if store.settings.training_gpu is not None:
        return store.settings.training_gpu
    import torch

    return torch.cuda.is_available()


def validate_request(store: Store, actor: User, project_id: int, params: dict[str, Any]) -> dict[str, Any]:
    """Every reason a fine-tune would fail, found before anything is queued."""
    require_role(actor, Role.admin, Role.reviewer, doing="queue fine-tuning")
    unknown = set(params) - set(DEFAULTS) - {"parent_version_id"}
    if unknown:
        raise StoreError(f"unknown training parameter(s): {', '.join(sorted(unknown))}")
    clean = {**DEFAULTS, **{k: v for k, v in params.items() if v is not None}}
    if clean["mode"] not in ("decoder", "full"):
        raise StoreError(f"unknown training mode '{clean['mode']}'; choose decoder or full")
    if not (isinstance(clean["epochs"], int) and 1 <= clean["epochs"] <= 1000):
        raise StoreError("epochs must be a whole number from 1 to 1000")
    if not 0 < float(clean["lr"]) < 1:
        raise StoreError(f"learning rate {clean['lr']} is out of range; MedSAM uses 1e-4")
    if not (isinstance(clean["batch_size"], int) and 1 <= clean["batch_size"] <= 256):
        raise StoreError("batch size must be a whole number from 1 to 256")
    if not 0 < float(clean["val_fraction"]) < 1:
        raise StoreError("the validation fraction must be between 0 and 1")
    if clean["mode"] == "full" and not training_gpu(store) and not store.settings.allow_full_finetune_without_gpu:
        raise StoreError("full fine-tuning needs a GPU worker, and none is configured (MEDSAM_TRAINING_GPU); "
                         "use decoder mode, which trains on a CPU in seconds per epoch")
    with store.transaction() as session:
        get_project(session, actor, project_id)
    parent = active_version(store, project_id) if clean.get("parent_version_id") is None else None
    with store.transaction() as session:
        parent = parent or session.get(ModelVersion, clean["parent_version_id"])
        if parent is None:
            raise NotFoundError(f"model version {clean['parent_version_id']} does not exist")
        if parent.project_id not in (None, project_id):
            raise StoreError(f"model version {parent.id} belongs to another project")
    if parent.family not in FAMILIES:
        raise StoreError(f"unknown model family '{parent.family}'")
    if parent.family != "lite" and (parent.checkpoint_blob is None or not store.blobs.exists(parent.checkpoint_blob)):
        raise StoreError(f"model version {parent.id} ({parent.family}) has no checkpoint in the blob store; "
                         "register the ViT checkpoint first")
    labelled = {image.id for image, _, _ in training_set(store, project_id)}
    if len(labelled) < store.settings.min_training_images:
        raise StoreError(f"the project has {len(labelled)} images with approved labels; fine-tuning needs at least "
                         f"{store.settings.min_training_images}")
    clean["parent_version_id"] = parent.id
    return clean


def create_job(store: Store, actor: User, project_id: int, params: dict[str, Any]) -> TrainingJob:
    clean = validate_request(store, actor, project_id, params)
    with store.transaction() as session:
        job = TrainingJob(project_id=project_id, requested_by=actor.id, params=clean)
        session.add(job)
        session.flush()
        record(session, actor, "job.queued", "training_jobs", job.id, project_id, **clean)
        return job


def freeze_validation_set(store: Store, project_id: int, image_ids: list[int]) -> list[int]:
    """The first job's choice wins for the project's lifetime; later callers get the frozen set."""
    with store.transaction() as session:
        session.execute(update(Project).where(Project.id == project_id, Project.validation_image_ids.is_(None))
                        .values(validation_image_ids=sorted(image_ids)))
    with store.transaction() as session:
        return list(session.get(Project, project_id).validation_image_ids or [])


def record_evaluation(store: Store, version_id: int, project_id: int, val_dice: float, val_nsd: float | None,
                      images: int, *, replace: bool = False) -> ModelEvaluation:
    with store.transaction() as session:
        row = session.scalar(select(ModelEvaluation).where(ModelEvaluation.model_version_id == version_id,
                                                           ModelEvaluation.project_id == project_id))
        if row is not None and not replace:
            return row
        if row is None:
            row = ModelEvaluation(model_version_id=version_id, project_id=project_id, val_dice=val_dice,
                                  val_nsd=val_nsd, images=images)
            session.add(row)
        else:
            row.val_dice, row.val_nsd, row.images = val_dice, val_nsd, images
        return row


def evaluation(store: Store, version_id: int, project_id: int) -> ModelEvaluation | None:
    with store.transaction() as session:
        return session.scalar(select(ModelEvaluation).where(ModelEvaluation.model_version_id == version_id,
                                                            ModelEvaluation.project_id == project_id))


class GateError(StoreError):
    """The candidate scored below the active version on the frozen validation images."""


def promote(store: Store, actor: User, project_id: int, version_id: int, *, force: bool = False) -> Project:
    """Activate ``version_id`` only if it is at least as good as the active version on the same images."""
    require_role(actor, Role.admin, doing="promote model versions")
    active = active_version(store, project_id)
    if active.id == version_id:
        raise StoreError(f"model version {version_id} is already active")
    candidate, current = evaluation(store, version_id, project_id), evaluation(store, active.id, project_id)
    if candidate is None or current is None:
        missing = version_id if candidate is None else active.id
        if not force:
            raise GateError(f"model version {missing} has not been evaluated on this project's validation images; "
                            "queue an evaluation first (or promote with force)")
    elif candidate.val_dice < current.val_dice and not force:
        raise GateError(f"model version {version_id} scores validation Dice {candidate.val_dice:.4f}, below the "
                        f"active version {active.id}'s {current.val_dice:.4f} on the same {current.images} images; "
                        "not promoted (an admin may force it)")
    gate = {"candidate_dice": candidate.val_dice if candidate else None,
            "active_dice": current.val_dice if current else None, "forced": force}
    project = set_active(store, actor, project_id, version_id, reason="promote.forced" if force else "promote")
    with store.transaction() as session:
        record(session, actor, "model.gate", "model_version", version_id, project_id, **gate)
    return project


def activate_earlier(store: Store, actor: User, project_id: int, version_id: int) -> Project:
    """Roll back to any version that was active before; no gate, but audited."""
    with store.transaction() as session:
        was_active = session.scalar(select(ModelActivation.id).where(
            ModelActivation.project_id == project_id, ModelActivation.model_version_id == version_id).limit(1))
    base = base_version(store)
    if was_active is None and version_id != base.id:
        raise PermissionDeniedError(f"model version {version_id} was never active in this project; promote it "
                                    "through the gate instead")
    return set_active(store, actor, project_id, version_id, reason="rollback")
