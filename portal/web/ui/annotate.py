"""The Annotate tab: image queue, box prompt, brush/eraser correction, drafts saved automatically, history.

Saving goes through ``annotations.save_revision`` with the revision the editor
started from, as the REST API's PUT does; a stale base is a ConflictError that
is shown (with both masks), never an overwrite.

Autosave: every change of the editor (a proposal, a brush or eraser stroke)
is only *remembered* in the session state; a timer then saves it as a draft
revision at most every AUTOSAVE_S seconds. That bounds the revisions a busy
brush creates and still loses at most AUTOSAVE_S seconds of work when a tab
closes. The remember/autosave/save handlers share one concurrency group of
size 1: each reads the session's base revision when it starts, so two of them
running at once (a tick during a click on Save) would trip over each other's
revision and report a conflict with the user's own work.
"""

from types import SimpleNamespace
from typing import Any

import gradio as gr
import numpy as np

from portal.store.errors import ConflictError
from portal.store.label_colours import label_colour
from portal.store.services import annotations, images, projects, worklists
from portal.store.services.images import display_pixels
from portal.store.services.masks import get_mask, load_mask
from portal.web.ui.annotate_queue import HISTORY_HEADERS, history, queue_handlers, rejection_note
from portal.web.ui.common import friendly, overlay_colours, overlay_value
from portal.web.ui.context import PortalContext
from portal.web.ui.editor import brush, corrected_mask, editor_value, editor_window, focus_of
from portal.web.ui.live_mask import PARITY_DICE, client_dice, live_widget, prompt_of, widget_value
from portal.web.ui.volume_queue import volume_item
from portal.web.ui.volume_view import build_volume_view

AUTOSAVE_S = 5.0
SAVE_GROUP = "annotate-save"
QUEUE_MODES = [("Unlabelled first", "unlabelled"), ("Needs my fix (rejected)", "fix")]


def _editors(c: SimpleNamespace, ctx: PortalContext) -> None:
    with gr.Row():
        with gr.Column():
            c.boxes = live_widget(ctx, "ann-annotator")  # decodes as the mouse moves; mouse-up proposes
        with gr.Column():
            c.editor = gr.ImageEditor(
                label="2. Correct with the brush / eraser, at full resolution (Alt+wheel zooms; Ctrl+Z undoes)",
                type="numpy",
                image_mode="RGBA",
                format="png",
                layers=False,
                transforms=(),
                sources=(),
                brush=brush(label_colour(None, "")),
                eraser=gr.Eraser(default_size=12),
                elem_id="ann-editor",
                height=560,
                canvas_size=(512, 512),
                fixed_canvas=False,  # the canvas takes the picture's size: one image pixel per canvas pixel
            )


def _layout(ctx: PortalContext) -> SimpleNamespace:
    c = SimpleNamespace(state=gr.State({}), order=gr.State([]))
    with gr.Row():
        c.label = gr.Dropdown(label="Label class", choices=[], elem_id="ann-label")
        c.mode = gr.Radio(QUEUE_MODES, value="unlabelled", label="Queue", elem_id="ann-mode")
        c.pick = gr.Dropdown(label="Image", choices=[], elem_id="ann-image", scale=2)
    with gr.Row():
        c.prev = gr.Button("◀ Previous (Alt+P)", size="sm", elem_id="ann-prev")
        c.next = gr.Button("Next (Alt+N) ▶", size="sm", elem_id="ann-next")
        c.reload = gr.Button("Reload", size="sm", elem_id="ann-reload")
    _editors(c, ctx)
    c.status = gr.Markdown(elem_id="ann-status")
    gr.Markdown(
        f"Drafts are saved automatically (at most every {AUTOSAVE_S:g} s after a proposal or a stroke).",
        elem_id="ann-autosave-note",
    )
    with gr.Row():
        c.save = gr.Button("Save draft (Alt+S)", elem_id="ann-save")
        c.submit = gr.Button("Submit for review (Alt+Enter)", variant="primary", elem_id="ann-submit")
    with gr.Group(visible=False, elem_id="ann-conflict") as c.conflict_box:
        c.conflict_md = gr.Markdown(elem_id="ann-conflict-message")
        with gr.Row():
            c.mine_view = gr.AnnotatedImage(label="Your unsaved mask", format="png")
            c.theirs_view = gr.AnnotatedImage(label="The newer saved revision", format="png")
        c.take_newer = gr.Button("Load the newer revision (your edit is discarded)", elem_id="ann-load-newer")
    c.history = gr.Dataframe(
        headers=HISTORY_HEADERS, label="Revision history", interactive=False, elem_id="ann-history"
    )
    c.timer = gr.Timer(AUTOSAVE_S)
    return c


