"""The rules for a volume's queued work: precomputing its slices' embeddings and propagating a box.

Everything is checked and the job row created before the queue port sends
anything, so a bad request is refused at once with a message (a slice out of
range, a reversed z range, a box with no area), never found later by a worker.
Any member of the volume's project may queue either: both are bounded by the
volume's slice count, and propagation is an annotator's tool.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from medsam_core.prompts import validate_boxes
from medsam_core.propagation import check_range, get_scheme
from portal.store.errors import StoreError
from portal.store.models import Annotation, Job, JobKind, User
from portal.store.models import Volume as VolumeRow
from portal.store.services import jobs
from portal.store.services.annotations import check_label
from portal.store.services.model_versions import active_version, usable_version
from portal.store.services.projects import get_project
from portal.store.services.volumes import get_volume


def _version(db: Session, actor: User | None, volume: VolumeRow, model_version_id: int | None) -> int:
    if model_version_id is None:
        return active_version(db, volume.project_id).id
    usable_version(db, actor, model_version_id, volume.project_id)
    return model_version_id


def create_precompute_volume(db: Session, actor: User | None, volume_id: int, model_version_id: int | None) -> Job:
    """Encode every slice of the volume ahead of the first prompt (``model_version_id`` None: the active one)."""
    volume = get_volume(db, actor, volume_id)
    version_id = _version(db, actor, volume, model_version_id)
    params = {"volume_id": volume.id, "model_version_id": version_id}
    return jobs.create_job(db, JobKind.precompute_volume, params, project_id=volume.project_id, actor=actor)


def create_propagation(
    db: Session,
    actor: User,
    volume_id: int,
    label: str,
    key_slice: int,
    box: Sequence[float],
    z_range: tuple[int, int] | None = None,
    *,
    scheme: str = "refined",
    model_version_id: int | None = None,
    base_revision: int | None = None,
) -> Job:
    """Propagate ``box`` on ``key_slice`` through ``z_range`` (default the whole volume) into a new draft
    revision of the volume's ``label`` map, saved from ``base_revision`` (default: the latest now), so a
    save landing meanwhile makes the job fail with the usual conflict instead of being overwritten."""
    volume = get_volume(db, actor, volume_id)
    check_label(get_project(db, actor, volume.project_id, what=f"volume {volume_id}"), label)
    get_scheme(scheme)
    z0, z1 = check_range(volume.depth, key_slice, z_range)
    boxes = validate_boxes([list(box)], (volume.height, volume.width))
    if boxes is None or len(boxes) != 1:
        raise StoreError("propagation takes exactly one box [x0, y0, x1, y1] on the key slice")
    current = db.scalar(
        select(Annotation.current_revision).where(Annotation.volume_id == volume_id, Annotation.label == label)
    )
    if base_revision is None:
        base_revision = current or 0
    elif base_revision < 0 or base_revision > (current or 0):
        raise StoreError(
            f"base_revision {base_revision} does not exist: the latest '{label}' revision is {current or 0}"
        )
    params = {
        "volume_id": volume.id,
        "label": label,
        "key_slice": int(key_slice),
        "box": [float(v) for v in box],
        "z_range": [z0, z1],
        "scheme": scheme,
        "model_version_id": _version(db, actor, volume, model_version_id),
        "base_revision": int(base_revision),
    }
    return jobs.create_job(db, JobKind.propagate, params, project_id=volume.project_id, actor=actor)
