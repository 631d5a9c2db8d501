"""The rules for queued inference work: who may queue it, on which version, with which prompts.

Everything is checked, and the job row created, before anything is sent, so a
bad request is refused at once with a message, never discovered later by a
worker. The queue port (``workers.queue``) calls these and then sends the
message; the UI and the API both go through it, so they cannot disagree.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from medsam_core.errors import PromptError
from medsam_core.prompts import check_prompt_size, validate_boxes, validate_points
from portal.store.errors import NotFoundError, StoreError
from portal.store.models import Image, Job, JobKind, Role, User
from portal.store.services import jobs
from portal.store.services.model_versions import active_version, usable_version
from portal.store.services.projects import get_project
from portal.store.services.users import require_role
from portal.store.settings import Settings

MAX_BATCH_ITEMS = 10_000
ONLY_ADMINS = (Role.admin,)  # queued work over a whole project; the UI offers it in the admin tab only


class PrelabelItem(BaseModel):
    """One pre-labelling prompt: the API's body schema and the check on what the UI sends.

    Strict (no "5" for 5, no true for 1) and finite, like every JSON number the portal takes.
    """

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

    image_id: int = Field(description="an image of this project")
    boxes: list[Annotated[list[float], Field(min_length=4, max_length=4)]] | None = Field(
        None, max_length=1, description="at most one box [x0, y0, x1, y1] per item (one mask each)"
    )
    points: list[Annotated[list[float], Field(min_length=3, max_length=3)]] | None = Field(
        None, description="[[x, y, label], ...], label 1 include or 0 exclude"
    )


ITEMS = TypeAdapter(list[PrelabelItem])


def _authorise(db: Session, actor: User | None, project_id: int, model_version_id: int | None, doing: str) -> int:
    """Membership (404 outside one's projects), then role (403), then the version; ``actor`` None is trusted."""
    if actor is not None:
        get_project(db, actor, project_id)
        require_role(actor, *ONLY_ADMINS, doing=doing)
    if model_version_id is None:
        return active_version(db, project_id).id
    usable_version(db, actor, model_version_id, project_id)
    return model_version_id


def _items(items: Any, settings: Settings) -> list[PrelabelItem]:
    """Whatever a caller passed, as checked items, or a message naming the item and the field."""
    if isinstance(items, list) and not items:
        raise StoreError("a batch needs at least one item")
    if isinstance(items, list) and len(items) > MAX_BATCH_ITEMS:
        raise StoreError(f"a batch holds at most {MAX_BATCH_ITEMS} items; split it")
    try:
        checked = ITEMS.validate_python(items)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = first["loc"]
        which = f"item {loc[0] + 1}: " if loc and isinstance(loc[0], int) else ""
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc[1:]).lstrip(".") or "items"
        raise StoreError(
            f"{which}{where}: {first['msg'][0].lower()}{first['msg'][1:]} (got {repr(first['input'])[:60]})"
        ) from None
    for n, item in enumerate(checked, start=1):
        try:
            check_prompt_size(item.boxes, item.points, settings.max_boxes_per_prompt, settings.max_points_per_prompt)
        except PromptError as exc:
            raise StoreError(f"item {n}: {exc}") from None
    return checked


def create_segment_batch(
    db: Session, settings: Settings, actor: User | None, project_id: int, model_version_id: int | None, items: Any
) -> Job:
    """items: ``[{"image_id": 1, "boxes": [[x0, y0, x1, y1]], "points": [[x, y, 1]]}, ...]``, one object each.

    ``model_version_id`` None: the project's active version. Returns the queued row, not yet sent.
    """
    version_id = _authorise(db, actor, project_id, model_version_id, "queue pre-labelling")
    checked = _items(items, settings)
    clean = []
    ids = {item.image_id for item in checked}
    images = {i.id: i for i in db.scalars(select(Image).where(Image.id.in_(ids)))}
    for n, item in enumerate(checked, start=1):
        image = images.get(item.image_id)
        if image is None or image.project_id != project_id:
            raise NotFoundError(f"item {n}: image {item.image_id} is not in project {project_id}")
        boxes = validate_boxes(item.boxes, (image.height, image.width))
        points, _ = validate_points(item.points, (image.height, image.width))
        if boxes is None and points is None:
            raise StoreError(f"item {n}: give a box or points")
        clean.append({"image_id": image.id, "boxes": item.boxes, "points": item.points})
    return jobs.create_job(
        db, JobKind.segment_batch, {"model_version_id": version_id, "items": clean}, project_id=project_id, actor=actor
    )


def create_precompute(db: Session, actor: User | None, project_id: int, model_version_id: int | None) -> Job:
    """``model_version_id`` None: the project's active version. Returns the queued row, not yet sent."""
    version_id = _authorise(db, actor, project_id, model_version_id, "queue embedding precompute")
    return jobs.create_job(
        db, JobKind.precompute_embeddings, {"model_version_id": version_id}, project_id=project_id, actor=actor
    )
