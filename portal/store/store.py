"""The handle every caller gets: engine, sessions, blob store and settings, opened once per process."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from portal.store.blobs import BlobStore, open_blob_store
from portal.store.db import make_engine, make_sessionmaker
from portal.store.migrate import ensure_current
from portal.store.models import ModelVersion
from portal.store.settings import Settings, get_settings

log = logging.getLogger(__name__)


@dataclass
class Store:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    blobs: BlobStore

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One unit of work: commits on success, rolls back on any exception."""
        with self.sessions.begin() as session:
            yield session

    def close(self) -> None:
        self.engine.dispose()


def open_store(
    settings: Settings | None = None, *, auto_migrate: bool | None = None, register_base: bool = True
) -> Store:
    settings = settings or get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    ensure_current(engine, settings.auto_migrate if auto_migrate is None else auto_migrate)
    store = Store(
        settings=settings,
        engine=engine,
        sessions=make_sessionmaker(engine),
        blobs=open_blob_store(settings.resolved_storage_url, s3_endpoint_url=settings.s3_endpoint_url),
    )
    if register_base:
        register_base_models(store)
    return store


@lru_cache(maxsize=1)
def bundled_lite_digests() -> tuple[str, str]:
    from medsam_core.models import load_model

    loaded = load_model("lite", device="cpu")
    return loaded.encoder_digest, loaded.model_digest


def register_base_models(store: Store) -> ModelVersion:
    """The bundled LiteMedSAM as a base version, so that every mask can point to the model that made it."""
    with store.transaction() as session:
        existing = session.scalar(
            select(ModelVersion).where(
                ModelVersion.family == "lite", ModelVersion.project_id.is_(None), ModelVersion.checkpoint_blob.is_(None)
            )
        )
        if existing is not None:
            return existing
    encoder_digest, model_digest = bundled_lite_digests()
    with store.transaction() as session:
        again = session.scalar(
            select(ModelVersion).where(
                ModelVersion.family == "lite",
                ModelVersion.project_id.is_(None),
                ModelVersion.model_digest == model_digest,
            )
        )
        if again is not None:
            return again
        version = ModelVersion(
            name="LiteMedSAM (bundled)",
            family="lite",
            encoder_digest=encoder_digest,
            model_digest=model_digest,
            metrics={},
        )
        session.add(version)
        log.info("registered the bundled LiteMedSAM as base model version")
    return version
