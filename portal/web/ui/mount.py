"""Mounting the two Blocks on the FastAPI app: the public demo at /demo, the logged-in portal at /."""

from collections.abc import Awaitable, Callable
from contextvars import ContextVar

import gradio as gr
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from portal.store.services.users import login
from portal.store.settings import Settings
from portal.store.store import Store
from portal.web.auth import client_address, too_many_logins
from portal.web.ui.common import UI_TMP, demo_ttl_s, sweep, tmp_dir
from portal.web.ui.engine import DemoEngine
from portal.web.ui.segment import build_segment_tab

# The rotate buttons of the box tool would deliver boxes in a rotated frame; the portal never rotates.
CSS = """
button[aria-label^="Rotate"], button[title^="Rotate"] { display: none !important; }
#ann-conflict { border: 2px solid #d97706; padding: 8px; }
"""


# Gradio calls the auth function with (username, password) only; the address reaches it through this.
_client: ContextVar[str | None] = ContextVar("ui_login_client", default=None)


class _ClientAddress:
    """Pure ASGI middleware that notes each HTTP request's peer address for the UI login's throttle."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        token = _client.set(client_address(scope))
        try:
            await self.app(scope, receive, send)
        finally:
            _client.reset(token)


def _auth(store: Store) -> Callable[[str, str], Awaitable[bool]]:
    """The UI login, throttled like the API's. A locked login raises 429, which Gradio's
    /login route passes on; the hashing and the database run off the event loop."""

    def attempt(username: str, password: str, address: str | None) -> tuple[bool, int]:
        with store.transaction() as session:
            outcome = login(session, username, password, address, store.settings)
            return outcome.user is not None, outcome.retry_after

    async def check(username: str, password: str) -> bool:
        ok, retry_after = await run_in_threadpool(attempt, username, password, _client.get())
        if retry_after:
            raise too_many_logins(retry_after)
        return ok

    return check


def _lifetime(minutes: int) -> str:
    return "an hour" if minutes == 60 else f"{minutes} minute{'s' if minutes != 1 else ''}"


def build_demo(engine: DemoEngine, settings: Settings) -> gr.Blocks:
    """The public page; uploads live ``demo_ttl_minutes`` in our folder and in Gradio's cache alike."""
    ttl_s = int(demo_ttl_s(settings))
    with gr.Blocks(title="MedSAM demo", delete_cache=(min(600, ttl_s), ttl_s)) as demo:
        gr.Markdown(
            "## MedSAM segmentation demo\nUpload an image, drag a box around the structure, download "
            f"the mask. Uploads are deleted after {_lifetime(settings.demo_ttl_minutes)}. "
            "[Log in](/) for projects and labelling."
        )
        build_segment_tab(engine, settings, prefix="seg")
    return demo


def mount(app: FastAPI) -> None:
    from portal.web.ui.portal import SHORTCUTS_JS, build_portal

    store, settings = app.state.store, app.state.settings
    engine = DemoEngine(store)
    engine.predictor()  # load (and export to ONNX once) now, in the main thread: torch's exporter is not thread-safe
    app.state.ui_engine = engine
    tmp_dir("demo")
    sweep("demo", demo_ttl_s(settings))
    allowed = [str(UI_TMP)]
    if getattr(settings, "public_demo", True):
        demo = build_demo(engine, settings)
        demo.queue(default_concurrency_limit=4)
        # The anonymous demo may serve its own files only, never the portal's exports.
        gr.mount_gradio_app(
            app,
            demo,
            path="/demo",
            max_file_size=f"{settings.max_upload_mb}mb",
            allowed_paths=[str(UI_TMP / "demo")],
            css=CSS,
            footer_links=[],
        )
    portal = build_portal(app.state, engine)
    portal.queue(default_concurrency_limit=4)
    app.add_middleware(_ClientAddress)
    gr.mount_gradio_app(
        app,
        portal,
        path="/",
        max_file_size=f"{settings.max_upload_mb}mb",
        auth=_auth(store),
        auth_message="Log in to the MedSAM portal. No account? Ask an admin "
        "(medsam user add NAME --role annotator). After "
        f"{settings.login_max_failures} wrong passwords the account "
        "and your address are locked for a while.",
        allowed_paths=allowed,
        css=CSS,
        head=SHORTCUTS_JS,
        footer_links=["api"],
    )
