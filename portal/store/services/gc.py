"""Removing blobs that no row points to.

Rows are written after their blobs, so a blob younger than the grace period
may belong to a transaction that has not committed yet: it is never touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.store.blobs import BlobStore
from portal.store.models import (
    AnnotationRevision,
    EmbeddingEntry,
    Image,
    Job,
    Mask,
    ModelVersion,
)

BLOB_COLUMNS = (
    Image.blob_sha,
    Mask.blob_sha,
    AnnotationRevision.blob_sha,
    ModelVersion.checkpoint_blob,
    Job.checkpoint_blob,
    Job.curves_blob,
    EmbeddingEntry.blob_sha,
)


@dataclass
class GcReport:
    scanned: int = 0
    referenced: int = 0
    too_young: int = 0
    deleted: int = 0
    freed_bytes: int = 0
    temporary_removed: int = 0


def referenced_blobs(db: Session) -> set[str]:
    found: set[str] = set()
    for column in BLOB_COLUMNS:
        found.update(v for v in db.scalars(select(column).distinct()) if v)
    return found


def collect_garbage(db: Session, blobs: BlobStore, grace: timedelta, dry_run: bool = False) -> GcReport:
    """One transaction for the whole sweep: on SQLite it holds the write lock, so no row can arrive meanwhile;
    on PostgreSQL (READ COMMITTED) the re-check before each delete sees rows committed since the scan."""
    cutoff = datetime.now(timezone.utc) - grace
    report = GcReport()
    keep = referenced_blobs(db)
    for blob in list(blobs.iter_blobs()):
        report.scanned += 1
        if blob.digest in keep:
            report.referenced += 1
        elif blob.modified > cutoff:
            report.too_young += 1
        else:
            # Re-check just before deleting: a row may have arrived since the scan began.
            if blob.digest in referenced_blobs_for(db, blob.digest):
                report.referenced += 1
                continue
            if not dry_run:
                blobs.delete(blob.digest)
            report.deleted += 1
            report.freed_bytes += blob.size
    if not dry_run:
        report.temporary_removed = blobs.sweep_temporary(cutoff)
    return report


def referenced_blobs_for(db: Session, digest: str) -> set[str]:
    for column in BLOB_COLUMNS:
        if db.scalar(select(column).where(column == digest).limit(1)):
            return {digest}
    return set()
