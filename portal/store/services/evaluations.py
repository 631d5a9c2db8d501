"""Evaluating a model version on the project's frozen validation images: who may ask, and on which images.

The promotion gate (``training.promote``) compares validation Dice on one
fixed set of images per project. A fine-tune scores its parent and its result
on that set itself; any other version (an uploaded checkpoint, the base model)
gets an evaluation job, queued when it is registered or on request. When a
project has no frozen set yet, the evaluation freezes the one a first default
fine-tune would have chosen, so both kinds of score always mean the same images.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from medsam_core.training.data import Sample, split_by_group
from portal.store.blobs import BlobStore
from portal.store.errors import StoreError
from portal.store.models import Job, JobKind, JobState, Role, User
from portal.store.services import jobs
from portal.store.services.model_versions import usable_version
from portal.store.services.projects import existing_project, get_project
from portal.store.services.training import FinetuneParams, evaluation, freeze_validation_set
from portal.store.services.training_rows import training_rows
from portal.store.services.users import require_role

PENDING = (JobState.queued, JobState.running)


def validation_set(db: Session, blobs: BlobStore, project_id: int, min_training_images: int) -> list[int]:
    """The project's frozen validation image ids, freezing them now if no fine-tune has yet.

    Freezing takes the split a first fine-tune with default parameters would
    take, and only once that fine-tune would be accepted: at least
    ``min_training_images`` approved images stay outside the set for training,
    since the set is frozen for the project's lifetime.
    """
    frozen = existing_project(db, project_id).validation_image_ids
    if frozen:
        return list(frozen)
    samples = [
        Sample(key=str(row.image.id), group=row.image.sha256, load_rgb=None, load_labels=None)  # type: ignore[arg-type]
        for row in training_rows(db, blobs, project_id)
    ]
    defaults = FinetuneParams()
    train, val = split_by_group(samples, defaults.val_fraction, defaults.seed)
    minimum = min_training_images
    if not val or len({s.key for s in train}) < minimum:
        labelled = len({s.key for s in samples})
        raise StoreError(
            f"evaluation needs the project's validation images, and none are chosen yet: they are "
            f"taken from approved labels once a share of them still leaves {minimum} images for "
            f"training; the project has {labelled} images with approved labels. Approve more labels, "
            "then queue the evaluation again"
        )
    return freeze_validation_set(db, project_id, sorted({int(s.key) for s in val}))


def create_evaluation(
    db: Session, blobs: BlobStore, actor: User | None, project_id: int, version_id: int, *, min_training_images: int
) -> Job:
    """An evaluation job for ``version_id``, not yet sent; a queued or running one for it is reused.

    Membership first (404), then role (403: admins and reviewers, who queue
    fine-tunes), then the version, then the validation set. ``actor`` None is trusted.
    """
    if actor is not None:
        get_project(db, actor, project_id)
        require_role(actor, Role.admin, Role.reviewer, doing="queue evaluations")
    usable_version(db, actor, version_id, project_id)
    images = validation_set(db, blobs, project_id, min_training_images)
    pending = db.scalars(
        select(Job)
        .where(Job.project_id == project_id, Job.kind == JobKind.evaluate, Job.state.in_(PENDING))
        .order_by(Job.id)
    )
    for job in pending:
        if job.params.get("model_version_id") == version_id:
            return job
    return jobs.create_job(
        db,
        JobKind.evaluate,
        {"model_version_id": version_id, "images": len(images)},
        project_id=project_id,
        actor=actor,
    )


def validation_image_ids(db: Session, project_id: int) -> set[int]:
    """The frozen validation images, for the evaluation task (which builds their samples)."""
    frozen = set(existing_project(db, project_id).validation_image_ids or [])
    if not frozen:
        raise StoreError(f"project {project_id} has no frozen validation images; queue the evaluation again")
    return frozen


def unscored(db: Session, project_id: int, version_ids: list[int]) -> list[int]:
    """Which of these versions have no validation score in the project yet, in order, without repeats."""
    return [v for v in dict.fromkeys(version_ids) if evaluation(db, v, project_id) is None]
