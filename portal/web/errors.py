"""Turning exceptions into answers a person can act on: a status code and a plain message.

Every message is scrubbed of server paths (``portal.store.redact``) on its way out.
"""

from __future__ import annotations

import logging
import math

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from medsam_core.errors import MedsamError
from portal.store.errors import ConflictError, DuplicateError, NotFoundError, PermissionDeniedError
from portal.store.redact import scrub
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


def status_for(exc: Exception) -> int:
    return next((code for kind, code in ERROR_STATUS if isinstance(exc, kind)), 400)


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
    # Raw bytes (a body sent with a non-JSON content type) are summarised, not echoed or decoded.
    errors = jsonable_encoder(exc.errors(), custom_encoder={bytes: lambda b: f"<{len(b)} bytes>"})
    return JSONResponse({"detail": _json_safe(errors)}, status_code=422)


async def internal_error(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return JSONResponse(
        {"detail": f"internal error: {type(exc).__name__}; it was logged, please report it"}, status_code=500
    )


def install(app) -> None:
    app.add_exception_handler(MedsamError, medsam_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, internal_error)
