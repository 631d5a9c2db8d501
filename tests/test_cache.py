import os
import time

import numpy as np
import pytest

from medsam_core.cache import (
    EMBEDDING_SHAPE,
    CacheKey,
    DirectoryEmbeddingStore,
    EmbeddingCache,
    embedding_from_bytes,
    embedding_to_bytes,
    pixel_sha256,
)

ENTRY = 2 * 256 * 64 * 64 + 128  # fp16 payload plus the npy header


def key(n: int) -> CacheKey:
    return CacheKey(f"{n:064x}", "lite", "e" * 64)


def emb(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(EMBEDDING_SHAPE).astype(np.float16)


def test_fp16_round_trip_is_byte_exact():
    arr = emb(1)
    back = embedding_from_bytes(embedding_to_bytes(arr))
    assert back.dtype == np.float16 and back.tobytes() == arr.tobytes()


def test_damaged_entries_are_misses(tmp_path):
    store = DirectoryEmbeddingStore(tmp_path, 10 * ENTRY)
    cache = EmbeddingCache(store, memory_items=0)
    cache.put(key(1), emb(1))
    path = next(tmp_path.rglob("*.npy"))
    path.write_bytes(path.read_bytes()[:1000])
    assert cache.get(key(1)) is None
    assert embedding_from_bytes(b"not numpy") is None


def test_directory_store_evicts_least_recently_used(tmp_path):
    store = DirectoryEmbeddingStore(tmp_path, budget_bytes=int(2.5 * ENTRY))
    cache = EmbeddingCache(store, memory_items=0)
    for n in (1, 2):
        cache.put(key(n), emb(n))
        time.sleep(0.02)
    old = time.time() - 100
    for p in tmp_path.rglob("*.npy"):
        os.utime(p, (old, old))
    assert cache.get(key(1)) is not None  # reading refreshes entry 1
    cache.put(key(3), emb(3))  # over budget: entry 2 is now the least recently used
    assert cache.get(key(2)) is None
    assert cache.get(key(1)) is not None and cache.get(key(3)) is not None
    assert store.size_bytes() <= store.budget_bytes


def test_persistent_store_survives_a_new_cache_object(tmp_path):
    EmbeddingCache(DirectoryEmbeddingStore(tmp_path, 10 * ENTRY)).put(key(7), emb(7))
    fresh = EmbeddingCache(DirectoryEmbeddingStore(tmp_path, 10 * ENTRY))
    assert fresh.get(key(7)).tobytes() == emb(7).tobytes()


def test_memory_tier_is_bounded():
    cache = EmbeddingCache(store=None, memory_items=2)
    for n in range(3):
        cache.put(key(n), emb(n))
    assert cache.get(key(0)) is None and cache.get(key(2)) is not None


def test_pixel_key_depends_on_shape_and_bytes():
    a = np.zeros((4, 6, 3), np.uint8)
    assert pixel_sha256(a) != pixel_sha256(a.reshape(6, 4, 3))
    b = a.copy()
    b[0, 0, 0] = 1
    assert pixel_sha256(a) != pixel_sha256(b)
    assert pixel_sha256(a) == pixel_sha256(a.copy())


def test_budget_must_be_positive(tmp_path):
    with pytest.raises(ValueError):
        DirectoryEmbeddingStore(tmp_path, 0)
