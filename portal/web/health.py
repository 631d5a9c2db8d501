"""Liveness and readiness: /healthz says the process runs, /readyz that its dependencies answer."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from portal.web.errors import scrub

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict:
    """On the event loop, not the thread pool: liveness must answer while every worker thread decodes."""
    return {"status": "ok"}


def _check(name: str, fn) -> dict:
    start = time.perf_counter()
    try:
        fn()
        return {"name": name, "ok": True, "ms": round((time.perf_counter() - start) * 1000, 1)}
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready", with the reason
        return {"name": name, "ok": False, "error": scrub(f"{type(exc).__name__}: {exc}")[:300]}


@router.get("/readyz")
def readyz(request: Request) -> JSONResponse:
    store = request.app.state.store

    def database():
        with store.engine.connect() as conn:
            conn.execute(text("select 1"))

    def broker():
        from kombu import Connection

        with Connection(request.app.state.settings.resolved_broker_url, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1, timeout=3)

    checks = [_check("database", database), _check("broker", broker), _check("storage", store.blobs.check)]
    ready = all(c["ok"] for c in checks)
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)
