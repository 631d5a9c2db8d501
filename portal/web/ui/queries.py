"""Read-only listings the UI shows. Every write goes through portal.store.services."""

from sqlalchemy import func, select

from portal.store.models import (
    Annotation,
    AnnotationRevision,
    AnnotationStatus,
    Image,
    Mask,
    ModelEvaluation,
    ModelVersion,
    Project,
    TrainingJob,
    User,
)
from portal.store.services.projects import get_project, label_names, list_projects


def projects_for(store, user) -> list[tuple[str, int]]:
    with store.transaction() as session:
        return [(f"{p.name} (#{p.id})", p.id) for p in list_projects(session, user)]


def project_labels(store, user, project_id: int) -> list[str]:
    with store.transaction() as session:
        return label_names(get_project(session, user, project_id))


def image_queue(store, user, project_id: int, label: str, mode: str) -> list[dict]:
    """Images with the state of their ``label`` annotation.

    ``unlabelled``: nothing saved first, then drafts, then the rest.
    ``fix``: rejected annotations this user worked on (created or authored a revision).
    """
    with store.transaction() as session:
        get_project(session, user, project_id)
        rows = session.execute(
            select(Image, Annotation).outerjoin(Annotation, (Annotation.image_id == Image.id)
                                                & (Annotation.label == label))
            .where(Image.project_id == project_id).order_by(Image.id)).all()
        mine = set(session.scalars(
            select(AnnotationRevision.annotation_id).where(AnnotationRevision.author_id == user.id)))
    out = []
    for image, ann in rows:
        status = "unlabelled" if ann is None or ann.current_revision == 0 else ann.status.value
        if mode == "fix" and not (status == "rejected" and (ann.created_by == user.id or ann.id in mine)):
            continue
        out.append({"image_id": image.id, "filename": image.filename, "slice": image.slice_index,
                    "status": status, "revision": 0 if ann is None else ann.current_revision,
                    "annotation_id": None if ann is None else ann.id})
    order = {"unlabelled": 0, "rejected": 1, "draft": 2, "submitted": 3, "approved": 4}
    out.sort(key=lambda r: (order.get(r["status"], 9), r["image_id"]))
    return out


def annotation_for(store, image_id: int, label: str):
    with store.transaction() as session:
        return session.scalar(select(Annotation).where(Annotation.image_id == image_id, Annotation.label == label))


def revision_rows(store, annotation_id: int) -> list[list]:
    with store.transaction() as session:
        rows = session.execute(
            select(AnnotationRevision, User.username).outerjoin(User, User.id == AnnotationRevision.author_id)
            .where(AnnotationRevision.annotation_id == annotation_id).order_by(AnnotationRevision.number.desc())).all()
    return [[r.number, name or "(deleted)", r.created_at.strftime("%Y-%m-%d %H:%M:%S"), r.model_version_id,
             _prompt_text(r.prompt), r.comment or ""] for r, name in rows]


def _prompt_text(prompt) -> str:
    if not prompt:
        return ""
    parts = []
    for box in prompt.get("boxes") or []:
        parts.append("box " + " ".join(f"{v:.0f}" for v in box))
    for point in prompt.get("points") or []:
        parts.append(f"{'+' if point[2] else '-'}pt {point[0]:.0f},{point[1]:.0f}")
    return "; ".join(parts)


def latest_revision(store, annotation_id: int) -> AnnotationRevision | None:
    with store.transaction() as session:
        return session.scalar(select(AnnotationRevision).where(AnnotationRevision.annotation_id == annotation_id)
                              .order_by(AnnotationRevision.number.desc()).limit(1))


def mask_row(store, mask_id: int) -> Mask | None:
    with store.transaction() as session:
        return session.get(Mask, mask_id)


