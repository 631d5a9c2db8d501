"""The Review tab: per-project counts, the submitted annotations, approve or reject with a comment.

Decisions go through ``annotations.approve`` / ``reject``, the calls the REST
API makes, so the four-eyes rule and the required comment hold here too.
"""

from types import SimpleNamespace

import gradio as gr

from portal.store.services import annotations, projects, worklists
from portal.store.services.images import display_pixels
from portal.store.services.masks import load_mask
from portal.web.ui.common import friendly, overlay_colours, overlay_value
from portal.web.ui.context import PortalContext

COUNT_HEADERS = ["project", "images", "unlabelled", "draft", "submitted", "approved", "rejected"]
SUBMITTED_HEADERS = ["annotation", "image", "file", "label", "revision", "author"]


def _layout() -> SimpleNamespace:
    c = SimpleNamespace()
    c.counts = gr.Dataframe(headers=COUNT_HEADERS, label="Per-project counts", interactive=False, elem_id="rev-counts")
    c.subs = gr.Dataframe(headers=SUBMITTED_HEADERS, label="Submitted", interactive=False, elem_id="rev-list")
    with gr.Row():
        c.pick = gr.Dropdown(label="Annotation to review", choices=[], elem_id="rev-pick")
        c.refresh = gr.Button("↻", size="sm", scale=0, elem_id="rev-refresh")
    c.view = gr.AnnotatedImage(label="Submitted mask", format="png", elem_id="rev-view")
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


def build_review_tab(ctx: PortalContext) -> None:
    """Components and events of the tab; call inside ``gr.Tab``."""
    c = _layout()
    store = ctx.store

    @friendly
    def refresh(pid, current, request: gr.Request):
        user = ctx.user(request)
        rows = ctx.read(worklists.submitted, user, int(pid)) if pid else []
        ids = [r["annotation_id"] for r in rows]
        table = [[r[k] for k in ("annotation_id", "image_id", "filename", "label", "revision", "author")] for r in rows]
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
            return None
        image, latest = ctx.read(worklists.review_item, user, int(aid))
        label, colour = ctx.read(projects.annotation_colour, user, int(aid))
        name = f"{label}, revision {latest.number}"
        return gr.update(
            value=overlay_value(
                display_pixels(store.blobs, image, store.settings), [(load_mask(store.blobs, latest.blob_sha), name)]
            ),
            color_map=overlay_colours(colour, [name]),
        )

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
    c.pick.change(show, [c.pick], [c.view])
    c.approve.click(approve, [ctx.project, c.pick, c.comment], [c.status, c.comment, *outs])
    c.reject.click(reject, [ctx.project, c.pick, c.comment], [c.status, c.comment, *outs])
