"""The Review tab: per-project counts, the submitted annotations, approve or reject with a comment.

Decisions go through ``annotations.approve`` / ``reject``, the calls the REST
API makes, so the four-eyes rule and the required comment hold here too, for
a 2-D mask and a volume's 3-D label map alike. A label map is previewed on
its slice with the largest labelled area, with how many slices are labelled.
"""

from types import SimpleNamespace

import gradio as gr
import numpy as np

from portal.store.models import AnnotationRevision, Image
from portal.store.models import Volume as VolumeRow
from portal.store.services import annotations, projects, volumes_labels, worklists
from portal.store.services.images import display_pixels
from portal.store.services.masks import load_mask
from portal.web.ui.common import friendly, overlay_colours, overlay_value
from portal.web.ui.context import PortalContext
from portal.web.ui.volume_slices import slice_rgb

COUNT_HEADERS = ["project", "images", "unlabelled", "draft", "submitted", "approved", "rejected"]
SUBMITTED_HEADERS = ["annotation", "image / volume", "file", "label", "revision", "author"]


def _layout() -> SimpleNamespace:
    c = SimpleNamespace()
    c.counts = gr.Dataframe(headers=COUNT_HEADERS, label="Per-project counts", interactive=False, elem_id="rev-counts")
    c.subs = gr.Dataframe(headers=SUBMITTED_HEADERS, label="Submitted", interactive=False, elem_id="rev-list")
    with gr.Row():
        c.pick = gr.Dropdown(label="Annotation to review", choices=[], elem_id="rev-pick")
        c.refresh = gr.Button("↻", size="sm", scale=0, elem_id="rev-refresh")
    c.view = gr.AnnotatedImage(label="Submitted mask", format="png", elem_id="rev-view")
    c.note = gr.Markdown(elem_id="rev-note")
    c.comment = gr.Textbox(label="Comment (required to reject)", elem_id="rev-comment")
    with gr.Row():
        c.approve = gr.Button("Approve", variant="primary", elem_id="rev-approve")
        c.reject = gr.Button("Reject", variant="stop", elem_id="rev-reject")
    c.status = gr.Markdown(elem_id="rev-status")
    return c


def _choice(row: dict) -> tuple[str, int]:
    return (
        f"#{row['annotation_id']} {row['filename']} · {row['label']} r{row['revision']} by {row['author']}",
        row["annotation_id"],
    )


def _row(r: dict) -> list:
    where = r["image_id"] if r["image_id"] is not None else f"volume {r['volume_id']}"
    return [r["annotation_id"], where, r["filename"], r["label"], r["revision"], r["author"]]


def _picture(ctx: PortalContext, user, owner: Image | VolumeRow, latest: AnnotationRevision) -> tuple:
    """(picture, mask, note): the image and its mask, or a volume's slice with the largest labelled area."""
    if isinstance(owner, Image):
        return display_pixels(ctx.blobs, owner, ctx.store.settings), load_mask(ctx.blobs, latest.blob_sha), ""
    labels = volumes_labels.label_map_from_bytes(ctx.blobs.get_bytes(latest.blob_sha))
    areas = labels.sum(axis=(1, 2))
    z = int(np.argmax(areas)) if areas.any() else owner.depth // 2
    rgb = slice_rgb(ctx, user, {"volume_id": owner.id}, z, None)
    note = (
        f"3-D label map of volume #{owner.id} **{owner.filename}**: **{int(np.count_nonzero(areas))} of "
        f"{owner.depth}** slices labelled. Shown: slice **{z}**, the largest area ({int(areas[z])} px)."
    )
    return rgb, labels[z], note


def build_review_tab(ctx: PortalContext) -> None:
    """Components and events of the tab; call inside ``gr.Tab``."""
    c = _layout()

    @friendly
    def refresh(pid, current, request: gr.Request):
        user = ctx.user(request)
        rows = ctx.read(worklists.submitted, user, int(pid)) if pid else []
        ids = [r["annotation_id"] for r in rows]
        table = [_row(r) for r in rows]
        return (
            ctx.read(worklists.status_counts, user),
            table,
            gr.update(
                choices=[_choice(r) for r in rows], value=current if current in ids else (ids[0] if ids else None)
            ),
        )

    @friendly
    def show(aid, request: gr.Request):
        user = ctx.user(request)
        if not aid:
            return None, ""
        owner, latest = ctx.read(worklists.review_item, user, int(aid))
        label, colour = ctx.read(projects.annotation_colour, user, int(aid))
        name = f"{label}, revision {latest.number}"
        rgb, mask, note = _picture(ctx, user, owner, latest)
        return gr.update(value=overlay_value(rgb, [(mask, name)]), color_map=overlay_colours(colour, [name])), note

    def decide(pid, aid, comment, approve: bool, request: gr.Request):
        user = ctx.user(request)
        if not aid:
            raise gr.Error("Choose a submitted annotation first.")
        if approve:
            ctx.run(annotations.approve, user, int(aid), comment or None)
        else:
            ctx.run(annotations.reject, user, int(aid), comment)
        word = "Approved" if approve else "Rejected"
        gr.Info(f"{word} annotation #{aid}")
        return (f"✓ {word} annotation #{aid}.", "", *refresh(pid, None, request))

    @friendly
    def approve(pid, aid, comment, request: gr.Request):
        return decide(pid, aid, comment, True, request)

    @friendly
    def reject(pid, aid, comment, request: gr.Request):
        return decide(pid, aid, comment, False, request)

    outs = [c.counts, c.subs, c.pick]
    for trigger in (ctx.project.change, c.refresh.click):
        trigger(refresh, [ctx.project, c.pick], outs)
    c.pick.change(show, [c.pick], [c.view, c.note])
    c.approve.click(approve, [ctx.project, c.pick, c.comment], [c.status, c.comment, *outs])
    c.reject.click(reject, [ctx.project, c.pick, c.comment], [c.status, c.comment, *outs])