def _loaded(ctx: PortalContext, user, lbl: str, image_id: int) -> tuple:
    """Session state, box tool, editor, status text and history for one image and label."""
    store = ctx.store
    image = ctx.run(images.get_image, user, int(image_id))
    rgb = display_pixels(store.blobs, image, store.settings)
    found, latest = ctx.read(worklists.current_annotation, user, image.id, lbl)
    colour = ctx.read(projects.label_colours, user, image.project_id).get(lbl) or label_colour(None, lbl)
    st: dict[str, Any] = {
        "image_id": image.id,
        "label": lbl,
        "rgb": rgb,
        "base_revision": 0,
        "annotation_id": found.id if found else None,
        "mask": None,
        "shown": None,
        "unsaved": False,
        "pending": None,
        "mask_id": None,
        "model_version_id": None,
        "prompt": None,
        "colour": colour,
    }
    status, note = "unlabelled", ""
    if found is not None and latest is not None and found.current_revision > 0:
        mask = load_mask(store.blobs, latest.blob_sha)
        st.update(mask=mask, shown=mask, base_revision=found.current_revision)
        status = found.status.value
    else:
        pre = ctx.read(worklists.prelabel_mask, user, image.id)  # a bulk pre-label job's mask, as the proposal
        if pre is not None:
            mask = load_mask(store.blobs, pre.blob_sha)
            st.update(mask=mask, shown=mask, mask_id=pre.id, model_version_id=pre.model_version_id, prompt=pre.prompt)
            note = f" · pre-labelled by job {pre.job_id}: correct it, then save or submit"
    rows = history(ctx, user, found.id if found else None)
    if status == "rejected":
        note += rejection_note(ctx.read(worklists.review_history, user, found.id))
    base = st["base_revision"]
    text = (
        f"Image #{image.id} **{image.filename}** ({image.width}x{image.height}) · label **{lbl}** · "
        f"{status}" + (f", revision {base}" if base else "") + note
    )
    st["window"] = editor_window(rgb.shape, focus_of(st["mask"]))
    editor = gr.update(value=editor_value(rgb, st["mask"], st["window"], colour), brush=brush(colour))
    return st, widget_value(image.id, rgb, colour), editor, text, rows


def _load_handler(ctx: PortalContext):
    @friendly
    def load(pid, lbl, image_id, request: gr.Request):
        user = ctx.user(request)
        if not image_id or not lbl:
            return {}, None, None, "Choose an image.", [], gr.update(visible=False)
        if volume_item(image_id) is not None:  # the volume viewer (volume_view.py) shows it
            return {}, None, gr.skip(), "", [], gr.update(visible=False)
        return (*_loaded(ctx, user, lbl, image_id), gr.update(visible=False))

    return load


