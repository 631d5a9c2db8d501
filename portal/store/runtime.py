"""Loading model versions for a store: the one settings-to-``Predictor`` factory and an LRU of loaded versions.

The web process (decodes against cached embeddings), the workers (encodes,
pre-labelling, evaluation, fine-tuning) and the CLI all build predictors, and
they must build the same one: the same backend, ONNX folder and decode chunking,
and, for the two server sides, the same embedding cache over the blob store,
so an embedding one side computes is a hit on the other. Nothing here runs at
import; a ``ModelPool`` loads a version on its first use.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections import OrderedDict
from pathlib import Path

from medsam_core.cache import EmbeddingCache
from medsam_core.models import LoadedModel, load_model
from medsam_core.predictor import Predictor
from portal.store.embeddings import BlobEmbeddingStore
from portal.store.errors import NotFoundError
from portal.store.models import ModelVersion
from portal.store.settings import Settings
from portal.store.store import Store


def build_predictor(settings: Settings, model: LoadedModel, cache: EmbeddingCache | None) -> Predictor:
    """Every Predictor anyone builds comes from here, so backend and chunking never differ between callers."""
    return Predictor(
        model,
        cache,
        backend=settings.inference_backend,
        onnx_dir=settings.onnx_dir,
        chunk_boxes=settings.decode_chunk_boxes,
    )


def shared_embedding_cache(store: Store) -> EmbeddingCache:
    """Memory in front of the blob store: what the web process and the workers share."""
    settings = store.settings
    return EmbeddingCache(
        BlobEmbeddingStore(store, settings.embedding_cache_mb * 1024 * 1024),
        memory_items=settings.embedding_memory_items,
    )


def checkpoint_file(store: Store, blob: str) -> Path:
    """A checkpoint blob as a local file (torch loads paths), copied once per data folder."""
    folder = store.settings.data_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{blob}.pth"
    if not target.exists():
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        with store.blobs.open(blob) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)  # digest verified at EOF by the blob reader
        os.replace(tmp, target)
    return target


def load_version(store: Store, version_id: int) -> tuple[ModelVersion, LoadedModel]:
    """A registered version's row and its weights, on the configured device."""
    with store.transaction() as session:
        version = session.get(ModelVersion, version_id)
        if version is None:
            raise NotFoundError(f"model version {version_id} does not exist")
    checkpoint = None if version.checkpoint_blob is None else checkpoint_file(store, version.checkpoint_blob)
    return version, load_model(version.family, checkpoint, store.settings.device)


class ModelPool:
    """At most ``size`` model versions in memory; the least recently used one is dropped first."""

    def __init__(self, store: Store, size: int | None = None):
        self.store = store
        self.size = size or store.settings.model_pool_size
        self._predictors: OrderedDict[int, Predictor] = OrderedDict()
        self._lock = threading.Lock()
        self.cache = shared_embedding_cache(store)

    def predictor(self, version_id: int) -> Predictor:
        with self._lock:
            found = self._predictors.get(version_id)
            if found is not None:
                self._predictors.move_to_end(version_id)
                return found
        _, model = load_version(self.store, version_id)
        predictor = build_predictor(self.store.settings, model, self.cache)
        with self._lock:
            self._predictors[version_id] = predictor
            while len(self._predictors) > self.size:
                self._predictors.popitem(last=False)
        return predictor

    def checkpoint_file(self, blob: str) -> Path:
        return checkpoint_file(self.store, blob)
