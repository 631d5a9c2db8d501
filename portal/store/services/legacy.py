"""Transitional: the three services the jobs/training side still calls with the whole Store.

``evaluations.py`` and ``training.py`` are converted to Session-first services
separately, and until then they pass a ``Store`` to ``training_set``,
``display_pixels`` and ``load_mask``. A Protocol lets those three accept it
without the services depending on the Store again; delete this module once
those callers pass a Session, the BlobStore and the Settings.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol

from sqlalchemy.orm import Session

from portal.store.blobs import BlobStore
from portal.store.settings import Settings


class LegacyStore(Protocol):
    blobs: BlobStore
    settings: Settings

    def transaction(self) -> AbstractContextManager[Session]: ...


def blobs_of(source: BlobStore | LegacyStore) -> BlobStore:
    return source if isinstance(source, BlobStore) else source.blobs
