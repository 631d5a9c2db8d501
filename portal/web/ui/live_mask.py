"""The live mask widget of the Annotate tab: the mask follows the mouse (issue 11, item 10).

Why the decoder runs on the server and not in the browser: onnxruntime-web
1.23 (wasm, SIMD, one thread, as without cross-origin isolation) ran the
exported LiteMedSAM decoder in 336-470 ms per prompt on this 2-core machine
(node 20, the same V8 wasm engine as chromium), while ONNX Runtime in the web
process decodes in 35-60 ms. The 384 ms the old box tool took were not the
decoder but the Gradio event around it (queue, recording the mask, re-sending
the brush editor with its images). So the widget asks for the mask through a
Gradio *server function* (``/gradio_api/component_server``: one POST, no queue,
Gradio's login cookie checked) that only decodes, and draws the answer itself
on a canvas. Recording the proposal (the old, slower event) follows mouse-up
without blocking the drawing.

The server stays the source of truth: the proposal is recomputed from the
prompt with the project's active model version (``SegmentationService.segment``),
whatever the client sends. The client's mask travels along only to be compared
(``dice``), so a disagreement is reported, never stored.

A ``gr.HTML`` with ``js_on_load`` rather than a custom Svelte component: no
node build, nothing to vendor, and ``server_functions`` gives an authenticated
round trip for free.
"""

import base64
import io
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image as PILImage

from medsam_core.errors import MedsamError, PromptError
from portal.store.errors import StoreError
from portal.web.ui.context import PortalContext

JS = Path(__file__).with_name("live_mask.js").read_text()
MAX_SRC_SIDE = 1024  # the picture the widget shows; prompts stay in original pixels
PARITY_DICE = 0.99
HTML = """<div class="live-wrap">
<canvas class="live-canvas"></canvas>
<div class="live-bar"><span class="live-note">Choose an image.</span>
<label><input type="checkbox" class="live-exclude"> clicks exclude</label>
<button type="button" class="live-fit" title="Zoom to fit (wheel zooms, middle-drag or space+drag pans)">Fit</button>
<button type="button" class="live-clear">Clear</button></div></div>"""
CSS = """
.live-wrap { display: flex; flex-direction: column; gap: 6px; }
.live-canvas { width: 100%; height: 520px; touch-action: none; cursor: crosshair; background: #111;
               border-radius: 6px; }
.live-bar { display: flex; gap: 12px; align-items: center; font-size: 0.9em; }
.live-note { flex: 1; }
.live-clear, .live-fit { padding: 2px 10px; border: 1px solid #888; border-radius: 4px; font-size: 0.9em; }
.live-canvas.panning { cursor: grabbing; }
"""


def widget_value(image_id: int, rgb: np.ndarray, colour: str = "#ff2828") -> dict[str, Any]:
    """What the widget shows: the display pixels (at most MAX_SRC_SIDE), the original size prompts use,
    and the label's colour (``label_colour``) the mask is drawn in."""
    height, width = rgb.shape[:2]
    picture = PILImage.fromarray(rgb)
    if max(height, width) > MAX_SRC_SIDE:
        picture.thumbnail((MAX_SRC_SIDE, MAX_SRC_SIDE))
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return {
        "image_id": int(image_id),
        "width": int(width),
        "height": int(height),
        "colour": colour,
        "src": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode(),
    }


def prompt_of(payload: Any) -> tuple[int, list | None, list | None]:
    """(image id, boxes, points) from what the widget sent; anything else in it is ignored."""
    if not isinstance(payload, dict) or "image_id" not in payload:
        raise PromptError("the widget sent no image id")
    boxes, points = payload.get("boxes") or None, payload.get("points") or None
    return int(payload["image_id"]), boxes, points


def preview(ctx: PortalContext, user, image_id: int, boxes, points) -> tuple[np.ndarray, float, int]:
    """(mask, predicted IoU, model version) for a prompt, decoded and not recorded.

    The same steps as ``SegmentationService.segment`` up to the decode (membership, the
    project's active version, the shared embedding cache); only the write is left out, so a
    drag does not add a mask row per mouse move.
    """
    return ctx.segmentation.preview(user, image_id, boxes, points)


def pack(mask: np.ndarray) -> str:
    return base64.b64encode(np.packbits(mask.astype(bool).ravel()).tobytes()).decode()


def unpack(bits: str, height: int, width: int) -> np.ndarray:
    raw = np.frombuffer(base64.b64decode(bits, validate=True), np.uint8)
    return np.unpackbits(raw, count=height * width).reshape(height, width).astype(bool)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def client_dice(payload: Any, server_mask: np.ndarray) -> float | None:
    """Dice of the mask the browser drew against the server's own; None when none (or junk) was sent."""
    bits = payload.get("mask") if isinstance(payload, dict) else None
    if not isinstance(bits, str):
        return None
    try:
        return dice(unpack(bits, *server_mask.shape), server_mask > 0)
    except (ValueError, TypeError):
        return 0.0


def _user(ctx: PortalContext, request):
    """The logged-in user of a server-function call.

    Gradio checks its login cookie on /component_server (``login_check``) but hands the
    function the bare Starlette request, without the user's name; it is read back here
    from the same cookie and token table that check used.
    """
    name = getattr(request, "username", None)
    if not name:
        raw = getattr(request, "request", None) or request
        app = getattr(raw, "app", None)
        cookie_id = getattr(app, "cookie_id", None)
        cookies = getattr(raw, "cookies", {})
        token = cookies.get(f"access-token-{cookie_id}") or cookies.get(f"access-token-unsecure-{cookie_id}")
        name = getattr(app, "tokens", {}).get(token) if cookie_id else None
    return ctx.user(gr.Request(username=name))


def _errors_as_text(fn):
    """A server function's failure becomes {"error": message} for the widget's status line."""

    def wrapper(payload, request: gr.Request):
        try:
            return fn(payload, request)
        except gr.Error as exc:
            return {"error": str(exc.message)}
        except (MedsamError, StoreError, ValueError, TypeError) as exc:
            return {"error": str(exc)}

    wrapper.__name__ = fn.__name__
    return wrapper


def live_widget(ctx: PortalContext, elem_id: str) -> gr.HTML:
    """The widget; its value is ``widget_value(...)`` (or None), set by the tab when an image loads."""
    import time

    @_errors_as_text
    def decode(payload, request: gr.Request):
        started = time.perf_counter()
        image_id, boxes, points = prompt_of(payload)
        mask, iou, version_id = preview(ctx, _user(ctx, request), image_id, boxes, points)
        return {
            "width": int(mask.shape[1]),
            "height": int(mask.shape[0]),
            "bits": pack(mask),
            "iou": iou,
            "model_version_id": version_id,
            "decode_ms": (time.perf_counter() - started) * 1000,
        }

    @_errors_as_text
    def prepare(payload, request: gr.Request):
        """Encodes the image (on a worker) as soon as it is shown, so the first box does not wait for it."""
        image_id, _, _ = prompt_of(payload)
        waited, hit = ctx.segmentation.prepare(_user(ctx, request), image_id)
        return {"ready": True, "cache_hit": hit, "encode_wait_ms": waited}

    return gr.HTML(
        None,
        html_template=HTML,
        css_template=CSS,
        js_on_load=JS,
        elem_id=elem_id,
        server_functions=[decode, prepare],
        label="1. Drag a box (the mask follows the mouse)",
        show_label=True,
    )
