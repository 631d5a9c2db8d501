"""Embedding cache: an in-memory LRU in front of a persistent, size-budgeted store.

The key is what the encoder actually saw (SHA-256 of the windowed, selected
pixels and their shape), the family, and the digest of the image-encoder
weights. Two windows or two slices of one file never share an entry, and a
decoder-only fine-tune keeps every entry valid. Values are fp16 (2 MB for the
256x64x64 embedding of every family), stored as npy bytes that round-trip
exactly.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

EMBEDDING_SHAPE = (256, 64, 64)


@dataclass(frozen=True)
class CacheKey:
    pixel_sha256: str
    family: str
    encoder_digest: str

    @property
    def name(self) -> str:
        return f"{self.family}/{self.encoder_digest[:16]}/{self.pixel_sha256[:2]}/{self.pixel_sha256}"


def pixel_sha256(pixels: np.ndarray) -> str:
    """Hash shape, dtype and bytes, so a reshaped buffer never aliases another image."""
    arr = np.ascontiguousarray(pixels)
    digest = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode())
    digest.update(arr.data.cast("B"))  # arr.data is memoryview(arr)
    return digest.hexdigest()


def embedding_to_bytes(embedding: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(embedding, dtype=np.float16), allow_pickle=False)
    return buf.getvalue()


def embedding_from_bytes(data: bytes) -> np.ndarray | None:
    """None for anything damaged: a bad cache entry is a miss, never a crash."""
    try:
        arr: np.ndarray = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError):
        return None
    if arr.dtype != np.float16 or arr.shape != EMBEDDING_SHAPE:
        return None
    return arr


class EmbeddingStore(Protocol):
    """The persistent tier. A directory now; the portal's blob store implements the same two calls."""

    def get(self, key: CacheKey) -> bytes | None: ...

    def put(self, key: CacheKey, data: bytes) -> None: ...


class DirectoryEmbeddingStore:
    """Files under ``root``; least-recently-used entries (by mtime, refreshed on read) go over budget."""

    def __init__(self, root: str | Path, budget_bytes: int):
        if budget_bytes <= 0:
            raise ValueError("embedding cache budget must be positive")
        self.root = Path(root)
        self.budget_bytes = int(budget_bytes)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # A running total keeps puts O(1); the directory is rescanned only when
        # the total says we may be over budget (other processes write here too).
        self._approx_total = self.size_bytes()

    def _path(self, key: CacheKey) -> Path:
        return self.root / f"{key.name}.npy"

    def get(self, key: CacheKey) -> bytes | None:
        path = self._path(key)
        try:
            data = path.read_bytes()
            os.utime(path)
        except FileNotFoundError:
            return None
        return data

    def put(self, key: CacheKey, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)  # readers see the old file or the whole new one, never half
        self._approx_total += len(data)
        if self._approx_total > self.budget_bytes:
            self.evict()

    def entries(self) -> list[tuple[float, int, Path]]:
        out = []
        for path in self.root.rglob("*.npy"):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            out.append((st.st_mtime, st.st_size, path))
        return out

    def size_bytes(self) -> int:
        return sum(size for _, size, _ in self.entries())

    def evict(self) -> int:
        with self._lock:
            entries = sorted(self.entries())
            total = sum(size for _, size, _ in entries)
            removed = 0
            for _, size, path in entries:
                if total <= self.budget_bytes:
                    break
                path.unlink(missing_ok=True)
                total -= size
                removed += 1
            self._approx_total = total
            return removed


class EmbeddingCache:
    def __init__(self, store: EmbeddingStore | None = None, memory_items: int = 16):
        self.store = store
        self.memory_items = memory_items
        self._memory: OrderedDict[CacheKey, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: CacheKey) -> np.ndarray | None:
        with self._lock:
            found = self._memory.get(key)
            if found is not None:
                self._memory.move_to_end(key)
                self.hits += 1
                return found
        if self.store is not None:
            data = self.store.get(key)
            arr = embedding_from_bytes(data) if data is not None else None
            if arr is not None:
                self._remember(key, arr)
                self.hits += 1
                return arr
        self.misses += 1
        return None

    def put(self, key: CacheKey, embedding: np.ndarray) -> np.ndarray:
        arr = np.ascontiguousarray(embedding, dtype=np.float16).reshape(EMBEDDING_SHAPE)
        if self.store is not None:
            self.store.put(key, embedding_to_bytes(arr))
        self._remember(key, arr)
        return arr

    def _remember(self, key: CacheKey, arr: np.ndarray) -> None:
        if self.memory_items <= 0:
            return
        with self._lock:
            self._memory[key] = arr
            self._memory.move_to_end(key)
            while len(self._memory) > self.memory_items:
                self._memory.popitem(last=False)
