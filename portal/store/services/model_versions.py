"""Model versions: registration, the active version per project, promotion and rollback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.store.errors import NotFoundError, StoreError
from portal.store.models import ModelActivation, ModelVersion, Project, Role, User
from portal.store.services.audit import record
from portal.store.services.projects import get_project, is_member, not_found
from portal.store.services.users import require_role
from portal.store.store import Store


def base_version(store: Store, family: str = "lite") -> ModelVersion:
    with store.transaction() as session:
        version = session.scalar(select(ModelVersion).where(
            ModelVersion.family == family, ModelVersion.project_id.is_(None)).order_by(ModelVersion.id))
        if version is None:
            raise NotFoundError(f"no base model version of family '{family}' is registered")
        return version


def register_version(store: Store, *, name: str, family: str, encoder_digest: str, model_digest: str,
                     project_id: int | None, parent_id: int | None = None, training_job_id: int | None = None,
                     checkpoint_blob: str | None = None, metrics: dict[str, Any] | None = None,
                     actor: User | None = None) -> ModelVersion:
    """Idempotent per (project, training job): a redelivered training task registers its result once."""
    if checkpoint_blob is not None and not store.blobs.exists(checkpoint_blob):
        raise StoreError(f"checkpoint blob {checkpoint_blob[:12]}… is not in the blob store; write it first")
    with store.transaction() as session:
        if training_job_id is not None:
            existing = session.scalar(select(ModelVersion).where(ModelVersion.training_job_id == training_job_id))
            if existing is not None:
                return existing
        version = ModelVersion(name=name, family=family, encoder_digest=encoder_digest, model_digest=model_digest,
                               project_id=project_id, parent_id=parent_id, training_job_id=training_job_id,
                               checkpoint_blob=checkpoint_blob, metrics=metrics or {})
        session.add(version)
        session.flush()
        record(session, actor, "model.register", "model_version", version.id, project_id, family=family,
               parent_id=parent_id, training_job_id=training_job_id)
        return version


def active_version(store: Store, project_id: int) -> ModelVersion:
    """The project's active version, or the bundled base model when none was promoted.

    No membership check here: callers check first. A missing project gets the
    words a non-member gets, so a caller that asks before checking leaks nothing.
    """
    with store.transaction() as session:
        project = session.get(Project, project_id)
        if project is None:
            raise not_found(f"project {project_id}")
        if project.active_model_version_id is not None:
            active = session.get(ModelVersion, project.active_model_version_id)
            if active is None:
                raise not_found(f"model version {project.active_model_version_id}", trusted=True)
            return active
    return base_version(store)


def usable_version(session: Session, actor: User | None, version_id: int, project_id: int) -> ModelVersion:
    """A version that may run in ``project_id``: a base version or one of the project's own.

    Another project's version is "not found" to someone outside that project,
    exactly like a missing one; only its members learn that it belongs elsewhere.
    """
    version = session.get(ModelVersion, version_id)
    if version is None or (actor is not None and version.project_id is not None
                           and not is_member(session, actor, version.project_id)):
        raise not_found(f"model version {version_id}", trusted=actor is None)
    if version.project_id not in (None, project_id):
        raise StoreError(f"model version {version_id} belongs to another project")
    return version


def set_active(store: Store, actor: User, project_id: int, version_id: int, *, reason: str = "promote") -> Project:
    require_role(actor, Role.admin, doing="promote model versions")
    with store.transaction() as session:
        project = get_project(session, actor, project_id)
        usable_version(session, actor, version_id, project_id)
        previous = project.active_model_version_id
        project.active_model_version_id = version_id
        session.add(ModelActivation(project_id=project_id, model_version_id=version_id, activated_by=actor.id))
        record(session, actor, f"model.{reason}", "model_version", version_id, project_id, previous=previous)
        return project


def rollback(store: Store, actor: User, project_id: int) -> Project:
    """Re-activate the version that was active before the current one."""
    require_role(actor, Role.admin, doing="roll back model versions")
    with store.transaction() as session:
        project = get_project(session, actor, project_id)
        history = list(session.scalars(select(ModelActivation).where(ModelActivation.project_id == project_id)
                                       .order_by(ModelActivation.id.desc())))
        current = project.active_model_version_id
        earlier = next((h.model_version_id for h in history if h.model_version_id != current), None)
    if earlier is None:
        if current is None:
            raise StoreError("this project still uses the base model; there is nothing to roll back")
        earlier = base_version(store).id
    return set_active(store, actor, project_id, earlier, reason="rollback")


def list_versions(store: Store, actor: User, project_id: int) -> list[ModelVersion]:
    with store.transaction() as session:
        get_project(session, actor, project_id)
        return list(session.scalars(select(ModelVersion).where(
            (ModelVersion.project_id == project_id) | ModelVersion.project_id.is_(None)).order_by(ModelVersion.id)))


def register_checkpoint(store: Store, actor: User, project_id: int, family: str, path: str | Path,
                        name: str | None = None) -> ModelVersion:
    """Register a user's MedSAM/SAM checkpoint as a project version.

    It is loaded (weights only) into the named family before anything is
    stored, so a file that doesn't fit is refused with the family and the first
    mismatched keys, and writes nothing. The same weights twice give one version.
    """
    from medsam_core.models import load_model

    require_role(actor, Role.admin, doing="register model checkpoints")
    with store.transaction() as session:
        get_project(session, actor, project_id)
    loaded = load_model(family, path, device="cpu")  # raises CheckpointError / UnknownModelError
    with store.transaction() as session:
        existing = session.scalar(select(ModelVersion).where(ModelVersion.project_id == project_id,
                                                             ModelVersion.model_digest == loaded.model_digest))
        if existing is not None:
            return existing
    blob, _ = store.blobs.put_file(path)
    return register_version(store, name=name or f"uploaded {family}", family=family,
                            encoder_digest=loaded.encoder_digest, model_digest=loaded.model_digest,
                            project_id=project_id, checkpoint_blob=blob, metrics={"source": "upload"}, actor=actor)
