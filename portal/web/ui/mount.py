"""Mounting the two Blocks on the FastAPI app: the public demo at /demo, the logged-in portal at /."""

import gradio as gr
from fastapi import FastAPI

from portal.store.services.users import authenticate
from portal.web.ui.common import UI_TMP, DEMO_TTL_S, sweep, tmp_dir
from portal.web.ui.engine import DemoEngine
from portal.web.ui.segment import build_segment_tab

# The rotate buttons of the box tool would deliver boxes in a rotated frame; the portal never rotates.
CSS = """
button[aria-label^="Rotate"], button[title^="Rotate"] { display: none !important; }
#ann-conflict { border: 2px solid #d97706; padding: 8px; }
"""


def _auth(store):
    def check(username: str, password: str) -> bool:
        with store.transaction() as session:
            return authenticate(session, username, password) is not None

    return check


def build_demo(engine, max_pixels: int) -> gr.Blocks:
    with gr.Blocks(title="MedSAM demo", delete_cache=(600, DEMO_TTL_S)) as demo:
        gr.Markdown("## MedSAM segmentation demo\nUpload an image, drag a box around the structure, download "
                    "the mask. Uploads are deleted after an hour. [Log in](/) for projects and labelling.")
        build_segment_tab(engine, max_pixels, prefix="seg")
    return demo


def mount(app: FastAPI) -> None:
    from portal.web.ui.portal import SHORTCUTS_JS, build_portal

    store, settings = app.state.store, app.state.settings
    engine = DemoEngine(store)
    engine.predictor()  # load (and export to ONNX once) now, in the main thread: torch's exporter is not thread-safe
    app.state.ui_engine = engine
    tmp_dir("demo")
    sweep("demo")
    allowed = [str(UI_TMP)]
    if getattr(settings, "public_demo", True):
        demo = build_demo(engine, settings.max_image_pixels)
        demo.queue(default_concurrency_limit=4)
        gr.mount_gradio_app(app, demo, path="/demo", allowed_paths=allowed, css=CSS, footer_links=[])
    portal = build_portal(app.state, engine)
    portal.queue(default_concurrency_limit=4)
    gr.mount_gradio_app(app, portal, path="/", auth=_auth(store),
                        auth_message="Log in to the MedSAM portal. No account? Ask an admin "
                                     "(medsam user add NAME --role annotator).",
                        allowed_paths=allowed, css=CSS, head=SHORTCUTS_JS, footer_links=["api"])