def _proposed(ctx: PortalContext, user, st, payload) -> tuple:
    """Record the widget's prompt as a proposal, recomputed here: the client's mask is only compared."""
    if not st or "image_id" not in st:
        raise gr.Error("Choose an image first.")
    image_id, boxes, points = prompt_of(payload)
    seq = int(payload.get("seq") or 0)
    if image_id != st["image_id"] or seq < st.get("live_seq", 0):
        return gr.skip(), gr.skip(), gr.skip()  # a late event: the previous image, or an older prompt
    out = ctx.segmentation.segment(user, image_id, boxes=boxes, points=points)
    mask = load_mask(ctx.blobs, ctx.run(get_mask, user, out.mask_id).blob_sha)
    st = {
        **st,
        "mask": mask,
        "shown": mask,
        "unsaved": True,
        # An empty edit: the next autosave tick saves the proposal itself (the editor's ``input`` event,
        # which fills ``pending`` for a stroke, does not fire for a value the server sets).
        "pending": {},
        "mask_id": out.mask_id,
        "model_version_id": out.model_version_id,
        "prompt": {"boxes": boxes, "points": points},
        "live_seq": seq,
        "window": editor_window(mask.shape, focus_of(mask, boxes)),
    }
    agreement = client_dice(payload, mask)
    check = "" if agreement is None else f" Browser mask vs server: Dice {agreement:.3f}."
    if agreement is not None and agreement < PARITY_DICE:
        gr.Warning(
            f"The mask your browser showed differs from the server's (Dice {agreement:.3f}); the "
            "server's mask is the proposal."
        )
    text = (
        f"Proposed mask: predicted IoU **{out.predicted_iou:.3f}**, area {out.area} px, model "
        f"version {out.model_version_id}, {out.timing_ms.total:.0f} ms.{check} Correct it, "
        f"then save or submit (base revision {st['base_revision']})."
    )
    return st, editor_value(st["rgb"], mask, st["window"], st["colour"]), text


def _propose_handlers(ctx: PortalContext) -> SimpleNamespace:
    @friendly
    def propose(st, evt: gr.EventData, request: gr.Request):
        return _proposed(ctx, ctx.user(request), st, getattr(evt, "_data", None))

    return SimpleNamespace(propose=propose)


def _conflict_outputs(ctx: PortalContext, user, st, mask, exc: ConflictError, auto: bool) -> tuple:
    """Both masks side by side and the reason; the session keeps its base, so nothing is overwritten."""
    gr.Warning(str(exc))
    _, latest = ctx.read(worklists.current_annotation, user, st["image_id"], st["label"])
    theirs = load_mask(ctx.blobs, latest.blob_sha) if latest is not None else None
    message = (
        "**Not saved: conflict.** "
        + ("(automatic draft) " if auto else "")
        + str(exc)
        + (f" (revision {exc.current_revision} by {exc.author})" if exc.current_revision else "")
    )
    newer = f"revision {exc.current_revision}"
    return (
        {**st, "pending": None, "saved_as": None},
        f"⚠ {message}",
        gr.update(),
        gr.update(visible=True),
        message,
        gr.update(
            value=overlay_value(st["rgb"], [(mask, "yours")]), color_map=overlay_colours(st["colour"], ["yours"])
        ),
        gr.update(
            value=overlay_value(st["rgb"], [(theirs if theirs is not None else np.zeros_like(mask), newer)]),
            color_map=overlay_colours(st["colour"], [newer]),
        ),
    )


def _saved(ctx: PortalContext, user, st, mask, submit: bool, auto: bool) -> tuple:
    """Outputs for the tab's ``save_outs``; a conflict shows both masks and writes nothing."""
    try:
        rev = ctx.run(
            annotations.save_revision,
            ctx.blobs,
            user,
            st["image_id"],
            st["label"],
            mask,
            st["base_revision"],
            base_mask_id=st["mask_id"],
            model_version_id=st["model_version_id"],
            prompt=st["prompt"],
            submit=submit,
        )
    except ConflictError as exc:
        return _conflict_outputs(ctx, user, st, mask, exc, auto)
    st = {
        **st,
        "base_revision": rev.number,
        "mask": mask,
        "shown": mask,
        "unsaved": False,
        "pending": None,
        "annotation_id": rev.annotation_id,
        "saved_as": "submitted" if submit else "draft",
    }
    what = "Submitted for review" if submit else ("Draft saved automatically" if auto else "Draft saved")
    if not auto:
        gr.Info(f"{what}: revision {rev.number}")
    return (
        st,
        f"✓ {what}: revision **{rev.number}** of '{st['label']}' on image #{st['image_id']}.",
        history(ctx, user, rev.annotation_id),
        gr.update(visible=False),
        "",
        None,
        None,
    )


def _edited_mask(st, edited) -> np.ndarray:
    h, w = st["rgb"].shape[:2]
    base = st["mask"] if st.get("mask") is not None else np.zeros((h, w), np.uint8)
    return corrected_mask(edited, base, st["window"]).astype(np.uint8)


