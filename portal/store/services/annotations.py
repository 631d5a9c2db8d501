"""Saving, submitting and reviewing annotations without ever overwriting anyone's work.

Every save names the revision it started from. The save lands only if that is
still the latest revision: a conditional UPDATE on the annotation row decides
the race, and the unique (annotation, number) constraint on revisions backs it
up. The loser gets a ``ConflictError`` naming the newer revision and its author.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
from sqlalchemy import CursorResult, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from portal.store.blobs import BlobStore
from portal.store.errors import ConflictError, NotFoundError, PermissionDeniedError, StoreError
from portal.store.models import (
    Annotation,
    AnnotationRevision,
    AnnotationStatus,
    Image,
    Project,
    Review,
    Role,
    User,
    at_current_revision,
    utcnow,
)
from portal.store.services.audit import record
from portal.store.services.images import get_image
from portal.store.services.masks import check_mask_shape, get_mask, mask_from_bytes, mask_to_bytes
from portal.store.services.projects import annotation_owner, get_project, label_names, not_found
from portal.store.services.users import require_role


def save_revision(
    db: Session,
    blobs: BlobStore,
    actor: User,
    image_id: int,
    label: str,
    mask: np.ndarray,
    base_revision: int,
    *,
    base_mask_id: int | None = None,
    model_version_id: int | None = None,
    prompt: dict[str, Any] | None = None,
    comment: str | None = None,
    submit: bool = False,
) -> AnnotationRevision:
    """Append revision ``base_revision + 1``; 0 means "there was nothing yet"."""
    image = db.get(Image, image_id)
    if image is None:  # what get_project answers for it
        raise not_found(f"image {image_id}")
    project = get_project(db, actor, image.project_id, what=f"image {image_id}")
    check_label(project, label)
    check_mask_shape(image, mask)
    # Blob before row: content-addressed, so a crash leaves an orphan for gc, never a dangling row.
    blob = blobs.put_bytes(mask_to_bytes(mask))
    return write_revision(
        db,
        actor,
        {"image_id": image_id},
        image.project_id,
        label,
        base_revision,
        blob,
        submit=submit,
        base_mask_id=base_mask_id,
        model_version_id=model_version_id,
        prompt=prompt,
        comment=comment,
    )


def check_label(project: Project, label: str) -> None:
    if label not in label_names(project):
        raise StoreError(
            f"'{label}' is not a label class of project '{project.name}': {', '.join(label_names(project))}"
        )


def write_revision(
    db: Session,
    actor: User,
    target: dict[str, int],
    project_id: int,
    label: str,
    base_revision: int,
    blob: str,
    *,
    submit: bool,
    **provenance: Any,
) -> AnnotationRevision:
    """Append revision ``base_revision + 1`` of ``label`` on ``target`` (``{"image_id": id}`` for a 2-D mask,
    ``{"volume_id": id}`` for a 3-D label map) whose content is the stored ``blob``.

    The write runs in a savepoint so that a lost race leaves the caller's
    transaction usable (an import carries on with its next image).
    """
    try:
        with db.begin_nested():
            revision = _append(db, actor, target, label, base_revision, blob, submit=submit, **provenance)
    except IntegrityError:
        annotation = db.scalar(select(Annotation).filter_by(**target, label=label))
        raise _conflict(db, annotation.id if annotation else None, base_revision) from None
    record(
        db,
        actor,
        "annotation.save",
        "annotation",
        revision.annotation_id,
        project_id,
        revision=revision.number,
        submitted=submit,
        **({"volume_id": target["volume_id"]} if "volume_id" in target else {}),
    )
    return revision


def _append(
    db: Session,
    actor: User,
    target: dict[str, int],
    label: str,
    base_revision: int,
    blob: str,
    *,
    submit: bool,
    **provenance: Any,
) -> AnnotationRevision:
    """The race itself: a conditional UPDATE decides it, the unique revision number backs it up."""
    annotation = db.scalar(select(Annotation).filter_by(**target, label=label))
    if annotation is None:
        if base_revision != 0:
            ((kind, target_id),) = target.items()
            raise NotFoundError(
                f"no annotation '{label}' on {kind.removesuffix('_id')} {target_id} to continue from revision "
                f"{base_revision}"
            )
        annotation = Annotation(**target, label=label, created_by=actor.id)
        db.add(annotation)
        db.flush()
    status = AnnotationStatus.submitted if submit else AnnotationStatus.draft
    won = cast(
        "CursorResult[Any]",
        db.execute(
            update(Annotation)
            .where(Annotation.id == annotation.id, Annotation.current_revision == base_revision)
            .values(current_revision=base_revision + 1, status=status, updated_at=utcnow())
        ),
    ).rowcount
    if won != 1:
        raise _conflict(db, annotation.id, base_revision)
    revision = AnnotationRevision(
        annotation_id=annotation.id, number=base_revision + 1, author_id=actor.id, blob_sha=blob, **provenance
    )
    db.add(revision)
    db.flush()
    return revision


def _conflict(session: Session, annotation_id: int | None, base_revision: int) -> ConflictError:
    latest = None
    if annotation_id is not None:
        latest = session.scalar(
            select(AnnotationRevision)
            .where(AnnotationRevision.annotation_id == annotation_id)
            .order_by(AnnotationRevision.number.desc())
            .limit(1)
        )
    if latest is None:
        return ConflictError(
            f"someone else started this annotation at the same moment; reload it "
            f"(you saved from revision {base_revision})",
            current_revision=None,
        )
    author = session.get(User, latest.author_id) if latest.author_id else None
    name = author.username if author else "a deleted user"
    return ConflictError(
        f"revision {latest.number} by {name} was saved after revision {base_revision}, which you started from; "
        "nothing was overwritten: compare both and save again from the newer one",
        current_revision=latest.number,
        author=name,
    )


def _visible(session: Session, actor: User, annotation_id: int) -> tuple[Annotation, Project]:
    """The annotation and its project (through its image, or its volume for a 3-D label map)."""
    annotation = session.get(Annotation, annotation_id)
    owner = annotation_owner(session, annotation) if annotation is not None else None
    if annotation is None or owner is None:  # what get_project answers for them
        raise not_found(f"annotation {annotation_id}")
    project = get_project(session, actor, owner.project_id, what=f"annotation {annotation_id}")
    return annotation, project


def _check_not_own(session: Session, actor: User, annotation: Annotation, project: Project) -> None:
    """Four eyes: whoever saved the revision under review may not approve it.

    The author is the one who saved the current revision, because that is the
    content an approval vouches for; someone who only created an earlier
    revision may approve a colleague's later one.
    """
    if project.allow_self_review:
        return
    author = session.scalar(
        select(AnnotationRevision.author_id).where(
            AnnotationRevision.annotation_id == annotation.id, AnnotationRevision.number == annotation.current_revision
        )
    )
    if author == actor.id:
        raise PermissionDeniedError(
            f"you saved revision {annotation.current_revision} of annotation {annotation.id} yourself, so someone "
            "else must approve it: ask another reviewer or an admin of the project (an admin may allow "
            "self-review for a one-person project with its allow_self_review setting)"
        )


def _transition(
    db: Session,
    actor: User,
    annotation_id: int,
    to: AnnotationStatus,
    allowed_from: set[AnnotationStatus],
    comment: str | None = None,
) -> Annotation:
    annotation, project = _visible(db, actor, annotation_id)
    if annotation.status not in allowed_from or annotation.current_revision == 0:
        raise StoreError(f"annotation {annotation_id} is {annotation.status.value}; it cannot become {to.value}")
    seen_status, seen_revision = annotation.status, annotation.current_revision
    if to == AnnotationStatus.approved:
        _check_not_own(db, actor, annotation, project)
    # Conditional on what was checked: a save landing meanwhile (a new revision, perhaps the
    # reviewer's own) must not be approved in its place.
    moved = cast(
        "CursorResult[Any]",
        db.execute(
            update(Annotation)
            .where(
                Annotation.id == annotation_id,
                Annotation.status == seen_status,
                Annotation.current_revision == seen_revision,
            )
            .values(status=to, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        ),
    ).rowcount
    if moved != 1:
        raise ConflictError(
            f"annotation {annotation_id} changed while you looked at it; reload it and decide again",
            current_revision=None,
            author=None,
        )
    db.refresh(annotation)
    if to in (AnnotationStatus.approved, AnnotationStatus.rejected):
        db.add(
            Review(
                annotation_id=annotation_id,
                revision_number=annotation.current_revision,
                reviewer_id=actor.id,
                decision=to,
                comment=comment,
            )
        )
    record(
        db,
        actor,
        f"annotation.{to.value}",
        "annotation",
        annotation_id,
        project.id,
        revision=annotation.current_revision,
        comment=comment,
    )
    return annotation


def submit(db: Session, actor: User, annotation_id: int) -> Annotation:
    return _transition(
        db, actor, annotation_id, AnnotationStatus.submitted, {AnnotationStatus.draft, AnnotationStatus.rejected}
    )


def approve(db: Session, actor: User, annotation_id: int, comment: str | None = None) -> Annotation:
    require_role(actor, Role.reviewer, Role.admin, doing="approve annotations")
    return _transition(db, actor, annotation_id, AnnotationStatus.approved, {AnnotationStatus.submitted}, comment)


def reject(db: Session, actor: User, annotation_id: int, comment: str) -> Annotation:
    """Authors may reject their own work: it only sends it back for rework and vouches for nothing."""
    require_role(actor, Role.reviewer, Role.admin, doing="reject annotations")
    if not comment or not comment.strip():
        raise StoreError("say why when rejecting, so the annotator knows what to fix")
    return _transition(db, actor, annotation_id, AnnotationStatus.rejected, {AnnotationStatus.submitted}, comment)


def revisions(db: Session, actor: User, annotation_id: int) -> list[AnnotationRevision]:
    _visible(db, actor, annotation_id)
    return list(
        db.scalars(
            select(AnnotationRevision)
            .where(AnnotationRevision.annotation_id == annotation_id)
            .order_by(AnnotationRevision.number)
        )
    )


def revision_history(db: Session, actor: User, annotation_id: int) -> list[tuple[AnnotationRevision, str | None]]:
    """Each revision with its author's name (None once the account is gone), oldest first."""
    rows = revisions(db, actor, annotation_id)
    ids = {r.author_id for r in rows if r.author_id}
    names = dict(db.execute(select(User.id, User.username).where(User.id.in_(ids))).tuples().all()) if ids else {}
    return [(r, names.get(r.author_id) if r.author_id else None) for r in rows]


