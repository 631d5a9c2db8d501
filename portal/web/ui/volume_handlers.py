"""The volume viewer's handlers: open, scroll, propose on a slice, propagate, save or submit, export.

Saving goes through ``volumes_labels.save_label_map`` with the revision the
viewer started from, as 2-D saves do: a stale base is a conflict that is
reported, never an overwrite. Propagation runs on a worker (``propagate`` on
the inference queue, through the queue port); the worker saves its result as
the next draft revision from the base the viewer sends, so unsaved work is
saved first and a save landing meanwhile fails the job instead of being lost.
The viewer waits for the job row, showing its progress, then loads that
revision as the draft.
"""

import time
from types import SimpleNamespace
from typing import Any

import gradio as gr
import numpy as np

from medsam_core.errors import MedsamError
from medsam_core.propagation import mask_box
from portal.store.errors import ConflictError
from portal.store.label_colours import label_colour
from portal.store.models import JobKind, JobState
from portal.store.services import jobs, projects, volumes, volumes_labels
from portal.web.ui.common import friendly, new_work_dir, plain
from portal.web.ui.context import PortalContext
from portal.web.ui.editor import brush
from portal.web.ui.live_mask import prompt_of
from portal.web.ui.volume_export import export_file
from portal.web.ui.volume_queue import item_of, volume_item
from portal.web.ui.volume_slices import (
    display_window,
    editor_of,
    fold_editor,
    rejection_of,
    slice_rgb,
    slice_text,
    slice_views,
    volume_history,
)

POLL_S = 0.5
ENDED = (JobState.succeeded, JobState.failed, JobState.cancelled)


def _need(st) -> dict[str, Any]:
    if not st or "volume_id" not in st:
        raise gr.Error("Choose a volume first.")
    return st


