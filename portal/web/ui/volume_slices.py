"""What the volume viewer shows of one slice, and the session state it keeps for a volume.

The viewer's state holds the whole 3-D label map being edited (a bool (Z, H, W)
array, a few MB for a CT volume), so scrolling, a box proposal or a brush
stroke changes one slice of it in memory; only Save, Submit and Propagate
write, each as one revision of the map.

A slice is shown in the chosen display window, but the model always sees the
slice as its row displays it (the volume's own window): that is the picture
every slice's cached embedding, the precompute job and propagation were made
from. A display preset changes what the eye sees, never the masks.
"""

import hashlib
from typing import Any

import numpy as np
from scipy import ndimage

from portal.store.label_colours import rgb_of
from portal.store.services import volumes, volumes_read, worklists
from portal.web.ui.annotate_queue import history, rejection_note
from portal.web.ui.context import PortalContext
from portal.web.ui.editor import corrected_mask, editor_value, editor_window, focus_of
from portal.web.ui.live_mask import widget_value

AS_STORED = "as stored"
EDITOR_MIN_SIDE = 480  # small slices go to the brush editor enlarged by a whole factor (see ``editor_of``)
FILL_ALPHA = 0.3  # the label map's fill over the slice; its outline is drawn in the full colour


def display_window(choice: str | None) -> str | None:
    return None if not choice or choice == AS_STORED else choice


def slice_rgb(ctx: PortalContext, user, st: dict[str, Any], z: int, window: str | None) -> np.ndarray:
    """The slice's uint8 RGB in ``window`` (None: the volume's own, the model's picture)."""

    def read(db):
        row = volumes.get_volume(db, user, st["volume_id"])
        image = volumes.slice_row(db, row, z)
        return volumes_read.slice_pixels(db, ctx.blobs, ctx.settings, row, image, window)

    return ctx.read(read)


def overlaid(rgb: np.ndarray, mask: np.ndarray, colour: str) -> np.ndarray:
    """The label map's slice over the picture: a light fill and a full-colour outline."""
    if not mask.any():
        return rgb
    out = rgb.astype(np.float32)
    tint = np.asarray(rgb_of(colour), np.float32)
    out[mask] = out[mask] * (1 - FILL_ALPHA) + tint * FILL_ALPHA
    outline = mask & ~ndimage.binary_erosion(mask)
    out[outline] = tint
    return out.astype(np.uint8)


def _enlarged(a: np.ndarray, k: int) -> np.ndarray:
    return a if k == 1 else np.repeat(np.repeat(a, k, axis=0), k, axis=1)


def editor_of(st: dict[str, Any], rgb: np.ndarray, mask: np.ndarray) -> tuple[dict[str, Any], dict]:
    """(state, editor value) for the shown slice.

    A slice smaller than ``EDITOR_MIN_SIDE`` (a 96 px crop, a 240 px MR slice)
    goes in enlarged by a whole factor, each pixel a k x k block: Gradio's
    editor drew the brush layer of a 96 px picture at a different scale from
    the picture itself, and a stroke on a thumbnail is too coarse to aim.
    ``fold_editor`` takes each block's majority back, so an untouched slice
    comes back exactly as it went in.
    """
    k = max(1, EDITOR_MIN_SIDE // max(mask.shape))
    big = _enlarged(mask, k)
    tile = editor_window(big.shape, focus_of(big))
    value = editor_value(_enlarged(rgb, k), big, tile, st["colour"])
    shown = _digest(value["background"])
    st = {**st, "editor_z": st["z"], "editor_window": list(tile), "editor_scale": k, "editor_shows": shown}
    return st, value


def _digest(background) -> str:
    """Which picture the editor holds: a stroke event may arrive after the viewer moved to another slice."""
    return hashlib.sha256(np.ascontiguousarray(np.asarray(background)[..., :3]).tobytes()).hexdigest()


def fold_editor(st: dict[str, Any], edited) -> dict[str, Any]:
    """The brush editor's layer written into the slice it shows; marks the map unsaved if that changed it."""
    z = st.get("editor_z")
    if z is None or not isinstance(edited, dict) or st.get("labels") is None:
        return st
    if edited.get("background") is not None and _digest(edited["background"]) != st.get("editor_shows"):
        return st  # the editor's value is of another slice than the one the state says it shows
    labels, k = st["labels"], int(st.get("editor_scale", 1))
    before = labels[z]
    painted = corrected_mask(edited, _enlarged(before, k), tuple(st["editor_window"])) > 0
    height, width = before.shape
    after = painted.reshape(height, k, width, k).mean(axis=(1, 3)) >= 0.5
    if np.array_equal(before, after):
        return st
    labels = labels.copy()
    labels[z] = after
    return {**st, "labels": labels, "unsaved": True}


def slice_views(ctx: PortalContext, user, st: dict[str, Any], z: int) -> tuple[dict[str, Any], dict, dict]:
    """(state, live widget value, editor value) for slice ``z``: the widget shows the chosen window with the
    label map overlaid; the editor shows the same picture with the slice's mask as its brush layer."""
    rgb = slice_rgb(ctx, user, st, z, st.get("view"))
    mask = st["labels"][z]
    st, editor = editor_of({**st, "z": z}, rgb, mask)
    widget = widget_value(st["slice_ids"][z], overlaid(rgb, mask, st["colour"]), st["colour"])
    return st, widget, editor


def slice_text(st: dict[str, Any]) -> str:
    z, labels = st["z"], st["labels"]
    area = int(labels[z].sum())
    done = int(np.count_nonzero(labels.any(axis=(1, 2))))
    unsaved = " · **unsaved changes**" if st["unsaved"] else ""
    # Why the map came back stays in sight while scrolling, until a save or submit moves it on.
    why = st.get("rejection", "") if st.get("status") == "rejected" else ""
    return (
        f"Slice **{z}** of 0–{st['depth'] - 1} · '{st['label']}' on this slice: **{area} px** · "
        f"{done} slice(s) labelled · revision {st['base_revision']}{unsaved}{why}"
    )


def rejection_of(ctx: PortalContext, user, annotation_id: int | None, status: str) -> str:
    """The newest reviewer's rejection of a rejected label map (who, when, the comment), as 2-D shows it."""
    if annotation_id is None or status != "rejected":
        return ""
    return rejection_note(ctx.read(worklists.review_history, user, annotation_id))


def volume_history(ctx: PortalContext, user, annotation_id: int | None) -> list[list]:
    """The label map's revisions and the reviewers' decisions, newest first, as the 2-D history lists them."""
    return history(ctx, user, annotation_id)
