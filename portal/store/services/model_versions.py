"""Model versions: registration, the active version per project, promotion and rollback.

Every function works in the caller's transaction (``db``); blobs are passed
where a checkpoint is read or written.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.store.blobs import BlobStore
from portal.store.errors import NotFoundError, StoreError
from portal.store.models import ModelActivation, ModelVersion, Project, Role, User
from portal.store.services.audit import record
from portal.store.services.projects import get_project, is_member, not_found
from portal.store.services.users import require_role

if TYPE_CHECKING:
    from medsam_core.models import LoadedModel


def base_version(db: Session, family: str = "lite") -> ModelVersion:
    version = db.scalar(
        select(ModelVersion)
        .where(ModelVersion.family == family, ModelVersion.project_id.is_(None))
        .order_by(ModelVersion.id)
    )
    if version is None:
        raise NotFoundError(f"no base model version of family '{family}' is registered")
    return version


def register_version(
    db: Session,
    blobs: BlobStore,
    *,
    name: str,
    family: str,
    encoder_digest: str,
    model_digest: str,
    project_id: int | None,
    parent_id: int | None = None,
    training_job_id: int | None = None,
    checkpoint_blob: str | None = None,
    metrics: dict[str, Any] | None = None,
    actor: User | None = None,
) -> ModelVersion:
    """Idempotent per (project, training job): a redelivered training task registers its result once."""
    if checkpoint_blob is not None and not blobs.exists(checkpoint_blob):
        raise StoreError(f"checkpoint blob {checkpoint_blob[:12]}… is not in the blob store; write it first")
    if training_job_id is not None:
        existing = db.scalar(select(ModelVersion).where(ModelVersion.training_job_id == training_job_id))
        if existing is not None:
            return existing
    version = ModelVersion(
        name=name,
        family=family,
        encoder_digest=encoder_digest,
        model_digest=model_digest,
        project_id=project_id,
        parent_id=parent_id,
        training_job_id=training_job_id,
        checkpoint_blob=checkpoint_blob,
        metrics=metrics or {},
    )
    db.add(version)
    db.flush()
    record(
        db,
        actor,
        "model.register",
        "model_version",
        version.id,
        project_id,
        family=family,
        parent_id=parent_id,
        training_job_id=training_job_id,
    )
    return version


def active_version(db: Session, project_id: int) -> ModelVersion:
    """The project's active version, or the bundled base model when none was promoted.

    No membership check here: callers check first. A missing project gets the
    words a non-member gets, so a caller that asks before checking leaks nothing.
    """
    project = db.get(Project, project_id)
    if project is None:
        raise not_found(f"project {project_id}")
    if project.active_model_version_id is not None:
        active = db.get(ModelVersion, project.active_model_version_id)
        if active is None:
            raise not_found(f"model version {project.active_model_version_id}", trusted=True)
        return active
    return base_version(db)


def usable_version(db: Session, actor: User | None, version_id: int, project_id: int) -> ModelVersion:
    """A version that may run in ``project_id``: a base version or one of the project's own.

    Another project's version is "not found" to someone outside that project,
    exactly like a missing one; only its members learn that it belongs elsewhere.
    """
    version = db.get(ModelVersion, version_id)
    if version is None or (
        actor is not None and version.project_id is not None and not is_member(db, actor, version.project_id)
    ):
        raise not_found(f"model version {version_id}", trusted=actor is None)
    if version.project_id not in (None, project_id):
        raise StoreError(f"model version {version_id} belongs to another project")
    return version


def set_active(db: Session, actor: User, project_id: int, version_id: int, *, reason: str = "promote") -> Project:
    require_role(actor, Role.admin, doing="promote model versions")
    project = get_project(db, actor, project_id)
    usable_version(db, actor, version_id, project_id)
    previous = project.active_model_version_id
    project.active_model_version_id = version_id
    db.add(ModelActivation(project_id=project_id, model_version_id=version_id, activated_by=actor.id))
    record(db, actor, f"model.{reason}", "model_version", version_id, project_id, previous=previous)
    return project


def rollback(db: Session, actor: User, project_id: int) -> Project:
    """Re-activate the version that was active before the current one."""
    require_role(actor, Role.admin, doing="roll back model versions")
    project = get_project(db, actor, project_id)
    history = list(
        db.scalars(
            select(ModelActivation).where(ModelActivation.project_id == project_id).order_by(ModelActivation.id.desc())
        )
    )
    current = project.active_model_version_id
    earlier = next((h.model_version_id for h in history if h.model_version_id != current), None)
    if earlier is None:
        if current is None:
            raise StoreError("this project still uses the base model; there is nothing to roll back")
        earlier = base_version(db).id
    return set_active(db, actor, project_id, earlier, reason="rollback")


def list_versions(db: Session, actor: User, project_id: int) -> list[ModelVersion]:
    get_project(db, actor, project_id)
    return list(
        db.scalars(
            select(ModelVersion)
            .where((ModelVersion.project_id == project_id) | ModelVersion.project_id.is_(None))
            .order_by(ModelVersion.id)
        )
    )


def check_may_register(db: Session, actor: User, project_id: int) -> None:
    """Admins, in their projects: asked before a checkpoint is loaded, which takes a while."""
    require_role(actor, Role.admin, doing="register model checkpoints")
    get_project(db, actor, project_id)


def load_checkpoint(family: str, path: str | Path) -> LoadedModel:
    """Load (weights only) into the named family; raises CheckpointError / UnknownModelError naming the
    family and the first mismatched keys. No database: callers load outside their transaction."""
    from medsam_core.models import load_model

    return load_model(family, path, device="cpu")


def register_checkpoint(
    db: Session,
    blobs: BlobStore,
    actor: User,
    project_id: int,
    loaded: LoadedModel,
    path: str | Path,
    name: str | None = None,
) -> ModelVersion:
    """Register a user's MedSAM/SAM checkpoint, already loaded by ``load_checkpoint``, as a project version.

    A file that doesn't fit its family was refused by the load, before
    anything is stored. The same weights twice give one version.
    """
    check_may_register(db, actor, project_id)
    existing = db.scalar(
        select(ModelVersion).where(
            ModelVersion.project_id == project_id, ModelVersion.model_digest == loaded.model_digest
        )
    )
    if existing is not None:
        return existing
    blob, _ = blobs.put_file(path)
    family = loaded.family.name
    return register_version(
        db,
        blobs,
        name=name or f"uploaded {family}",
        family=family,
        encoder_digest=loaded.encoder_digest,
        model_digest=loaded.model_digest,
        project_id=project_id,
        checkpoint_blob=blob,
        metrics={"source": "upload"},
        actor=actor,
    )
