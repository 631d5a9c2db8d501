"""The listings the screens show: queues, histories, counts, jobs and versions.

Each read takes the acting user and goes through ``get_project`` first, so a
listing outside one's projects is "not found" exactly like a missing one, the
same answer the REST API gives. Every function takes the caller's ``Session``:
the caller owns the transaction. Presentation (wording, rounding, columns) is
the caller's; these return rows and plain values.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from portal.store.models import (
    Annotation,
    AnnotationRevision,
    AnnotationStatus,
    Image,
    Job,
    JobKind,
    JobState,
    Mask,
    ModelEvaluation,
    ModelVersion,
    Review,
    Role,
    User,
    at_current_revision,
)
from portal.store.models import Volume as VolumeRow
from portal.store.services.projects import annotation_owner, get_project, label_names, list_projects, not_found
from portal.store.services.users import require_role

QUEUE_ORDER = {"unlabelled": 0, "rejected": 1, "draft": 2, "submitted": 3, "approved": 4}
COUNTED = (AnnotationStatus.draft, AnnotationStatus.submitted, AnnotationStatus.approved, AnnotationStatus.rejected)
# What is still to do in each queue mode, most wanted first: after a submit the annotator moves on to the
# next image of the first tier that has one ("unlabelled first": new images, then rework and drafts).
TO_DO = {"unlabelled": ({"unlabelled"}, {"rejected", "draft"}), "fix": ({"rejected"},)}
# The project of what an annotation labels, over ``_owned``'s joins: its image's, or its volume's.
OWNER_PROJECT = func.coalesce(Image.project_id, VolumeRow.project_id)


@dataclass(frozen=True)
class RevisionRow:
    number: int
    author: str | None  # None: the account was deleted
    created_at: datetime
    model_version_id: int | None
    prompt: dict[str, Any] | None
    comment: str | None


@dataclass(frozen=True)
class ReviewRow:
    """A reviewer's decision on one revision: the annotator reads why it came back, from whom and when."""

    revision: int
    decision: str  # "approved" or "rejected"
    reviewer: str | None  # None: the account was deleted
    created_at: datetime
    comment: str | None


@dataclass(frozen=True)
class VersionRow:
    """A version as the Models tab lists it, with its scores on this project's frozen validation images."""

    version: ModelVersion
    active: bool
    val_dice_before: float | None  # the parent's score (or the training's baseline) on the same images
    val_dice: float | None  # this version's evaluation; a training's best epoch until one is recorded
    evaluated_images: int | None  # None: no evaluation row yet
    pending_evaluation: int | None  # the id of a queued or running evaluation job, if any


# ---------------------------------------------------------------------------- accounts
def account(session: Session, username: str) -> User | None:
    """The logged-in user of a UI session, or None when the account has gone or is disabled."""
    user = session.scalar(select(User).where(User.username == username))
    return user if user is not None and user.is_active else None


def find_user(session: Session, actor: User, username: str) -> User | None:
    """Looking a colleague up by name is an admin's step (adding members), so nobody else probes names."""
    require_role(actor, Role.admin, doing="look up users")
    return session.scalar(select(User).where(User.username == username))


# ---------------------------------------------------------------------------- projects
def project_choices(session: Session, actor: User) -> list[tuple[str, int]]:
    return [(f"{p.name} (#{p.id})", p.id) for p in list_projects(session, actor)]


def project_labels(session: Session, actor: User, project_id: int) -> list[str]:
    return label_names(get_project(session, actor, project_id))


def project_images(session: Session, actor: User, project_id: int) -> list[Image]:
    get_project(session, actor, project_id)
    return list(session.scalars(select(Image).where(Image.project_id == project_id).order_by(Image.id)))


def unannotated_images(session: Session, actor: User, project_id: int) -> list[Image]:
    """Images (2-D, or each slice) with no saved annotation of any label: what pre-labelling fills."""
    get_project(session, actor, project_id)
    done = select(Annotation.image_id).where(Annotation.current_revision > 0)
    return list(
        session.scalars(select(Image).where(Image.project_id == project_id, Image.id.not_in(done)).order_by(Image.id))
    )


