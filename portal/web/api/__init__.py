"""The REST API under /api/v1: one router per concept, all calling the store's services.

Routes hold no business rules; those live in ``portal.store.services``, and
queued work goes through the queue port (``workers.queue.JobQueue``), which
calls the same services, so the UI and the API cannot disagree.
"""

from fastapi import APIRouter

from portal.web.deps import AppSettings, Blobs, Db, blobs_of, db_session, queue_of, settings_of, store_of

__all__ = [
    "PREFIX",
    "AppSettings",
    "Blobs",
    "Db",
    "blobs_of",
    "db_session",
    "queue_of",
    "routers",
    "settings_of",
    "store_of",
]
PREFIX = "/api/v1"


def routers() -> list[APIRouter]:
    """Each router carries the full prefix itself, so metrics see whole route templates."""
    from portal.web import auth
    from portal.web.api import annotations, export, images, masks, models, projects, training, volumes

    return [m.router for m in (auth, projects, images, volumes, masks, annotations, training, models, export)]
