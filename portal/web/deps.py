"""The request's dependencies (FastAPI ``Depends``): its transaction, the blob store, settings and queue.

Apart from the routers, so that ``portal.web.auth`` and the API routers can both
use them without importing each other.
"""

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from portal.store.blobs import BlobStore
from portal.store.settings import Settings
from portal.store.store import Store
from workers.queue import JobQueue


def store_of(request: Request) -> Store:
    return request.app.state.store


def db_session(request: Request) -> Iterator[Session]:
    """One transaction per request, committed before the response is sent (``scope="function"``).

    The default scope would commit after the answer had left, so a failed
    commit would follow a 200; here a failure rolls back and becomes the error
    response. Routes that stream an upload or decode for long open their
    transaction after that work instead, so SQLite's write lock is never held
    across it.
    """
    with store_of(request).transaction() as session:
        yield session


def blobs_of(request: Request) -> BlobStore:
    return store_of(request).blobs


def settings_of(request: Request) -> Settings:
    return store_of(request).settings


Db = Annotated[Session, Depends(db_session, scope="function")]
Blobs = Annotated[BlobStore, Depends(blobs_of)]
AppSettings = Annotated[Settings, Depends(settings_of)]


def queue_of(request: Request) -> JobQueue:
    """The app's one job queue (a FastAPI dependency: ``queue: JobQueue = Depends(queue_of)``)."""
    return request.app.state.queue
