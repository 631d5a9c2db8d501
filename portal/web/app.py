"""The ASGI app factory: `uvicorn --factory portal.web.app:create_app` or `medsam serve`.

One app serves the REST API (/api/v1, docs at /api/docs), health, /metrics and,
when the UI package is present, the Gradio UI at /. The UI gets the same
store, settings, SegmentationService and job queue on ``app.state``, so both
halves call the same services. The queue (``workers.queue.JobQueue``) is the
only piece of the workers this process holds; it connects on its first send.
"""

from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from portal.store.settings import Settings, get_settings
from portal.store.store import open_store
from portal.web import errors, health, metrics
from portal.web.api import routers
from portal.web.auth import ensure_first_admin
from portal.web.memory import limit_arenas
from portal.web.middleware import JsonBodyLimit, SecurityHeaders
from portal.web.segmentation import SegmentationService
from workers.queue import JobQueue

log = logging.getLogger(__name__)
WARMUP_JOIN_S = 60


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    limit_arenas()
    store = open_store(settings)  # upgrades a database that is behind, or refuses with the reason
    ensure_first_admin(store)
    queue = JobQueue(settings)
    segmentation = SegmentationService(store, queue)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Load the model (and export its ONNX graphs) now, not on somebody's first click.
        warmup = threading.Thread(target=_warm, args=(segmentation,), daemon=True, name="model-warmup")
        warmup.start()
        yield
        # A thread still inside ONNX Runtime or torch at interpreter exit aborts the process.
        warmup.join(WARMUP_JOIN_S)
        store.close()

    # Swagger UI and ReDoc from the installed package, not a CDN: /api/docs works on a closed network.
    app = FastAPIOffline(
        title="medsam-portal",
        version="0.1.0",
        docs_url="/api/docs",
        redoc_url="/api/redoc",
        static_url="/api/docs/assets",
        openapi_url="/api/openapi.json",
        swagger_ui_oauth2_redirect_url="/api/docs/oauth2-redirect",
        lifespan=lifespan,
    )
    app.state.store = store
    app.state.settings = settings
    app.state.queue = queue
    app.state.segmentation = segmentation
    errors.install(app)
    app.add_middleware(JsonBodyLimit, limit_bytes=settings.max_json_kb * 1024)
    app.add_middleware(metrics.RequestTimer)
    app.add_middleware(SecurityHeaders)  # outermost: even a refused body gets the headers
    app.include_router(health.router)
    app.include_router(metrics.router)
    for router in routers():
        app.include_router(router)
    from portal.web.ui import mount_ui

    mount_ui(app)  # last: Gradio mounted at "/" hides any route added after it
    return app


def _warm(segmentation: SegmentationService) -> None:
    try:
        segmentation.warm()
    except Exception:  # noqa: BLE001 - the first prompt will load it (and say why it fails)
        log.exception("model warm-up failed")