def _owned(query: Any) -> Any:
    """``query`` over annotations joined to what each labels, an image or a volume (exactly one is set)."""
    return query.outerjoin(Image, Image.id == Annotation.image_id).outerjoin(
        VolumeRow, VolumeRow.id == Annotation.volume_id
    )


def status_counts(session: Session, actor: User) -> list[list[Any]]:
    """Per visible project: name, images, unlabelled, then draft, submitted, approved, rejected.

    A volume's label map counts once (it is one annotation), and its slices are no longer unlabelled.
    """
    out = []
    saved = Annotation.current_revision > 0
    for project in list_projects(session, actor):
        images = session.scalar(select(func.count()).select_from(Image).where(Image.project_id == project.id)) or 0
        by_status_q = _owned(select(Annotation.status, func.count())).where(OWNER_PROJECT == project.id, saved)
        by_status = dict(session.execute(by_status_q.group_by(Annotation.status)).all())
        annotated = select(Annotation.image_id).where(saved, Annotation.image_id.is_not(None))
        mapped = select(Annotation.volume_id).where(saved, Annotation.volume_id.is_not(None))
        labelled = (
            session.scalar(
                select(func.count())
                .select_from(Image)
                .where(Image.project_id == project.id, or_(Image.id.in_(annotated), Image.volume_id.in_(mapped)))
            )
            or 0
        )
        out.append([project.name, images, images - labelled, *(by_status.get(s, 0) for s in COUNTED)])
    return out


# ---------------------------------------------------------------------------- annotating
def _image(session: Session, actor: User, image_id: int) -> Image:
    image = session.get(Image, image_id)
    if image is None:
        raise not_found(f"image {image_id}")
    get_project(session, actor, image.project_id, what=f"image {image_id}")
    return image


def image_queue(session: Session, actor: User, project_id: int, label: str, mode: str) -> list[dict[str, Any]]:
    """Images with the state of their ``label`` annotation.

    ``unlabelled``: nothing saved first, then rejected, drafts, the rest.
    ``fix``: rejected annotations this user worked on (created or authored a revision).
    A rejected row carries its ``rejection`` (a ``ReviewRow``: who, when, the comment), so the annotator
    sees what to fix without opening the Review tab, which is not theirs.
    """
    get_project(session, actor, project_id)
    rows = session.execute(
        select(Image, Annotation)
        .outerjoin(Annotation, (Annotation.image_id == Image.id) & (Annotation.label == label))
        .where(Image.project_id == project_id)
        .order_by(Image.id)
    ).all()
    mine = set(
        session.scalars(select(AnnotationRevision.annotation_id).where(AnnotationRevision.author_id == actor.id))
    )
    rejected = [ann.id for _, ann in rows if ann is not None and ann.status == AnnotationStatus.rejected]
    why = rejections(session, rejected)
    out: list[dict[str, Any]] = []
    for image, ann in rows:
        status = "unlabelled" if ann is None or ann.current_revision == 0 else ann.status.value
        if mode == "fix" and not (status == "rejected" and (ann.created_by == actor.id or ann.id in mine)):
            continue
        out.append(
            {
                "image_id": image.id,
                "filename": image.filename,
                "slice": image.slice_index,
                "status": status,
                "revision": 0 if ann is None else ann.current_revision,
                "annotation_id": None if ann is None else ann.id,
                "rejection": why.get(ann.id) if status == "rejected" else None,
            }
        )
    out.sort(key=lambda r: (QUEUE_ORDER.get(r["status"], 9), r["image_id"]))
    return out


