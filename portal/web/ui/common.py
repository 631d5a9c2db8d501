"""Helpers shared by the UI tabs: who is asking, errors as messages, temporary files, images."""

import functools
import os
import re
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar, cast

import gradio as gr
import numpy as np
from PIL import Image as PILImage

from medsam_core.errors import MedsamError
from portal.store.models import User
from portal.store.redact import scrub
from portal.store.services.worklists import account

P = ParamSpec("P")
R = TypeVar("R")

UI_TMP = Path(os.environ.get("MEDSAM_UI_TMP", Path(tempfile.gettempdir()) / "medsam-ui"))
# Gradio's upload cache (where a file lands before a handler sees it), as gradio.utils finds it.
GRADIO_TMP = Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")
EDITOR_MAX_SIDE = 512
WINDOW_CHOICES = ["auto (percentile)", "abdomen", "lung", "brain", "bone"]


def tmp_dir(kind: str) -> Path:
    folder = UI_TMP / kind
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def demo_ttl_s(settings) -> float:
    """How long public-demo uploads live (``demo_ttl_minutes``), for the sweep and Gradio's own cache."""
    return settings.demo_ttl_minutes * 60.0


def sweep(kind: str, max_age_s: float) -> int:
    """Delete what is older than the time-to-live; returns how many files went."""
    cutoff, removed = time.time() - max_age_s, 0
    folder = tmp_dir(kind)
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        try:
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        except OSError:
            pass
    return removed


def new_work_dir(kind: str) -> Path:
    folder = tmp_dir(kind) / uuid.uuid4().hex
    folder.mkdir()
    return folder


def user_of(store, request: gr.Request) -> User:
    name = getattr(request, "username", None) if request is not None else None
    if not name:
        raise gr.Error("Log in first.")
    with store.transaction() as session:
        user = account(session, name)
    if user is None:
        raise gr.Error(f"The account '{name}' no longer exists or is disabled; log in again.")
    return user


def _upload_folders() -> re.Pattern[str]:
    roots = "|".join(re.escape(str(p)) for p in {UI_TMP, GRADIO_TMP, UI_TMP.resolve(), GRADIO_TMP.resolve()})
    return re.compile(rf"(?:{roots})(?:/[^/\n]*)*/")


_UPLOAD_FOLDERS = _upload_folders()


def plain(text: str) -> str:
    """A message as a user may read it: no server folder, only the file's own name.

    The folders of the UI's and Gradio's uploads go first, up to the last
    slash, because an upload's name may hold blanks, quotes or brackets that
    end ``scrub``'s match early and leave the folder half in the message.
    """
    return scrub(_UPLOAD_FOLDERS.sub("", text))


