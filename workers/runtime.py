"""Per-process state of a worker: the store, and an LRU of loaded models.

Everything is created lazily, after the prefork pool has forked, so no child
inherits a database connection or a half-initialised CUDA context.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections import OrderedDict
from pathlib import Path

from medsam_core.cache import EmbeddingCache
from medsam_core.models import load_model
from medsam_core.predictor import Predictor
from portal.store.embeddings import BlobEmbeddingStore
from portal.store.errors import NotFoundError
from portal.store.models import ModelVersion
from portal.store.store import Store, open_store

_lock = threading.Lock()
_store: Store | None = None
_pool: ModelPool | None = None
_pid: int | None = None


def get_store() -> Store:
    global _store, _pool, _pid
    with _lock:
        if _store is None or _pid != os.getpid():
            _store = open_store()
            _pool = ModelPool(_store, _store.settings.model_pool_size)
            _pid = os.getpid()
        return _store


def get_pool() -> ModelPool:
    get_store()
    return _pool


class ModelPool:
    """At most ``size`` model versions in memory; the least recently used one is dropped first."""

    def __init__(self, store: Store, size: int):
        self.store = store
        self.size = size
        self._predictors: OrderedDict[int, Predictor] = OrderedDict()
        self._lock = threading.Lock()
        settings = store.settings
        self.cache = EmbeddingCache(BlobEmbeddingStore(store, settings.embedding_cache_mb * 1024 * 1024),
                                    memory_items=settings.embedding_memory_items)

    def predictor(self, version_id: int) -> Predictor:
        with self._lock:
            found = self._predictors.get(version_id)
            if found is not None:
                self._predictors.move_to_end(version_id)
                return found
        predictor = self._load(version_id)
        with self._lock:
            self._predictors[version_id] = predictor
            while len(self._predictors) > self.size:
                self._predictors.popitem(last=False)
        return predictor

    def _load(self, version_id: int) -> Predictor:
        with self.store.transaction() as session:
            version = session.get(ModelVersion, version_id)
            if version is None:
                raise NotFoundError(f"model version {version_id} does not exist")
        settings = self.store.settings
        checkpoint = None if version.checkpoint_blob is None else self.checkpoint_file(version.checkpoint_blob)
        model = load_model(version.family, checkpoint, settings.device)
        return Predictor(model, self.cache, backend=settings.inference_backend, onnx_dir=settings.onnx_dir,
                         chunk_boxes=settings.decode_chunk_boxes)

    def checkpoint_file(self, blob: str) -> Path:
        folder = self.store.settings.data_dir / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{blob}.pth"
        if not target.exists():
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            with self.store.blobs.open(blob) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)  # digest verified at EOF by the blob reader
            os.replace(tmp, target)
        return target