def _review_rows(session: Session, where: Any) -> list[tuple[int, ReviewRow]]:
    """(annotation id, row) for the reviews matching ``where``, newest first."""
    found = session.execute(
        select(Review, User.username)
        .outerjoin(User, User.id == Review.reviewer_id)
        .where(where)
        .order_by(Review.created_at.desc(), Review.id.desc())
    ).all()
    return [
        (r.annotation_id, ReviewRow(r.revision_number, r.decision.value, name, r.created_at, r.comment))
        for r, name in found
    ]


def rejections(session: Session, annotation_ids: list[int]) -> dict[int, ReviewRow]:
    """The newest rejection of each annotation: the one that sent it back."""
    if not annotation_ids:
        return {}
    out: dict[int, ReviewRow] = {}
    for aid, row in _review_rows(
        session, Review.annotation_id.in_(annotation_ids) & (Review.decision == AnnotationStatus.rejected)
    ):
        out.setdefault(aid, row)
    return out


def step(order: list[int], current: int | None, delta: int) -> int | None:
    """The image ``delta`` places from ``current`` in a queue's order; None past either end (no wrapping).

    ``order`` is the queue as it was listed, not as it sorts now: a submit moves an image to the
    back of a fresh listing, and Next must still mean the image that followed it on screen.
    An image not in the order starts at the first one.
    """
    if not order:
        return None
    if current not in order:
        return order[0]
    index = order.index(current) + delta
    return order[index] if 0 <= index < len(order) else None


def next_to_do(order: list[int], statuses: dict[int, str], current: int | None, mode: str) -> int | None:
    """Where an annotator goes after a submit: the next image still to do, in the listed order.

    Tier by tier (``TO_DO``), it looks after ``current`` first, then at images skipped before it; None
    when the queue has nothing left to do.
    """
    start = order.index(current) + 1 if current in order else 0
    around = order[start:] + order[:start]
    for wanted in TO_DO.get(mode, TO_DO["unlabelled"]):
        for image_id in around:
            if image_id != current and statuses.get(image_id) in wanted:
                return image_id
    return None


def _annotation(session: Session, actor: User, annotation_id: int) -> tuple[Annotation, Image | VolumeRow]:
    """The annotation and what it labels: an image, or a volume for a 3-D label map."""
    annotation = session.get(Annotation, annotation_id)
    owner = annotation_owner(session, annotation) if annotation is not None else None
    if annotation is None or owner is None:
        raise not_found(f"annotation {annotation_id}")
    get_project(session, actor, owner.project_id, what=f"annotation {annotation_id}")
    return annotation, owner


def _latest(session: Session, annotation_id: int) -> AnnotationRevision | None:
    return session.scalar(
        select(AnnotationRevision)
        .where(AnnotationRevision.annotation_id == annotation_id)
        .order_by(AnnotationRevision.number.desc())
        .limit(1)
    )


def current_annotation(
    session: Session, actor: User, image_id: int, label: str
) -> tuple[Annotation | None, AnnotationRevision | None]:
    """The image's ``label`` annotation and its newest revision (either None when nothing is there)."""
    _image(session, actor, image_id)
    found = session.scalar(select(Annotation).where(Annotation.image_id == image_id, Annotation.label == label))
    return found, (_latest(session, found.id) if found is not None else None)


def revision_history(session: Session, actor: User, annotation_id: int) -> list[RevisionRow]:
    """Newest first, with each author's name."""
    _annotation(session, actor, annotation_id)
    rows = session.execute(
        select(AnnotationRevision, User.username)
        .outerjoin(User, User.id == AnnotationRevision.author_id)
        .where(AnnotationRevision.annotation_id == annotation_id)
        .order_by(AnnotationRevision.number.desc())
    ).all()
    return [RevisionRow(r.number, name, r.created_at, r.model_version_id, r.prompt, r.comment) for r, name in rows]


def review_history(session: Session, actor: User, annotation_id: int) -> list[ReviewRow]:
    """Every approval and rejection of an annotation, newest first: the history shows them with the revisions."""
    _annotation(session, actor, annotation_id)
    return [row for _, row in _review_rows(session, Review.annotation_id == annotation_id)]


