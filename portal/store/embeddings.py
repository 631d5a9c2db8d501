"""The blob store as the embedding cache's persistent tier, indexed in the database.

Implements ``medsam_core.cache.EmbeddingStore``: every web process, every
worker and every restart share one cache, and the ``embeddings`` table keeps
last-used times so the least recently used entries go when the budget is hit.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, delete, func, select, update
from sqlalchemy.exc import IntegrityError

from medsam_core.cache import CacheKey
from portal.store.blobs import BlobCorruptError, BlobNotFoundError
from portal.store.models import EmbeddingEntry, utcnow
from portal.store.store import Store

# Touching last_used_at on every read would be a write per click; once a minute is precise enough for LRU.
TOUCH_EVERY = timedelta(minutes=1)


def _match(key: CacheKey) -> tuple[ColumnElement[bool], ColumnElement[bool], ColumnElement[bool]]:
    return (
        EmbeddingEntry.pixel_sha256 == key.pixel_sha256,
        EmbeddingEntry.family == key.family,
        EmbeddingEntry.encoder_digest == key.encoder_digest,
    )


class BlobEmbeddingStore:
    def __init__(self, store: Store, budget_bytes: int):
        self.store = store
        self.budget_bytes = int(budget_bytes)

    def get(self, key: CacheKey) -> bytes | None:
        with self.store.transaction() as session:
            entry = session.scalar(select(EmbeddingEntry).where(*_match(key)))
            if entry is None:
                return None
            blob = entry.blob_sha
            if utcnow() - _aware(entry.last_used_at) > TOUCH_EVERY:
                entry.last_used_at = utcnow()
        try:
            return self.store.blobs.get_bytes(blob)
        except (BlobNotFoundError, BlobCorruptError):
            with self.store.transaction() as session:
                session.execute(delete(EmbeddingEntry).where(*_match(key)))
            return None

    def put(self, key: CacheKey, data: bytes) -> None:
        blob = self.store.blobs.put_bytes(data)  # blob before row
        try:
            with self.store.transaction() as session:
                updated = cast(
                    "CursorResult[Any]",
                    session.execute(
                        update(EmbeddingEntry)
                        .where(*_match(key))
                        .values(blob_sha=blob, size_bytes=len(data), last_used_at=utcnow())
                    ),
                ).rowcount
                if not updated:
                    session.add(
                        EmbeddingEntry(
                            pixel_sha256=key.pixel_sha256,
                            family=key.family,
                            encoder_digest=key.encoder_digest,
                            blob_sha=blob,
                            size_bytes=len(data),
                        )
                    )
        except IntegrityError:
            pass  # another worker cached the same embedding at the same moment: same bytes, nothing to do
        self.evict()

    def evict(self) -> int:
        removed = 0
        with self.store.transaction() as session:
            total = session.scalar(select(func.coalesce(func.sum(EmbeddingEntry.size_bytes), 0)))
            assert total is not None  # an aggregate without GROUP BY always gives one row, and coalesce no NULL
            if total <= self.budget_bytes:
                return 0
            victims = []
            for entry in session.scalars(
                select(EmbeddingEntry).order_by(EmbeddingEntry.last_used_at, EmbeddingEntry.id)
            ):
                if total <= self.budget_bytes:
                    break
                victims.append(entry.blob_sha)
                total -= entry.size_bytes
                session.delete(entry)
                removed += 1
        for blob in victims:
            with self.store.transaction() as session:
                still_used = session.scalar(select(EmbeddingEntry.id).where(EmbeddingEntry.blob_sha == blob).limit(1))
            if still_used is None:
                self.store.blobs.delete(blob)
        return removed


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
