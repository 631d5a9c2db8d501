"""Per-process state of a worker: the store, and an LRU of loaded models (``portal.store.runtime.ModelPool``).

Everything is created lazily, after the prefork pool has forked, so no child
inherits a database connection or a half-initialised CUDA context.
"""

from __future__ import annotations

import os
import threading

from portal.store.runtime import ModelPool
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
    assert _pool is not None
    return _pool
