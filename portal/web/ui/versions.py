"""The Models tab: the project's versions with their validation scores, evaluate, promote, roll back, upload.

Promotion goes through the gate (``training.promote``): a version is activated
without force only when its evaluation on the frozen validation images is at
least as good as the active one's. "Evaluate" queues that evaluation on the
job queue; the table shows the scores once the worker has recorded them.
"""

from types import SimpleNamespace

import gradio as gr

from medsam_core.errors import MedsamError
from medsam_core.models import FAMILIES
from portal.store.services import model_versions, training, worklists
from portal.store.services.worklists import VersionRow
from portal.web.ui.common import friendly, need_project
from portal.web.ui.context import PortalContext

VERSION_HEADERS = ["active", "version", "name", "family", "parent", "job", "val Dice before", "val Dice after",
                   "evaluated on", "created"]


def _layout() -> SimpleNamespace:
    c = SimpleNamespace()
    c.table = gr.Dataframe(headers=VERSION_HEADERS, label="Model versions", interactive=False,
                           elem_id="models-table")
    with gr.Row():
        c.version = gr.Number(label="Version id", precision=0, elem_id="models-version")
        c.force = gr.Checkbox(label="Force past the gate (admins)", elem_id="models-force")
        c.evaluate = gr.Button("Evaluate on the validation images", elem_id="models-evaluate")
        c.activate = gr.Button("Activate (promotion gate)", variant="primary", elem_id="models-activate")
        c.rollback = gr.Button("Roll back to the previous version", elem_id="models-rollback")
        c.refresh = gr.Button("↻", size="sm", scale=0, elem_id="models-refresh")
    c.status = gr.Markdown(elem_id="models-status")
    with gr.Accordion("Register a MedSAM / SAM checkpoint", open=False):
        with gr.Row():
            c.file = gr.File(label="Checkpoint (.pth)", file_types=[".pth", ".pt"], elem_id="ckpt-file")
            c.family = gr.Dropdown(list(FAMILIES), value="medsam_vit_b", label="Model family", elem_id="ckpt-family")
            c.name = gr.Textbox(label="Name (optional)", elem_id="ckpt-name")
        c.register = gr.Button("Register (checked by loading it first)", elem_id="ckpt-register")
    return c


def _score(value: float | None) -> float | str:
    return "" if value is None else round(value, 4)


def version_table_row(row: VersionRow) -> list:
    v = row.version
    if row.pending_evaluation is not None:
        evaluated = f"queued (job {row.pending_evaluation})"
    else:
        n = row.evaluated_images
        evaluated = "not yet" if n is None else f"{n} image{'' if n == 1 else 's'}"
    return ["● active" if row.active else "", v.id, v.name, v.family, v.parent_id or "", v.training_job_id or "",
            _score(row.val_dice_before), _score(row.val_dice), evaluated, v.created_at.strftime("%Y-%m-%d %H:%M")]


def _need_version(vid, doing: str) -> int:
    if not vid:
        raise gr.Error(f"Give the id of the version to {doing}.")
    return int(vid)


def build_versions_tab(ctx: PortalContext) -> None:
    """Components and events of the tab; call inside ``gr.Tab``."""
    c = _layout()
    store = ctx.store

    @friendly
    def refresh(pid, request: gr.Request):
        user = ctx.user(request)
        return [version_table_row(r) for r in ctx.read(worklists.version_rows, user, int(pid))] if pid else []

    @friendly
    def evaluate(pid, vid, request: gr.Request):
        user = ctx.user(request)
        pid, vid = need_project(pid), _need_version(vid, "evaluate")
        job = ctx.queue.submit_evaluation(store, user, pid, vid)
        gr.Info(f"Evaluation of version {vid} queued")
        return (f"✓ Evaluation of version **{vid}** queued (job {job.id}); its validation Dice appears in the "
                "table when it has run.", refresh(pid, request))

    @friendly
    def activate(pid, vid, force, request: gr.Request):
        user = ctx.user(request)
        pid, vid = need_project(pid), _need_version(vid, "activate")
        with store.transaction() as db:
            training.promote(db, user, pid, vid, force=bool(force))
        gr.Info(f"Version {vid} is now active")
        return (f"✓ Version **{vid}** is active" + (" (forced past the gate)." if force else "."),
                refresh(pid, request))

    @friendly
    def rollback(pid, request: gr.Request):
        user = ctx.user(request)
        with store.transaction() as db:
            project_row = model_versions.rollback(db, user, need_project(pid))
        return (f"✓ Rolled back: version **{project_row.active_model_version_id}** is active.",
                refresh(pid, request))

    @friendly
    def register(pid, path, family, name, request: gr.Request):
        user = ctx.user(request)
        if not path:
            raise gr.Error("Choose a checkpoint file first.")
        pid = need_project(pid)
        with store.transaction() as db:  # refused before the slow load, which runs outside any transaction
            model_versions.check_may_register(db, user, pid)
        loaded = model_versions.load_checkpoint(family, path)
        with store.transaction() as db:
            version = model_versions.register_checkpoint(db, store.blobs, user, pid, loaded, path, name or None)
        done = f"✓ Registered **{version.name}** as version {version.id}"
        try:  # so the gate can compare it; registration stands even when no evaluation can run yet
            job = ctx.queue.submit_evaluation(store, user, pid, version.id)
        except MedsamError as exc:
            gr.Warning(f"Version {version.id} is registered but not evaluated: {exc}")
            return f"{done}, not evaluated yet: {exc}", refresh(pid, request)
        return (f"{done}; its evaluation on the validation images is queued (job {job.id}). Promote it above "
                "once it has a score.", refresh(pid, request))

    outs = [c.status, c.table]
    c.register.click(register, [ctx.project, c.file, c.family, c.name], outs)
    for trigger in (ctx.project.change, c.refresh.click):
        trigger(refresh, [ctx.project], [c.table])
    c.evaluate.click(evaluate, [ctx.project, c.version], outs)
    c.activate.click(activate, [ctx.project, c.version, c.force], outs)
    c.rollback.click(rollback, [ctx.project], outs)
