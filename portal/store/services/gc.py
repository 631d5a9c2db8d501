"""Removing blobs that no row points to.

Rows are written after their blobs, so a blob younger than the grace period
may belong to a transaction that has not committed yet: it is never touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import select

from portal.store.models import (
    AnnotationRevision,
    EmbeddingEntry,
    Image,
    Mask,
    ModelVersion,
    TrainingJob,
)
from portal.store.store import Store

BLOB_COLUMNS = (
    Image.blob_sha, Mask.blob_sha, AnnotationRevision.blob_sha, ModelVersion.checkpoint_blob,
    TrainingJob.checkpoint_blob, TrainingJob.curves_blob, EmbeddingEntry.blob_sha,
)


@dataclass
class GcReport:
    scanned: int = 0
    referenced: int = 0
    too_young: int = 0
    deleted: int = 0
    freed_bytes: int = 0
    temporary_removed: int = 0


def referenced_blobs(store: Store) -> set[str]:
    found: set[str] = set()
    with store.transaction() as session:
        for column in BLOB_COLUMNS:
            found.update(v for v in session.scalars(select(column).distinct()) if v)
    return found


def collect_garbage(store: Store, grace: timedelta | None = None, dry_run: bool = False) -> GcReport:
    grace = timedelta(hours=store.settings.gc_grace_hours) if grace is None else grace
    cutoff = datetime.now(timezone.utc) - grace
    report = GcReport()
    keep = referenced_blobs(store)
    for blob in list(store.blobs.iter_blobs()):
        report.scanned += 1
        if blob.digest in keep:
            report.referenced += 1
        elif blob.modified > cutoff:
            report.too_young += 1
        else:
            # Re-check just before deleting: a row may have arrived since the scan began.
            if blob.digest in referenced_blobs_for(store, blob.digest):
                report.referenced += 1
                continue
            if not dry_run:
                store.blobs.delete(blob.digest)
            report.deleted += 1
            report.freed_bytes += blob.size
    if not dry_run:
        report.temporary_removed = store.blobs.sweep_temporary(cutoff)
    return report


def referenced_blobs_for(store: Store, digest: str) -> set[str]:
    with store.transaction() as session:
        for column in BLOB_COLUMNS:
            if session.scalar(select(column).where(column == digest).limit(1)):
                return {digest}
    return set()