def friendly(fn: Callable[P, R]) -> Callable[P, R]:
    """Every input error becomes a readable gr.Error; nothing is written when one is raised."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except MedsamError as exc:
            raise gr.Error(plain(str(exc)), print_exception=False) from None

    return wrapper


def failure_text(message: str) -> str:
    """A failure for a Markdown status line: marked, and with ``<`` escaped so no part of it is eaten as HTML."""
    return "✗ " + message.replace("&", "&amp;").replace("<", "&lt;")


def reported(others: int) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """For handlers whose first output is a status line and ``others`` outputs follow it.

    A refusal becomes that line's text and a warning, and every other output
    is skipped: raising would put Gradio's "Error" badge on every output (the
    tables, the project dropdown) and leave the line telling of the last
    success. Nothing is written when a service refuses.
    """

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return fn(*args, **kwargs)
            except gr.Error as exc:
                message = str(exc.message)
            except MedsamError as exc:
                message = scrub(str(exc))
            gr.Warning(message)
            text = failure_text(message)
            return cast(R, (text, *[gr.skip()] * others) if others else text)

        return wrapper

    return decorate


def need_project(pid) -> int:
    if pid in (None, ""):
        raise gr.Error("Choose a project first.")
    return int(pid)


def window_value(choice: str | None) -> str | None:
    return None if not choice or choice.startswith("auto") else choice


def editor_scale(height: int, width: int) -> float:
    return min(1.0, EDITOR_MAX_SIDE / max(height, width))


def resize(arr: np.ndarray, size_hw: tuple[int, int], nearest: bool) -> np.ndarray:
    if arr.shape[:2] == tuple(size_hw):
        return arr
    image = PILImage.fromarray(arr)
    return np.asarray(
        image.resize((size_hw[1], size_hw[0]), PILImage.Resampling.NEAREST if nearest else PILImage.Resampling.BILINEAR)
    )


def mask_layer(mask: np.ndarray, colour=(255, 40, 40), alpha: int = 140) -> np.ndarray:
    layer = np.zeros((*mask.shape, 4), dtype=np.uint8)
    layer[mask > 0] = (*colour, alpha)
    return layer


def editor_size(height: int, width: int) -> tuple[int, int]:
    s = editor_scale(height, width)
    return max(1, round(height * s)), max(1, round(width * s))


def _pad(arr: np.ndarray) -> np.ndarray:
    """Pad bottom/right to the editor's fixed square canvas, so the layer and the image never drift apart."""
    out = np.zeros((EDITOR_MAX_SIDE, EDITOR_MAX_SIDE, *arr.shape[2:]), dtype=arr.dtype)
    out[: arr.shape[0], : arr.shape[1]] = arr
    return out


def editor_value(rgb: np.ndarray, mask: np.ndarray | None) -> dict:
    size = editor_size(*rgb.shape[:2])
    background = resize(rgb, size, nearest=False)
    small = np.zeros(size, np.uint8) if mask is None else resize((mask > 0).astype(np.uint8), size, nearest=True)
    return {
        "background": _pad(np.dstack([background, np.full(size, 255, np.uint8)])),
        "layers": [_pad(mask_layer(small))],
        "composite": None,
    }


def corrected_mask(editor: dict | None, original: np.ndarray) -> np.ndarray:
    """The original-resolution mask with the editor's brush and eraser changes applied.

    The editor shows a copy scaled to at most EDITOR_MAX_SIDE; only the pixels
    the user changed there are carried back (upsampled), so an untouched mask
    keeps its full-resolution edge.
    """
    original = (np.asarray(original) > 0).astype(np.uint8)
    if not editor or not editor.get("layers"):
        return original
    layer = editor["layers"][0]
    if layer is None:
        return original
    layer = np.asarray(layer)
    h, w = editor_size(*original.shape)
    new_small = (layer[..., 3] > 0) if layer.ndim == 3 and layer.shape[2] == 4 else (layer > 0)
    new_small = new_small[:h, :w]
    if new_small.shape != (h, w):
        raise gr.Error(f"the editor returned a {new_small.shape} layer for a {h}x{w} image; reload the image")
    old_small = resize(original, new_small.shape, nearest=True) > 0
    add = resize((new_small & ~old_small).astype(np.uint8), original.shape, nearest=True) > 0
    remove = resize((~new_small & old_small).astype(np.uint8), original.shape, nearest=True) > 0
    return ((original > 0) | add) & ~remove


def overlay_value(rgb: np.ndarray, masks: list[tuple[np.ndarray, str]]) -> tuple:
    return (rgb, [((m > 0).astype(np.float32), label) for m, label in masks])


def draw_points(rgb: np.ndarray, points: list) -> np.ndarray:
    out = rgb.copy()
    h, w = out.shape[:2]
    r = max(3, round(max(h, w) / 120))
    for x, y, label in points:
        colour = (40, 220, 40) if label else (230, 40, 40)
        y0, y1, x0, x1 = max(0, int(y) - r), min(h, int(y) + r + 1), max(0, int(x) - r), min(w, int(x) + r + 1)
        out[y0:y1, x0:x1] = colour
    return out
