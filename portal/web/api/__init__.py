"""The REST API under /api/v1: one router per concept, all calling the store's services.

Routes hold no business rules; those live in ``portal.store.services``, and
queued work goes through the queue port (``workers.queue.JobQueue``), which
calls the same services, so the UI and the API cannot disagree.
"""


from fastapi import APIRouter, Request

from portal.store.store import Store
from workers.queue import JobQueue

PREFIX = "/api/v1"


def store_of(request: Request) -> Store:
    return request.app.state.store


def queue_of(request: Request) -> JobQueue:
    """The app's one job queue (a FastAPI dependency: ``queue: JobQueue = Depends(queue_of)``)."""
    return request.app.state.queue


def routers() -> list[APIRouter]:
    """Each router carries the full prefix itself, so metrics see whole route templates."""
    from portal.web import auth
    from portal.web.api import annotations, export, images, masks, models, projects, training

    return [m.router for m in (auth, projects, images, masks, annotations, training, models, export)]
