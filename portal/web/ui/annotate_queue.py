"""The Annotate tab's queue: the image list, Previous/Next, moving on after a submit, and the history.

The list's order is kept in the session (``order``) from the moment the queue
is listed: a fresh listing sorts by status, so a just-submitted image would
jump to the back and Next would lead nowhere. The list's *labels* are
refreshed after every save, so the submitted image shows its new state in
place. Which image comes next is the services' rule (``worklists.step`` and
``worklists.next_to_do``); this module only shows it.
"""

from types import SimpleNamespace
from typing import Any

import gradio as gr

from portal.store.services import worklists
from portal.store.services.worklists import ReviewRow, RevisionRow
from portal.web.ui.common import friendly
from portal.web.ui.context import PortalContext
from portal.web.ui.volume_queue import work_list

HISTORY_HEADERS = ["revision", "event", "by", "time (UTC)", "model version", "prompt", "comment"]
COMMENT_IN_LIST = 60  # characters of a rejection comment shown in the image list


def _when(row: RevisionRow | ReviewRow) -> str:
    return row.created_at.strftime("%Y-%m-%d %H:%M:%S")


def _prompt_text(prompt) -> str:
    if not prompt:
        return ""
    parts = ["box " + " ".join(f"{v:.0f}" for v in box) for box in prompt.get("boxes") or []]
    parts += [f"{'+' if p[2] else '-'}pt {p[0]:.0f},{p[1]:.0f}" for p in prompt.get("points") or []]
    return "; ".join(parts)


def history_rows(revisions: list[RevisionRow], reviews: list[ReviewRow]) -> list[list]:
    """Saves and reviewers' decisions in one table, newest first: why a revision came back sits beside it."""
    rows = [
        (
            r.created_at,
            [
                r.number,
                "saved",
                r.author or "(deleted)",
                _when(r),
                r.model_version_id,
                _prompt_text(r.prompt),
                r.comment or "",
            ],
        )
        for r in revisions
    ]
    rows += [
        (v.created_at, [v.revision, v.decision, v.reviewer or "(deleted)", _when(v), "", "", v.comment or ""])
        for v in reviews
    ]
    return [row for _, row in sorted(rows, key=lambda pair: pair[0], reverse=True)]


def history(ctx: PortalContext, user, annotation_id: int | None) -> list[list]:
    if annotation_id is None:
        return []
    return history_rows(
        ctx.read(worklists.revision_history, user, annotation_id),
        ctx.read(worklists.review_history, user, annotation_id),
    )


def rejection_note(reviews: list[ReviewRow]) -> str:
    """The newest decision, when it sent the work back: what the annotator has to fix, and from whom."""
    if not reviews or reviews[0].decision != "rejected":
        return ""
    why = reviews[0]
    return (
        f"\n\n**Rejected by {why.reviewer or '(deleted)'}** ({_when(why)} UTC, revision {why.revision}): "
        f"“{why.comment or ''}”. Fix it and submit again."
    )


def _choice(row: dict[str, Any]) -> tuple[str, int]:
    text = (
        f"#{row['image_id']} {row['filename']}"
        + (f" [slice {row['slice']}]" if row["slice"] else "")
        + f" · {row['status']}"
        + (f" r{row['revision']}" if row["revision"] else "")
    )
    why = row.get("rejection")
    if why is not None:
        comment = why.comment or ""
        comment = comment if len(comment) <= COMMENT_IN_LIST else comment[: COMMENT_IN_LIST - 1] + "…"
        text += f" · by {why.reviewer or '(deleted)'}: “{comment}”"
    return text, row["image_id"]


def _listing(ctx: PortalContext, user, pid, lbl, qmode, order: list[int] | None) -> tuple[list, list[int], dict]:
    """Choices, their order and each image's status; ``order`` keeps the listed order (new images go last)."""
    rows = ctx.read(work_list, user, int(pid), lbl, qmode) if pid and lbl else []  # a volume is one row
    if order:
        place = {image_id: n for n, image_id in enumerate(order)}
        rows.sort(key=lambda r: (place.get(r["image_id"], len(place)), r["image_id"]))
    return [_choice(r) for r in rows], [r["image_id"] for r in rows], {r["image_id"]: r["status"] for r in rows}


def queue_handlers(ctx: PortalContext) -> SimpleNamespace:
    """Handlers for the project/label/mode choice, Previous/Next and the list after a save."""

    @friendly
    def on_project(pid, request: gr.Request):
        user = ctx.user(request)
        if not pid:
            return gr.update(choices=[], value=None)
        labels = ctx.read(worklists.project_labels, user, int(pid))
        return gr.update(choices=labels, value=labels[0] if labels else None)

    @friendly
    def on_queue(pid, lbl, qmode, current, request: gr.Request):
        found, ids, _ = _listing(ctx, ctx.user(request), pid, lbl, qmode, None)
        return gr.update(choices=found, value=current if current in ids else (ids[0] if ids else None)), ids

    @friendly
    def move(pid, lbl, qmode, current, order, delta, request: gr.Request):
        if not order:
            _, order, _ = _listing(ctx, ctx.user(request), pid, lbl, qmode, None)
        if not order:
            raise gr.Error("The queue is empty.")
        target = worklists.step(order, current, delta)
        if target is None:
            gr.Info("This is the first image of the queue." if delta < 0 else "This is the last image of the queue.")
            return gr.skip()
        return gr.update(value=target)

    @friendly
    def after_save(pid, lbl, qmode, current, order, st, request: gr.Request):
        """Refresh the list's states in place; after a submit, go on to the next image still to do."""
        found, ids, statuses = _listing(ctx, ctx.user(request), pid, lbl, qmode, order)
        value = current
        if st and st.get("saved_as") == "submitted" and st.get("image_id") == current:
            target = worklists.next_to_do(ids, statuses, current, qmode)
            if target is None:
                gr.Info("Nothing left to do in this queue.")
            else:
                value = target
        return gr.update(choices=found, value=value), ids

    return SimpleNamespace(on_project=on_project, on_queue=on_queue, move=move, after_save=after_save)
