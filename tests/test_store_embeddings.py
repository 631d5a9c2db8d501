"""The blob store as the persistent tier of the core embedding cache."""

from __future__ import annotations

import numpy as np
from sqlalchemy import func, select

from medsam_core.cache import EMBEDDING_SHAPE, CacheKey, EmbeddingCache
from portal.store.embeddings import BlobEmbeddingStore
from portal.store.models import EmbeddingEntry
from tests.storeutil import make_store


def key(n: int) -> CacheKey:
    return CacheKey(f"{n:064x}", "lite", "e" * 64)


def emb(n: int) -> np.ndarray:
    return np.random.default_rng(n).standard_normal(EMBEDDING_SHAPE).astype(np.float16)


def test_shared_across_cache_objects_and_evicted_by_budget(tmp_path):
    store = make_store(f"sqlite:///{tmp_path / 'e.db'}", tmp_path)
    entry = 2 * 256 * 64 * 64 + 128
    backing = BlobEmbeddingStore(store, budget_bytes=int(2.5 * entry))
    EmbeddingCache(backing, memory_items=0).put(key(1), emb(1))
    other_process = EmbeddingCache(BlobEmbeddingStore(store, int(2.5 * entry)), memory_items=0)
    assert other_process.get(key(1)).tobytes() == emb(1).tobytes()
    assert other_process.get(key(2)) is None
    other_process.put(key(2), emb(2))
    with store.transaction() as session:
        e1 = session.scalar(select(EmbeddingEntry).where(EmbeddingEntry.pixel_sha256 == key(1).pixel_sha256))
        e2 = session.scalar(select(EmbeddingEntry).where(EmbeddingEntry.pixel_sha256 == key(2).pixel_sha256))
        e2.last_used_at, e1.last_used_at = e1.last_used_at, e2.last_used_at  # 1 is now newer than 2
        e2_blob = e2.blob_sha
    other_process.put(key(3), emb(3))
    assert other_process.get(key(2)) is None and not store.blobs.exists(e2_blob)
    assert other_process.get(key(1)) is not None and other_process.get(key(3)) is not None
    with store.transaction() as session:
        total = session.scalar(select(func.sum(EmbeddingEntry.size_bytes)))
    assert total <= backing.budget_bytes
    store.close()
