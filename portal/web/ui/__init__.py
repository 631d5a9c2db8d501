"""The Gradio UI: the logged-in portal at ``/`` and the public demo at ``/demo``."""

from __future__ import annotations

from fastapi import FastAPI


def mount_ui(app: FastAPI) -> None:
    """Mount the Gradio Blocks on ``app`` (needs ``app.state.store`` and ``app.state.settings``)."""
    from portal.web.ui.mount import mount

    mount(app)