def opened(ctx: PortalContext, user, lbl: str, volume_id: int) -> dict[str, Any]:
    """The session state of one volume and label: its latest label map (or an empty one) and its base."""
    row = ctx.run(volumes.get_volume, user, volume_id)
    slice_ids = [image.id for image in ctx.read(volumes.slice_rows, row.id)]
    found = ctx.read(volumes_labels.find_annotation, user, row.id, lbl)
    shape = (row.depth, row.height, row.width)
    labels, base = np.zeros(shape, bool), 0
    if found is not None and found.current_revision > 0:
        _, rev, labels = ctx.read(volumes_labels.read_label_map, ctx.blobs, user, row.id, lbl, None)
        base = rev.number
    colour = ctx.read(projects.label_colours, user, row.project_id).get(lbl) or label_colour(None, lbl)
    filled = np.flatnonzero(labels.any(axis=(1, 2)))
    z = int((filled[0] + filled[-1]) // 2) if filled.size else row.depth // 2
    status = "unlabelled" if not base or found is None else found.status.value
    return {
        "volume_id": row.id,
        "image_id": item_of(row.id),  # the work list's value, for "go on to the next item" after a submit
        "label": lbl,
        "colour": colour,
        "filename": row.filename,
        "source_format": row.source_format,
        "depth": row.depth,
        "slice_ids": slice_ids,
        "labels": labels,
        "base_revision": base,
        "annotation_id": None if found is None else found.id,
        "status": status,
        "rejection": rejection_of(ctx, user, None if found is None else found.id, status),
        "unsaved": False,
        "prompt": None,
        "view": None,
        "z": z,
    }


def _title(st) -> str:
    revision = f", revision {st['base_revision']}" if st["base_revision"] else ""
    return (
        f"Volume #{st['volume_id']} **{st['filename']}** ({st['depth']} slices, {st['source_format']}) · "
        f"label **{st['label']}** · {st['status']}{revision}"
    )


def open_handler(ctx: PortalContext, n_flat: int):
    """Outputs: state, the viewer group, its title, slider, z0, z1, widget, editor, status, history,
    DICOM-SEG button, download button, progress, then the 2-D parts' visibility (``n_flat``)."""

    @friendly
    def open_item(pid, lbl, item, request: gr.Request):
        volume_id = volume_item(item)
        if volume_id is None or not lbl:
            flat = [gr.update(visible=True)] * n_flat
            return ({}, gr.update(visible=False), *[gr.skip()] * 11, *flat)
        user = ctx.user(request)
        st = opened(ctx, user, lbl, volume_id)
        st, widget, editor = slice_views(ctx, user, st, st["z"])
        last = st["depth"] - 1
        return (
            st,
            gr.update(visible=True),
            _title(st),
            gr.update(minimum=0, maximum=last, value=st["z"]),
            0,
            last,
            widget,
            gr.update(value=editor, brush=brush(st["colour"])),
            slice_text(st),
            volume_history(ctx, user, st["annotation_id"]),
            gr.update(visible=st["source_format"] == "dicom"),
            gr.update(visible=False),
            "",
            *[gr.update(visible="hidden")] * n_flat,
        )

    return open_item


def view_handlers(ctx: PortalContext) -> SimpleNamespace:
    """Scrolling (slider, keys), the display window, and a box or points proposed on the shown slice."""

    @friendly
    def show(st, z, window, request: gr.Request):
        """Scrolling does not take the brush editor's value: uploading its layers on every step took seconds
        in a loaded browser; a stroke reaches the map through ``stroke`` as soon as it is drawn."""
        if not st or "volume_id" not in st or z is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        z = int(min(max(int(z), 0), st["depth"] - 1))
        view = display_window(window)
        if z == st.get("editor_z") and view == st.get("view"):
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()  # what is on screen already
        st, widget, editor = slice_views(ctx, ctx.user(request), {**st, "view": view}, z)
        return st, widget, editor, slice_text(st)

    def stroke(st, edited):
        """A brush or eraser stroke (the editor's ``input``: the user's, never a value we set)."""
        if not st or "volume_id" not in st:
            return gr.skip(), gr.skip()
        folded = fold_editor(st, edited)
        return (folded, slice_text(folded)) if folded is not st else (gr.skip(), gr.skip())

    def step(st, evt: gr.EventData):
        """A key in the viewer: the slice the browser asked for, within the volume."""
        data = getattr(evt, "_data", None) or {}
        if not st or "depth" not in st or not isinstance(data.get("z"), int | float):
            return gr.skip()
        return gr.update(value=int(min(max(int(data["z"]), 0), st["depth"] - 1)))

    @friendly
    def propose(st, evt: gr.EventData, request: gr.Request):
        """Mouse-up on the slice: its mask is decoded again here from the prompt and replaces the slice's."""
        st = _need(st)
        payload = getattr(evt, "_data", None)
        image_id, boxes, points = prompt_of(payload)
        z = st["z"]
        seq = int((payload or {}).get("seq") or 0)
        if image_id != st["slice_ids"][z] or seq < st.get("live_seq", 0):
            return gr.skip(), gr.skip(), gr.skip()  # a late event: another slice, or an older prompt
        mask, iou, version = ctx.segmentation.preview(ctx.user(request), image_id, boxes, points)
        labels = st["labels"].copy()
        labels[z] = mask > 0
        prompt = {"key_slice": z, "boxes": boxes, "points": points}
        st = {**st, "labels": labels, "unsaved": True, "prompt": prompt, "model_version_id": version, "live_seq": seq}
        st, editor = editor_of(st, slice_rgb(ctx, ctx.user(request), st, z, st.get("view")), labels[z])
        text = f"Proposed on slice {z}: predicted IoU **{iou:.3f}**. " + slice_text(st)
        return st, editor, text

    return SimpleNamespace(show=show, stroke=stroke, step=step, propose=propose)


def _save(ctx: PortalContext, user, st, submit: bool, prompt: dict | None = None) -> dict[str, Any]:
    """One revision of the label map from the viewer's base; a ConflictError leaves the state as it was."""
    rev = ctx.run(
        volumes_labels.save_label_map,
        ctx.blobs,
        user,
        st["volume_id"],
        st["label"],
        st["labels"],
        st["base_revision"],
        model_version_id=st.get("model_version_id"),
        prompt=prompt if prompt is not None else st.get("prompt"),
        submit=submit,
    )
    return {
        **st,
        "base_revision": rev.number,
        "annotation_id": rev.annotation_id,
        "unsaved": False,
        "status": "submitted" if submit else "draft",
        "saved_as": "submitted" if submit else "draft",
    }


def _conflict_text(exc: ConflictError) -> str:
    gr.Warning(str(exc))
    who = f" (revision {exc.current_revision} by {exc.author})" if exc.current_revision else ""
    return f"⚠ **Not saved: conflict.** {exc}{who}. Reload to continue from the newer revision."


def save_handlers(ctx: PortalContext) -> SimpleNamespace:
    def save(st, edited, submit: bool, request: gr.Request):
        st = fold_editor(_need(st), edited)
        user = ctx.user(request)
        if st["base_revision"] == 0 and not st["labels"].any() and not submit:
            raise gr.Error("Nothing to save yet: draw a box on a slice, or propagate.")
        try:
            st = _save(ctx, user, st, submit)
        except ConflictError as exc:
            return {**st, "saved_as": None}, _conflict_text(exc), gr.skip(), gr.skip()
        what = "Submitted for review" if submit else "Draft saved"
        gr.Info(f"{what}: revision {st['base_revision']}")
        text = f"✓ {what}: revision **{st['base_revision']}** of '{st['label']}' on volume #{st['volume_id']}."
        return st, text, volume_history(ctx, user, st["annotation_id"]), _title(st)

    @friendly
    def save_draft(st, edited, request: gr.Request):
        return save(st, edited, False, request)

    @friendly
    def save_submit(st, edited, request: gr.Request):
        return save(st, edited, True, request)

    return SimpleNamespace(save_draft=save_draft, save_submit=save_submit)


def _key_box(st) -> list[float]:
    """The box drawn on the shown slice, else the box of the slice's mask (a corrected slice propagates)."""
    z, prompt = st["z"], st.get("prompt") or {}
    if prompt.get("key_slice") == z and prompt.get("boxes"):
        return [float(v) for v in prompt["boxes"][-1][:4]]
    box = mask_box(st["labels"][z], 0.0)
    if box is None:
        raise gr.Error(f"Slice {z} has no box and no mask: draw a box on it first.")
    return [float(v) for v in box]


def _bar(job) -> str:
    progress = job.progress or {}
    done, total = int(progress.get("done") or 0), int(progress.get("total") or 0)
    bar = f"<progress value='{done}' max='{max(total, 1)}'></progress>"
    return f"<div class='vol-progress'>{bar} Propagation job {job.id}: {job.state.value}, {done}/{total} slices</div>"


def propagate_handlers(ctx: PortalContext) -> SimpleNamespace:
    """Outputs of ``propagate``: state, progress, status, widget, editor, history, title."""

    def propagate(st, z0, z1, edited, request: gr.Request):
        st = fold_editor(_need(st), edited)
        user = ctx.user(request)
        if z0 is None or z1 is None:
            raise gr.Error("Give the z range: the first and the last slice to propagate through.")
        box, key = _key_box(st), st["z"]
        if st["unsaved"]:  # the worker saves from this base: what is on screen goes in first
            try:
                st = _save(ctx, user, st, False)
            except ConflictError as exc:
                yield st, "", _conflict_text(exc), *[gr.skip()] * 4
                return
        job = ctx.queue.submit_propagation(
            ctx.store,
            user,
            st["volume_id"],
            label=st["label"],
            key_slice=key,
            box=box,
            z_range=(int(z0), int(z1)),
            base_revision=st["base_revision"],
        )
        st = {**st, "job_id": job.id}
        yield st, _bar(job), f"Propagating from slice {key} over {int(z0)}–{int(z1)} (job {job.id})…", *[gr.skip()] * 4
        while job.state not in ENDED:
            time.sleep(POLL_S)
            job = ctx.read(jobs.get_job, job.id, user)
            yield gr.skip(), _bar(job), *[gr.skip()] * 5
        yield from _propagated(ctx, user, st, job, key)

    def propagate_ui(st, z0, z1, edited, request: gr.Request):
        """``friendly`` for a generator: a refusal raised while it runs becomes a readable message."""
        try:
            yield from propagate(st, z0, z1, edited, request)
        except gr.Error:
            raise
        except MedsamError as exc:
            raise gr.Error(plain(str(exc)), print_exception=False) from None

    @friendly
    def cancel(st, request: gr.Request):
        if not st or not st.get("job_id"):
            raise gr.Error("No propagation is running.")
        ctx.queue.cancel(ctx.store, int(st["job_id"]), ctx.user(request), kinds={JobKind.propagate})
        return f"Cancel requested for job {st['job_id']}."

    return SimpleNamespace(propagate=propagate_ui, cancel=cancel)


def _propagated(ctx: PortalContext, user, st, job, key: int):
    """The job's revision loaded as the draft; a brush-corrected key slice is kept as the user left it."""
    if job.state != JobState.succeeded:
        why = job.error or job.state.value
        gr.Warning(f"Propagation {job.state.value}: {why}")
        yield {**st, "job_id": None}, _bar(job), f"✗ Propagation {job.state.value}: {why}", *[gr.skip()] * 4
        return
    mine = st["labels"][key].copy()  # the key slice as the user accepted it (a box's mask, maybe brushed)
    _, rev, labels = ctx.read(volumes_labels.read_label_map, ctx.blobs, user, st["volume_id"], st["label"], None)
    st = {**st, "labels": labels, "base_revision": rev.number, "annotation_id": rev.annotation_id}
    st = {**st, "status": "draft", "unsaved": False, "job_id": None}
    note = ""
    if mine.any() and not np.array_equal(labels[key], mine):
        labels = labels.copy()
        labels[key] = mine
        st = {**st, "labels": labels, "unsaved": True}
        note = f" Slice {key} keeps your correction (unsaved)."
    st, widget, editor = slice_views(ctx, user, st, st["z"])
    result = job.result or {}
    text = (
        f"✓ Propagated: revision **{rev.number}**, {result.get('slices', '?')} slice(s) decoded, "
        f"{result.get('voxels', '?')} voxels.{note} " + slice_text(st)
    )
    yield st, _bar(job), text, widget, editor, volume_history(ctx, user, rev.annotation_id), _title(st)


def export_handlers(ctx: PortalContext) -> SimpleNamespace:
    """The saved label maps (every label of the volume, valued by the project's label order) as a file."""

    def export(st, fmt: str, request: gr.Request):
        st = _need(st)
        path = export_file(ctx, ctx.user(request), st["volume_id"], fmt, new_work_dir("volume-export"))
        note = " (unsaved changes are not in it: save first)" if st["unsaved"] else ""
        return gr.update(value=str(path), label=f"Download {path.name}", visible=True), f"✓ Exported {path.name}{note}."

    @friendly
    def nifti(st, request: gr.Request):
        return export(st, "nifti", request)

    @friendly
    def dicom_seg(st, request: gr.Request):
        return export(st, "dicom-seg", request)

    return SimpleNamespace(nifti=nifti, dicom_seg=dicom_seg)
