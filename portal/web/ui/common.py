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

from medsam_core.errors import MedsamError
from portal.store.models import User
from portal.store.redact import scrub
from portal.store.services.worklists import account

P = ParamSpec("P")
R = TypeVar("R")

UI_TMP = Path(os.environ.get("MEDSAM_UI_TMP", Path(tempfile.gettempdir()) / "medsam-ui"))
# Gradio's upload cache (where a file lands before a handler sees it), as gradio.utils finds it.
GRADIO_TMP = Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")
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


def overlay_value(rgb: np.ndarray, masks: list[tuple[np.ndarray, str]]) -> tuple:
    return (rgb, [((m > 0).astype(np.float32), label) for m, label in masks])


def overlay_colours(colour: str, names: list[str]) -> dict[str, str]:
    """``gr.AnnotatedImage(color_map=...)`` drawing every named layer in one label's colour."""
    return dict.fromkeys(names, colour)


def draw_points(rgb: np.ndarray, points: list) -> np.ndarray:
    out = rgb.copy()
    h, w = out.shape[:2]
    r = max(3, round(max(h, w) / 120))
    for x, y, label in points:
        colour = (40, 220, 40) if label else (230, 40, 40)
        y0, y1, x0, x1 = max(0, int(y) - r), min(h, int(y) + r + 1), max(0, int(x) - r), min(w, int(x) + r + 1)
        out[y0:y1, x0:x1] = colour
    return out