def submitted(store, user, project_id: int) -> list[dict]:
    with store.transaction() as session:
        get_project(session, user, project_id)
        rows = session.execute(
            select(Annotation, Image, User.username)
            .join(Image, Image.id == Annotation.image_id)
            .outerjoin(AnnotationRevision, (AnnotationRevision.annotation_id == Annotation.id)
                       & (AnnotationRevision.number == Annotation.current_revision))
            .outerjoin(User, User.id == AnnotationRevision.author_id)
            .where(Image.project_id == project_id, Annotation.status == AnnotationStatus.submitted)
            .order_by(Annotation.updated_at)).all()
    return [{"annotation_id": a.id, "image_id": i.id, "filename": i.filename, "label": a.label,
             "revision": a.current_revision, "author": name or ""} for a, i, name in rows]


def counts(store, user) -> list[list]:
    out = []
    with store.transaction() as session:
        for project in list_projects(session, user):
            images = session.scalar(select(func.count()).select_from(Image).where(Image.project_id == project.id))
            by_status = dict(session.execute(
                select(Annotation.status, func.count()).join(Image, Image.id == Annotation.image_id)
                .where(Image.project_id == project.id, Annotation.current_revision > 0)
                .group_by(Annotation.status)).all())
            labelled = session.scalar(
                select(func.count(func.distinct(Annotation.image_id))).join(Image, Image.id == Annotation.image_id)
                .where(Image.project_id == project.id, Annotation.current_revision > 0))
            out.append([project.name, images, images - labelled,
                        *(by_status.get(s, 0) for s in (AnnotationStatus.draft, AnnotationStatus.submitted,
                                                        AnnotationStatus.approved, AnnotationStatus.rejected))])
    return out


def training_jobs(store, user, project_id: int) -> list[TrainingJob]:
    with store.transaction() as session:
        get_project(session, user, project_id)
        return list(session.scalars(select(TrainingJob).where(TrainingJob.project_id == project_id)
                                    .order_by(TrainingJob.id.desc())))


def versions(store, user, project_id: int) -> list[list]:
    with store.transaction() as session:
        project = get_project(session, user, project_id)
        active = project.active_model_version_id
        rows = list(session.scalars(select(ModelVersion).where(
            (ModelVersion.project_id == project_id) | ModelVersion.project_id.is_(None)).order_by(ModelVersion.id)))
        evals = {e.model_version_id: e for e in session.scalars(
            select(ModelEvaluation).where(ModelEvaluation.project_id == project_id))}
    if active is None:
        base = next((v.id for v in rows if v.project_id is None and v.family == "lite"), None)
        active = base
    out = []
    for v in rows:
        m = v.metrics or {}
        before = m.get("baseline_val_dice")
        after = evals[v.id].val_dice if v.id in evals else m.get("best_val_dice")
        out.append(["● active" if v.id == active else "", v.id, v.name, v.family, v.parent_id or "",
                    v.training_job_id or "", "" if before is None else round(before, 4),
                    "" if after is None else round(after, 4), v.created_at.strftime("%Y-%m-%d %H:%M")])
    return out


def project_images(store, user, project_id: int) -> list[list]:
    with store.transaction() as session:
        get_project(session, user, project_id)
        rows = list(session.scalars(select(Image).where(Image.project_id == project_id).order_by(Image.id)))
    return [[i.id, i.filename, i.slice_index, f"{i.width}x{i.height}"] for i in rows]


def project_of(store, project_id: int) -> Project | None:
    with store.transaction() as session:
        return session.get(Project, project_id)


def user_by_name(store, username: str) -> User | None:
    with store.transaction() as session:
        return session.scalar(select(User).where(User.username == username))


def prelabel_mask(store, image_id: int) -> Mask | None:
    """The newest mask a bulk pre-label job stored for this image, if any."""
    with store.transaction() as session:
        return session.scalar(select(Mask).where(Mask.image_id == image_id, Mask.job_id.is_not(None))
                              .order_by(Mask.id.desc()).limit(1))


def unannotated_images(store, user, project_id: int) -> list[Image]:
    """Images (2-D, or each slice) with no saved annotation of any label: what pre-labelling fills."""
    with store.transaction() as session:
        get_project(session, user, project_id)
        done = select(Annotation.image_id).where(Annotation.current_revision > 0)
        return list(session.scalars(select(Image).where(Image.project_id == project_id, Image.id.not_in(done))
                                    .order_by(Image.id)))
