"""What a project export needs of its volumes: which ones have labels, and each one's labels on its grid.

The export itself (zip, manifest, file names) is ``portal.web.volume_transfer``;
this reads the rows and blobs, one volume at a time, so a caller can keep each
transaction short and hold only one decoded volume in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from medsam_core.volume import Volume
from portal.store.blobs import BlobStore
from portal.store.models import Annotation, AnnotationStatus, User
from portal.store.models import Volume as VolumeRow
from portal.store.services.projects import get_project, label_names
from portal.store.services.volumes import get_volume
from portal.store.services.volumes_labels import combined_labels, volume_annotations
from portal.store.services.volumes_read import load_volume, source_datasets
from portal.store.settings import Settings


@dataclass
class ExportCase:
    """One volume ready to write: its geometry, its label map (project label order: 1 for the first class,
    ...) and what each label's annotation was when read."""

    volume_id: int
    filename: str
    source_format: str
    modality: str
    volume: Volume
    labels: np.ndarray
    names: dict[int, str]
    annotations: list[dict[str, Any]] = field(default_factory=list)
    sources: list[Any] | None = None  # DICOM series only, when asked: the stored datasets in Z order


def labelled_volumes(db: Session, actor: User, project_id: int, *, approved_only: bool) -> list[VolumeRow]:
    """The project's volumes with at least one saved label map (an approved one with ``approved_only``)."""
    get_project(db, actor, project_id)
    labelled = select(Annotation.volume_id).where(Annotation.current_revision > 0)
    if approved_only:
        labelled = labelled.where(Annotation.status == AnnotationStatus.approved)
    return list(
        db.scalars(
            select(VolumeRow)
            .where(VolumeRow.project_id == project_id, VolumeRow.id.in_(labelled))
            .order_by(VolumeRow.id)
        )
    )


def export_case(
    db: Session,
    blobs: BlobStore,
    settings: Settings,
    actor: User,
    volume_id: int,
    *,
    approved_only: bool,
    with_sources: bool = False,
) -> ExportCase:
    """The volume and its combined label map; ``with_sources``: the stored DICOM datasets too (DICOM-SEG)."""
    row = get_volume(db, actor, volume_id)
    labels, names = combined_labels(db, blobs, actor, volume_id, approved_only=approved_only)
    volume = load_volume(db, blobs, settings, row)
    order = {name: value for value, name in enumerate(label_names(get_project(db, actor, row.project_id)), 1)}
    kept = [
        {"label": a.label, "value": order.get(a.label), "status": a.status.value, "revision": a.current_revision}
        for a in volume_annotations(db, actor, volume_id)
        if a.current_revision > 0 and a.label in order and (not approved_only or a.status == AnnotationStatus.approved)
    ]
    return ExportCase(
        volume_id=row.id,
        filename=row.filename,
        source_format=row.source_format,
        modality=row.modality,
        volume=volume,
        labels=labels,
        names=names,
        annotations=kept,
        sources=source_datasets(db, blobs, settings, row) if with_sources and row.source_format == "dicom" else None,
    )
