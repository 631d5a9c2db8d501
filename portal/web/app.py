"""The ASGI app factory: `uvicorn --factory portal.web.app:create_app` or `medsam serve`."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from portal.store.settings import Settings, get_settings
from portal.store.store import open_store
from portal.web import health


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    store = open_store(settings)  # upgrades a database that is behind, or refuses with the reason

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        store.close()

    app = FastAPI(title="medsam-portal", version="0.1.0", docs_url="/api/docs", openapi_url="/api/openapi.json",
                  lifespan=lifespan)
    app.state.store = store
    app.state.settings = settings
    app.include_router(health.router)
    return app
