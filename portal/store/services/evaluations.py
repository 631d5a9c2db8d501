"""Evaluating a model version on the project's frozen validation images: who may ask, and on which images.

The promotion gate (``training.promote``) compares validation Dice on one
fixed set of images per project. A fine-tune scores its parent and its result
on that set itself; any other version (an uploaded checkpoint, the base model)
gets an evaluation job, queued when it is registered or on request. When a
project has no frozen set yet, the evaluation freezes the one a first default
fine-tune would have chosen, so both kinds of score always mean the same images.
"""

from __future__ import annotations

from functools import partial

from sqlalchemy import select

from medsam_core.training.data import Sample, split_by_group
from portal.store.errors import StoreError
from portal.store.models import Job, JobKind, JobState, Role, User
from portal.store.services import jobs
from portal.store.services.annotations import training_set
from portal.store.services.images import display_pixels
from portal.store.services.masks import load_mask
from portal.store.services.model_versions import usable_version
from portal.store.services.projects import existing_project, get_project
from portal.store.services.training import FinetuneParams, evaluation, freeze_validation_set
from portal.store.services.users import require_role
from portal.store.store import Store

PENDING = (JobState.queued, JobState.running)


def project_samples(store: Store, project_id: int) -> list[Sample]:
    """Approved annotations as samples; one image's label classes share its group (and its side of the split)."""
    out = []
    for image, _label, blob in training_set(store, project_id):
        out.append(Sample(key=str(image.id), group=image.sha256,
                          load_rgb=partial(display_pixels, store, image),
                          load_labels=partial(load_mask, store, blob)))
    return out


def validation_set(store: Store, project_id: int) -> list[int]:
    """The project's frozen validation image ids, freezing them now if no fine-tune has yet.

    Freezing takes the split a first fine-tune with default parameters would
    take, and only once that fine-tune would be accepted: at least
    ``min_training_images`` approved images stay outside the set for training,
    since the set is frozen for the project's lifetime.
    """
    with store.transaction() as session:
        frozen = existing_project(session, project_id).validation_image_ids
    if frozen:
        return list(frozen)
    rows = training_set(store, project_id)
    samples = [Sample(key=str(image.id), group=image.sha256, load_rgb=None, load_labels=None)  # type: ignore[arg-type]
               for image, _, _ in rows]
    defaults = FinetuneParams()
    train, val = split_by_group(samples, defaults.val_fraction, defaults.seed)
    minimum = store.settings.min_training_images
    if not val or len({s.key for s in train}) < minimum:
        labelled = len({s.key for s in samples})
        raise StoreError(f"evaluation needs the project's validation images, and none are chosen yet: they are "
                         f"taken from approved labels once a share of them still leaves {minimum} images for "
                         f"training; the project has {labelled} images with approved labels. Approve more labels, "
                         "then queue the evaluation again")
    return freeze_validation_set(store, project_id, sorted({int(s.key) for s in val}))


def create_evaluation(store: Store, actor: User | None, project_id: int, version_id: int) -> Job:
    """An evaluation job for ``version_id``, not yet sent; a queued or running one for it is reused.

    Membership first (404), then role (403: admins and reviewers, who queue
    fine-tunes), then the version, then the validation set. ``actor`` None is trusted.
    """
    if actor is not None:
        with store.transaction() as session:
            get_project(session, actor, project_id)
        require_role(actor, Role.admin, Role.reviewer, doing="queue evaluations")
    with store.transaction() as session:
        usable_version(session, actor, version_id, project_id)
    images = validation_set(store, project_id)
    with store.transaction() as session:
        pending = session.scalars(select(Job).where(Job.project_id == project_id, Job.kind == JobKind.evaluate,
                                                    Job.state.in_(PENDING)).order_by(Job.id))
        for job in pending:
            if job.params.get("model_version_id") == version_id:
                return job
    return jobs.create_job(store, JobKind.evaluate, {"model_version_id": version_id, "images": len(images)},
                           project_id=project_id, actor=actor)


def validation_samples(store: Store, project_id: int) -> list[Sample]:
    """The frozen validation images as samples, for the evaluation task."""
    with store.transaction() as session:
        frozen = set(existing_project(session, project_id).validation_image_ids or [])
    if not frozen:
        raise StoreError(f"project {project_id} has no frozen validation images; queue the evaluation again")
    return [s for s in project_samples(store, project_id) if int(s.key) in frozen]


def unscored(store: Store, project_id: int, version_ids: list[int]) -> list[int]:
    """Which of these versions have no validation score in the project yet, in order, without repeats."""
    return [v for v in dict.fromkeys(version_ids) if evaluation(store, v, project_id) is None]
