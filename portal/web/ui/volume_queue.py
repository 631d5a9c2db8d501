"""A volume is one item of the Annotate work list, not one per slice.

The list's values are ints (Previous/Next and "next to do" work on them), so a
volume's item is its id negated: image ids are positive, and ``volume_item``
tells the two apart without another lookup. The volume's state is that of its
3-D label map for the chosen label; its slice rows leave the list.

Composed from the store's services (``worklists.image_queue``, ``volumes``,
``volumes_labels``); the listing rule itself belongs in ``worklists`` once it
knows volumes, and then this module shrinks to ``volume_item``.
"""

from typing import Any

from sqlalchemy.orm import Session

from portal.store.models import User
from portal.store.services import annotations, volumes, volumes_labels, worklists


def volume_item(item: Any) -> int | None:
    """The volume id of a work-list value, or None for an image."""
    try:
        value = int(item)
    except (TypeError, ValueError):
        return None
    return -value if value < 0 else None


def item_of(volume_id: int) -> int:
    return -int(volume_id)


def _volume_row(db: Session, actor: User, volume, label: str, mode: str) -> dict[str, Any] | None:
    found = volumes_labels.find_annotation(db, actor, volume.id, label)
    status = "unlabelled" if found is None or found.current_revision == 0 else found.status.value
    if mode == "fix":
        if status != "rejected" or found is None:
            return None
        authors = {r.author_id for r in annotations.revisions(db, actor, found.id)}
        if found.created_by != actor.id and actor.id not in authors:
            return None
    return {
        "image_id": item_of(volume.id),
        "filename": f"{volume.filename} (volume, {volume.depth} slices)",
        "slice": None,
        "status": status,
        "revision": 0 if found is None else found.current_revision,
        "annotation_id": None if found is None else found.id,
        "rejection": worklists.rejections(db, [found.id]).get(found.id) if found and status == "rejected" else None,
    }


def work_list(db: Session, actor: User, project_id: int, label: str, mode: str) -> list[dict[str, Any]]:
    """``worklists.image_queue`` with each volume's slices replaced by one row for the volume."""
    rows = worklists.image_queue(db, actor, project_id, label, mode)
    found = volumes.list_volumes(db, actor, project_id)
    if not found:
        return rows
    slices = {image.id for volume in found for image in volumes.slice_rows(db, volume.id)}
    rows = [r for r in rows if r["image_id"] not in slices]
    rows += [row for v in found if (row := _volume_row(db, actor, v, label, mode)) is not None]
    rows.sort(key=lambda r: (worklists.QUEUE_ORDER.get(r["status"], 9), r["image_id"]))
    return rows