def get_revision(db: Session, actor: User, annotation_id: int, number: int) -> AnnotationRevision:
    _visible(db, actor, annotation_id)
    found = db.scalar(
        select(AnnotationRevision).where(
            AnnotationRevision.annotation_id == annotation_id, AnnotationRevision.number == number
        )
    )
    if found is None:
        raise NotFoundError(f"annotation {annotation_id} has no revision {number}")
    return found


def save_proposal(
    db: Session,
    blobs: BlobStore,
    actor: User,
    image_id: int,
    label: str,
    mask_id: int,
    base_revision: int,
    *,
    comment: str | None = None,
    submit: bool = False,
) -> AnnotationRevision:
    """Save a model's mask as proposed, keeping where it came from (mask, model version, prompt)."""
    get_image(db, actor, image_id)  # the image answers first: its 404 is what a stranger to it sees
    proposal = get_mask(db, actor, mask_id)
    if proposal.image_id != image_id:
        raise StoreError(f"mask {mask_id} belongs to image {proposal.image_id}, not {image_id}")
    mask = mask_from_bytes(blobs.get_bytes(proposal.blob_sha)) > 0
    return save_revision(
        db,
        blobs,
        actor,
        image_id,
        label,
        mask,
        base_revision,
        base_mask_id=proposal.id,
        model_version_id=proposal.model_version_id,
        prompt=proposal.prompt,
        comment=comment,
        submit=submit,
    )


def current_annotations(
    db: Session, actor: User, project_id: int, statuses: set[AnnotationStatus] | None = None
) -> list[dict[str, Any]]:
    """Each annotation of a project at its latest revision, with who saved it: for queues and exports."""
    get_project(db, actor, project_id)
    query = (
        select(Annotation, AnnotationRevision, User.username)
        .join(Image, Image.id == Annotation.image_id)
        .join(
            AnnotationRevision,
            at_current_revision(),
        )
        .outerjoin(User, User.id == AnnotationRevision.author_id)
        .where(Image.project_id == project_id)
        .order_by(Annotation.image_id, Annotation.label)
    )
    if statuses:
        query = query.where(Annotation.status.in_(statuses))
    return [{"annotation": a, "revision": r, "author": name} for a, r, name in db.execute(query)]
