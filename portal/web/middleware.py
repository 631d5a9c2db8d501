"""Pure ASGI middleware for the whole app: a body limit on the JSON API and security headers.

Pure ASGI rather than ``BaseHTTPMiddleware`` because both must act while the body
streams in and on the response's first message, for Gradio's routes as well as ours.
"""

from __future__ import annotations

import re

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

API_PREFIX = "/api/"

# Gradio 6 runs inline scripts (our shortcuts, its own bootstrap) and compiles the
# js_on_load snippets of gr.HTML, hence 'unsafe-inline' and 'unsafe-eval'. What
# the policy still buys: no scripts, styles, fonts or frames from other origins, no
# framing by other sites (clickjacking), no plugins, and forms post only here.
CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; font-src 'self' data:; "
    "connect-src 'self' ws: wss:; media-src 'self' data: blob:; worker-src 'self' blob:; "
    "frame-ancestors 'self'; object-src 'none'; base-uri 'self'; form-action 'self'"
)
_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"SAMEORIGIN"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
_CSP = CSP.encode()  # the API docs are served from here too (portal.web.docs), so one policy fits all


class SecurityHeaders:
    """Adds the headers to every HTTP response, unless a route already set its own."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(k, v) for k, v in _HEADERS + [(b"content-security-policy", _CSP)] if k not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


# The only routes whose bodies may be large: our three uploads (limited while they stream in
# portal.web.api.uploads) and Gradio's upload route (limited by its max_file_size).
UPLOAD_ROUTES = re.compile(r"^(/api/v1/projects/\d+/(images|import|models)|(/demo)?/gradio_api/upload)/?$")
UI_LIMIT_BYTES = 16 * 1024 * 1024  # Gradio's own JSON (queue/join, login): component values, never files


class JsonBodyLimit:
    """Refuses bodies over the limit (413), counting bytes as they arrive.

    A declared Content-Length over the limit is refused before a byte is read; a
    chunked body is cut off at the first chunk past it, so a client cannot make the
    server buffer and parse 80 MB of JSON. The limit is ``limit_bytes`` under /api/
    and ``UI_LIMIT_BYTES`` elsewhere, whatever the content type claims: a JSON route
    called with "multipart/form-data" is held to it too. Only upload routes are exempt.
    """

    def __init__(self, app, limit_bytes: int):
        self.app = app
        self.limit = int(limit_bytes)

    def _limit_for(self, scope) -> int | None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            return None
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        if UPLOAD_ROUTES.match(path):
            return None
        return self.limit if path.startswith(API_PREFIX) else max(self.limit, UI_LIMIT_BYTES)

    @staticmethod
    def _message(limit: int) -> str:
        return (
            f"the request body exceeds the limit of {limit // 1024} KiB for API calls "
            "(MEDSAM_MAX_JSON_KB); send fewer boxes or items per request"
        )

    async def __call__(self, scope, receive, send):
        limit = self._limit_for(scope)
        if limit is None:
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared.isdigit() and int(declared) > limit:
            await JSONResponse({"detail": self._message(limit)}, status_code=413, headers={"Connection": "close"})(
                scope, receive, send
            )
            return
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Raised inside the route's body read; FastAPI's exception middleware answers it.
                    raise HTTPException(413, self._message(limit))
            return message

        await self.app(scope, limited_receive, send)


def _header(scope, name: bytes) -> bytes:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.lower() if name == b"content-type" else value
    return b""