def prelabel_mask(session: Session, actor: User, image_id: int) -> Mask | None:
    """The newest mask a bulk pre-label job stored for this image, if any."""
    _image(session, actor, image_id)
    return session.scalar(
        select(Mask).where(Mask.image_id == image_id, Mask.job_id.is_not(None)).order_by(Mask.id.desc()).limit(1)
    )


# ---------------------------------------------------------------------------- reviewing
def submitted(session: Session, actor: User, project_id: int) -> list[dict[str, Any]]:
    """Annotations waiting for review, oldest change first, with the author of the revision under review.

    A volume's label map is one row: ``image_id`` None, its ``volume_id``, and the volume's name marked 3-D.
    """
    get_project(session, actor, project_id)
    rows = session.execute(
        _owned(select(Annotation, Image, VolumeRow, User.username))
        .outerjoin(
            AnnotationRevision,
            at_current_revision(),
        )
        .outerjoin(User, User.id == AnnotationRevision.author_id)
        .where(OWNER_PROJECT == project_id, Annotation.status == AnnotationStatus.submitted)
        .order_by(Annotation.updated_at, Annotation.id)
    ).all()
    return [
        {
            "annotation_id": a.id,
            "image_id": None if i is None else i.id,
            "volume_id": None if v is None else v.id,
            "filename": i.filename if i is not None else f"{v.filename} (3-D)",
            "label": a.label,
            "revision": a.current_revision,
            "author": name or "",
        }
        for a, i, v, name in rows
    ]


def review_item(session: Session, actor: User, annotation_id: int) -> tuple[Image | VolumeRow, AnnotationRevision]:
    """What an annotation labels (an image, or a volume for a 3-D label map) and the revision a reviewer
    decides on."""
    _, owner = _annotation(session, actor, annotation_id)
    latest = _latest(session, annotation_id)
    if latest is None:  # created but never saved: nothing to review, and nothing to tell apart from missing
        raise not_found(f"annotation {annotation_id}")
    return owner, latest


# ---------------------------------------------------------------------------- training and versions
def training_jobs(session: Session, actor: User, project_id: int) -> list[Job]:
    """The project's fine-tunes, newest first."""
    get_project(session, actor, project_id)
    return list(
        session.scalars(
            select(Job).where(Job.project_id == project_id, Job.kind == JobKind.finetune).order_by(Job.id.desc())
        )
    )


def version_rows(session: Session, actor: User, project_id: int) -> list[VersionRow]:
    """Base versions and the project's own, oldest first; the active one is the base model until a promotion."""
    project = get_project(session, actor, project_id)
    rows = list(
        session.scalars(
            select(ModelVersion)
            .where((ModelVersion.project_id == project_id) | ModelVersion.project_id.is_(None))
            .order_by(ModelVersion.id)
        )
    )
    evals = {
        e.model_version_id: e
        for e in session.scalars(select(ModelEvaluation).where(ModelEvaluation.project_id == project_id))
    }
    pending = {
        j.params.get("model_version_id"): j.id
        for j in session.scalars(
            select(Job)
            .where(
                Job.project_id == project_id,
                Job.kind == JobKind.evaluate,
                Job.state.in_((JobState.queued, JobState.running)),
            )
            .order_by(Job.id.desc())
        )
    }
    active = project.active_model_version_id
    if active is None:
        active = next((v.id for v in rows if v.project_id is None and v.family == "lite"), None)
    out = []
    for v in rows:
        metrics, own = v.metrics or {}, evals.get(v.id)
        parent = evals.get(v.parent_id) if v.parent_id is not None else None
        before = parent.val_dice if parent is not None else metrics.get("baseline_val_dice")
        after = own.val_dice if own is not None else metrics.get("best_val_dice")
        out.append(
            VersionRow(v, v.id == active, before, after, own.images if own is not None else None, pending.get(v.id))
        )
    return out