def _save_handlers(ctx: PortalContext, n_outs: int) -> SimpleNamespace:
    def save(st, edited, submit, request: gr.Request):
        user = ctx.user(request)
        if not st or "image_id" not in st:
            raise gr.Error("Choose an image first.")
        return _saved(ctx, user, st, _edited_mask(st, edited), submit, auto=False)

    @friendly
    def save_draft(st, edited, request: gr.Request):
        return save(st, edited, False, request)

    @friendly
    def save_submit(st, edited, request: gr.Request):
        return save(st, edited, True, request)

    def remember_edit(st, edited):
        """Editor changed (a stroke, or a value we set): keep it for the next autosave tick."""
        if not st or "image_id" not in st or edited is None:
            return gr.skip()
        return {**st, "pending": edited}

    def autosave(st, request: gr.Request):
        skip = (gr.skip(),) * n_outs
        if not st or st.get("pending") is None or "image_id" not in st:
            return skip
        try:
            user = ctx.user(request)
            mask = _edited_mask(st, st["pending"])
        except Exception:  # noqa: BLE001 - a timer tick never raises a toast; Save reports the real error
            return ({**st, "pending": None}, *skip[1:])
        shown = st.get("shown")
        unchanged = (shown if shown is not None else np.zeros_like(mask)) > 0
        if not st.get("unsaved") and np.array_equal(mask > 0, unchanged):
            return ({**st, "pending": None}, *skip[1:])  # only the value we loaded: nothing to save
        if st["base_revision"] == 0 and not mask.any():
            return ({**st, "pending": None}, *skip[1:])
        return _saved(ctx, user, st, mask, submit=False, auto=True)

    return SimpleNamespace(
        save_draft=save_draft, save_submit=save_submit, remember_edit=remember_edit, autosave=autosave
    )


def build_annotate_tab(ctx: PortalContext) -> None:
    """Components and events of the tab; call inside ``gr.Tab``."""
    c = _layout(ctx)
    project = ctx.project
    q, p, load = queue_handlers(ctx), _propose_handlers(ctx), _load_handler(ctx)
    save_outs = [c.state, c.status, c.history, c.conflict_box, c.conflict_md, c.mine_view, c.theirs_view]
    s = _save_handlers(ctx, len(save_outs))
    group = {"concurrency_id": SAVE_GROUP, "concurrency_limit": 1}
    project.change(q.on_project, [project], [c.label])
    for trigger in (c.label.change, c.mode.change, project.change):
        trigger(q.on_queue, [project, c.label, c.mode, c.pick], [c.pick, c.order])
    load_outs = [c.state, c.boxes, c.editor, c.status, c.history, c.conflict_box]
    for trigger in (c.pick.change, c.reload.click, c.take_newer.click):
        trigger(load, [project, c.label, c.pick], load_outs)
    delta_prev, delta_next = gr.State(-1), gr.State(1)
    c.prev.click(q.move, [project, c.label, c.mode, c.pick, c.order, delta_prev], [c.pick])
    c.next.click(q.move, [project, c.label, c.mode, c.pick, c.order, delta_next], [c.pick])
    # "multiple": a deferred ("always_last") re-run would arrive without the widget's event data, the prompt.
    c.boxes.submit(p.propose, [c.state], [c.state, c.editor, c.status], trigger_mode="multiple")
    listed = [project, c.label, c.mode, c.pick, c.order, c.state]
    c.save.click(s.save_draft, [c.state, c.editor], save_outs, **group).success(q.after_save, listed, [c.pick, c.order])
    c.submit.click(s.save_submit, [c.state, c.editor], save_outs, **group).success(
        q.after_save, listed, [c.pick, c.order]
    )
    # ``input``, not ``change``: a value the server sets (an image opening) must not send the whole picture
    # back, and on a 2048 px image that upload took long enough for a stroke made meanwhile to be lost.
    c.editor.input(
        s.remember_edit, [c.state, c.editor], [c.state], trigger_mode="always_last", show_progress="hidden", **group
    )
    c.timer.tick(s.autosave, [c.state], save_outs, show_progress="hidden", **group)
    build_volume_view(ctx, c, q)  # a volume item of the list opens in the volume viewer instead
