"""Turning exceptions into answers a person can act on: a status code and a plain message.

Messages come from many layers (the image reader, the blob store, Celery), and some
of them name files on the server. Those paths mean nothing to a user and tell an
attacker about the deployment, so every message is scrubbed down to file names.
"""

from __future__ import annotations

import logging
import math
import re
import sys
import tempfile
from pathlib import Path

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from medsam_core.errors import MedsamError
from portal.store.errors import ConflictError, DuplicateError, NotFoundError, PermissionDeniedError
from portal.store.services.training import GateError
from portal.web.segmentation import EncodeUnavailableError

log = logging.getLogger(__name__)

# First match wins; anything else a user got wrong is a 400.
ERROR_STATUS = (
    (EncodeUnavailableError, 503),
    (NotFoundError, 404),
    (PermissionDeniedError, 403),
    (ConflictError, 409),
    (DuplicateError, 409),
    (GateError, 409),
)
# Top-level folders a server path starts with; "/api/v1/..." routes in messages are left alone.
_ROOTS = ("tmp", "var", "home", "root", "usr", "opt", "srv", "mnt", "data", "work", "private", "run", "app", "etc")


def status_for(exc: Exception) -> int:
    return next((code for kind, code in ERROR_STATUS if isinstance(exc, kind)), 400)


def _path_pattern() -> re.Pattern:
    roots = set(_ROOTS)
    for known in (tempfile.gettempdir(), sys.prefix, str(Path.home()), str(Path.cwd())):
        parts = Path(known).parts
        if len(parts) > 1:
            roots.add(parts[1])
    alternatives = "|".join(sorted((re.escape(r) for r in roots), key=len, reverse=True))
    return re.compile(rf"(?<![\w.:/])/(?:{alternatives})(?:/[^\s'\"<>():,;]+)+")


_PATH = _path_pattern()


def scrub(text: str) -> str:
    """Server paths in a message become their last component: '/srv/x/uploads/tmpab.png' -> 'tmpab.png'."""
    return _PATH.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1], text)


async def medsam_error(_request: Request, exc: MedsamError) -> JSONResponse:
    if isinstance(exc, ConflictError):
        detail = {"current_revision": exc.current_revision, "author": exc.author, "message": scrub(str(exc))}
    else:
        detail = scrub(str(exc))
    return JSONResponse({"detail": detail}, status_code=status_for(exc))


async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
    detail = scrub(exc.detail) if isinstance(exc.detail, str) else exc.detail
    return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # 'nan', 'inf': JSON has no such numbers
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's own 422 shape; a refused NaN echoed back as ``input`` would otherwise make the answer a 500."""
    return JSONResponse({"detail": _json_safe(jsonable_encoder(exc.errors()))}, status_code=422)


async def internal_error(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return JSONResponse({"detail": f"internal error: {type(exc).__name__}; it was logged, please report it"},
                        status_code=500)


def install(app) -> None:
    app.add_exception_handler(MedsamError, medsam_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, internal_error)
