"""The volume viewer of the Annotate tab (issue 12, item 5): a volume is one item of the work list.

Scroll with the slider or the keys, pick a display window, draw a box on a key
slice (the live mask widget decodes against that slice's cached embedding, as
for a 2-D image), set the z range and Propagate: a ``propagate`` job on the
inference queue whose result comes back as the volume's draft label map.
Any slice can then be corrected (box, points or the brush) and propagated
again from there; Save and Submit store the 3-D map as one annotation
revision; the export buttons write the saved maps with the source geometry.

It has its own live widget and brush editor rather than the 2-D ones: those
are wired to the 2-D annotation (autosave, 2-D revisions), and a volume's
slices must never be saved as separate 2-D masks. Opening a volume hides the
2-D parts (``visible="hidden"``, so their widgets keep their state) and an
image shows them again.
"""

from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from medsam_core.windows import WINDOW_PRESETS
from portal.store.label_colours import label_colour
from portal.web.ui.annotate_queue import HISTORY_HEADERS
from portal.web.ui.context import PortalContext
from portal.web.ui.editor import brush
from portal.web.ui.live_mask import live_widget
from portal.web.ui.volume_handlers import (
    export_handlers,
    open_handler,
    propagate_handlers,
    save_handlers,
    view_handlers,
)
from portal.web.ui.volume_slices import AS_STORED

KEYS_JS = Path(__file__).with_name("volume_view.js").read_text()
KEYS_HTML = (
    "<div class='vol-keys'>Click the slice, then ← → (or ↑ ↓) step one slice and Page Up / Page Down five.</div>"
)
SAVE_GROUP = "annotate-volume-save"


def _viewer(ctx: PortalContext) -> SimpleNamespace:
    v = SimpleNamespace(state=gr.State({}))
    with gr.Column(visible=False, elem_id="vol-viewer") as v.group:
        v.title = gr.Markdown(elem_id="vol-title")
        with gr.Row():
            v.slice = gr.Slider(0, 1, value=0, step=1, label="Slice", elem_id="vol-slice", scale=3)
            v.window = gr.Dropdown(
                [AS_STORED, *WINDOW_PRESETS],
                value=AS_STORED,
                label="Display window (CT presets; the model sees the volume's own)",
                elem_id="vol-window",
                scale=1,
            )
        v.keys = gr.HTML(KEYS_HTML, js_on_load=KEYS_JS, elem_id="vol-keys")
        with gr.Row():
            with gr.Column():
                v.boxes = live_widget(ctx, "vol-annotator")
            with gr.Column():
                v.editor = gr.ImageEditor(
                    label="Correct this slice with the brush / eraser",
                    type="numpy",
                    image_mode="RGBA",
                    format="png",
                    layers=False,
                    transforms=(),
                    sources=(),
                    brush=brush(label_colour(None, "")),
                    eraser=gr.Eraser(default_size=12),
                    elem_id="vol-editor",
                    height=560,
                    canvas_size=(512, 512),
                    fixed_canvas=False,
                )
        v.status = gr.Markdown(elem_id="vol-status")
        with gr.Row():
            v.z0 = gr.Number(label="Propagate from slice", precision=0, elem_id="vol-z0")
            v.z1 = gr.Number(label="to slice", precision=0, elem_id="vol-z1")
            v.propagate = gr.Button("Propagate from the shown slice", variant="primary", elem_id="vol-propagate")
            v.cancel = gr.Button("Cancel propagation", elem_id="vol-cancel")
        v.progress = gr.HTML(elem_id="vol-progress")
        with gr.Row():
            v.save = gr.Button("Save draft", elem_id="vol-save")
            v.submit = gr.Button("Submit for review", variant="primary", elem_id="vol-submit")
            v.reload = gr.Button("Reload (discards unsaved changes)", elem_id="vol-reload")
        with gr.Row():
            v.export_nifti = gr.Button("Export NIfTI label map", elem_id="vol-export-nifti")
            v.export_seg = gr.Button("Export DICOM-SEG", visible=False, elem_id="vol-export-seg")
            v.download = gr.DownloadButton("Download", visible=False, elem_id="vol-download")
        v.history = gr.Dataframe(
            headers=HISTORY_HEADERS, label="Revision history", interactive=False, elem_id="vol-history"
        )
    return v


def build_volume_view(ctx: PortalContext, c: SimpleNamespace, q: SimpleNamespace) -> None:
    """The viewer, below the 2-D parts of the tab ``c``; ``q``: the tab's queue handlers (for after a save)."""
    v = _viewer(ctx)
    project = ctx.project
    flat = [c.boxes, c.editor, c.status, c.save, c.submit, c.history]
    opened = open_handler(ctx, len(flat))
    open_outs = [
        v.state,
        v.group,
        v.title,
        v.slice,
        v.z0,
        v.z1,
        v.boxes,
        v.editor,
        v.status,
        v.history,
        v.export_seg,
        v.download,
        v.progress,
        *flat,
    ]
    for trigger in (c.pick.change, c.reload.click, v.reload.click):
        trigger(opened, [project, c.label, c.pick], open_outs)
    views = view_handlers(ctx)
    shown = [v.state, v.boxes, v.editor, v.status]
    for trigger in (v.slice.change, v.window.change):
        trigger(views.show, [v.state, v.slice, v.window], shown, trigger_mode="always_last")
    v.editor.input(views.stroke, [v.state, v.editor], [v.state, v.status], trigger_mode="always_last")
    v.keys.submit(views.step, [v.state], [v.slice], trigger_mode="multiple", show_progress="hidden")
    v.boxes.submit(views.propose, [v.state], [v.state, v.editor, v.status], trigger_mode="multiple")

    group = {"concurrency_id": SAVE_GROUP, "concurrency_limit": 1}
    s = save_handlers(ctx)
    listed = [project, c.label, c.mode, c.pick, c.order, v.state]
    for button, handler in ((v.save, s.save_draft), (v.submit, s.save_submit)):
        button.click(handler, [v.state, v.editor], [v.state, v.status, v.history, v.title], **group).success(
            q.after_save, listed, [c.pick, c.order]
        )
    p = propagate_handlers(ctx)
    propagated = [v.state, v.progress, v.status, v.boxes, v.editor, v.history, v.title]
    v.propagate.click(p.propagate, [v.state, v.z0, v.z1, v.editor], propagated, **group)
    v.cancel.click(p.cancel, [v.state], [v.status])
    e = export_handlers(ctx)
    v.export_nifti.click(e.nifti, [v.state], [v.download, v.status])
    v.export_seg.click(e.dicom_seg, [v.state], [v.download, v.status])
