"""The brush/eraser editor of the Annotate tab, at the image's full resolution.

The editor used to get a copy scaled to at most 512 px, so a stroke on a
6000x4000 image came back as 12 px stair steps. Now it gets the pixels
themselves, one image pixel per canvas pixel (``fixed_canvas=False``: the
canvas takes the picture's size; the editor's own zoom, Alt+wheel or its zoom
buttons, goes in to single pixels). Images up to ``EDITOR_TILE`` on both sides
are shown whole. Larger ones are shown as a ``EDITOR_TILE`` window at full
resolution centred on the object (the prompt's box, else the mask), because
Gradio's editor encodes and uploads the background, the layer and the
composite as PNGs on every change: a 1600x1000 picture already took seconds in
headless chromium here, and a 24-megapixel one would take far longer and more
memory than a browser tab should. Pixels outside the window are never touched.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np

from portal.store.label_colours import rgb_of

EDITOR_TILE = 1024
LAYER_ALPHA = 140

Window = tuple[int, int, int, int]  # y0, x0, y1, x1 in image pixels


def editor_window(shape: tuple[int, ...], focus: Window | None = None) -> Window:
    """The part of the image the editor shows: all of it if it fits, else a tile centred on ``focus``."""
    height, width = int(shape[0]), int(shape[1])
    th, tw = min(height, EDITOR_TILE), min(width, EDITOR_TILE)
    if focus is None:
        cy, cx = height / 2, width / 2
    else:
        cy, cx = (focus[0] + focus[2]) / 2, (focus[1] + focus[3]) / 2
    y0 = int(min(max(round(cy - th / 2), 0), height - th))
    x0 = int(min(max(round(cx - tw / 2), 0), width - tw))
    return y0, x0, y0 + th, x0 + tw


def focus_of(mask: np.ndarray | None, boxes: list | None = None) -> Window | None:
    """Where the object is: the last box prompt, else the mask's bounding box, else nowhere."""
    if boxes:
        x0, y0, x1, y1 = (float(v) for v in boxes[-1][:4])
        return int(y0), int(x0), int(np.ceil(y1)), int(np.ceil(x1))
    if mask is None or not np.any(mask):
        return None
    ys, xs = np.nonzero(mask)
    return int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1


def mask_layer(mask: np.ndarray, colour: str) -> np.ndarray:
    layer = np.zeros((*mask.shape, 4), dtype=np.uint8)
    layer[mask > 0] = (*rgb_of(colour), LAYER_ALPHA)
    return layer


def editor_value(rgb: np.ndarray, mask: np.ndarray | None, window: Window, colour: str) -> dict[str, Any]:
    """The editor's value: the window's pixels as the background, the mask in the label's colour above."""
    y0, x0, y1, x1 = window
    tile = rgb[y0:y1, x0:x1]
    shown = np.zeros(tile.shape[:2], np.uint8) if mask is None else mask[y0:y1, x0:x1]
    return {
        "background": np.dstack([tile, np.full(tile.shape[:2], 255, np.uint8)]),
        "layers": [mask_layer(shown, colour)],
        "composite": None,
    }


def brush(colour: str) -> gr.Brush:
    """The brush paints in the label's colour (one colour, so strokes and the loaded mask look alike)."""
    return gr.Brush(colors=[colour], default_color=colour, color_mode="fixed", default_size=12)


def corrected_mask(editor: dict | None, original: np.ndarray, window: Window) -> np.ndarray:
    """The full-resolution mask with the editor's window replaced by its layer (alpha > 0 is mask).

    The layer has one pixel per image pixel, so a stroke's edge is saved as
    drawn and an untouched mask comes back unchanged.
    """
    out = (np.asarray(original) > 0).astype(np.uint8)
    if not editor or not editor.get("layers") or editor["layers"][0] is None:
        return out
    layer = np.asarray(editor["layers"][0])
    painted = (layer[..., 3] > 0) if layer.ndim == 3 and layer.shape[2] == 4 else (layer > 0)
    y0, x0, y1, x1 = window
    if painted.shape != (y1 - y0, x1 - x0):
        raise gr.Error(
            f"the editor returned a {painted.shape[1]}x{painted.shape[0]} layer for a "
            f"{x1 - x0}x{y1 - y0} view; reload the image"
        )
    out[y0:y1, x0:x1] = painted
    return out
