"""Opening a real store (database + blobs) for tests, on each database and storage backend."""

from __future__ import annotations

import uuid

import numpy as np
from PIL import Image as PILImage

from portal.store.models import Role
from portal.store.services.users import create_user
from portal.store.settings import Settings
from portal.store.store import Store, open_store


def make_store(db_url: str, data_dir, storage_url: str | None = None, **extra) -> Store:
    settings = Settings(data_dir=data_dir, database_url=db_url, storage_url=storage_url, **extra)
    return open_store(settings)


def store_per_database(request, tmp_path_factory, prefix: str):
    """Body of a module fixture parametrised over ["sqlite", "postgresql"]: a store on a throwaway database."""
    from tests.dbutil import temporary_database

    tmp = tmp_path_factory.mktemp(f"{prefix}_{request.param}")
    with temporary_database(request.param, tmp) as url:
        store = make_store(url, tmp)
        yield store
        store.close()


def new_user(store: Store, role: Role, prefix: str = "u"):
    with store.transaction() as session:
        return create_user(session, f"{prefix}{uuid.uuid4().hex[:8]}", "correct horse battery", role)


def png_file(folder, seed: int, size=(48, 64)):
    """A small, unique PNG (different pixels per seed)."""
    rng = np.random.default_rng(seed)
    path = folder / f"img_{seed}.png"
    PILImage.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return path


def square_mask(shape=(48, 64), x0=10, y0=10, side=20):
    m = np.zeros(shape, np.uint8)
    m[y0 : y0 + side, x0 : x0 + side] = 1
    return m


def tx(store: Store, fn, *args, **kwargs):
    """Call a service ``fn(db, *args, **kwargs)`` in a transaction of its own, as a request or a task does."""
    with store.transaction() as db:
        return fn(db, *args, **kwargs)
