"""The Models tab: the project's versions with their validation scores, evaluate, promote, roll back, upload.

Promotion goes through the gate (``training.promote``): a version is activated
without force only when its evaluation on the frozen validation images is at
least as good as the active one's. "Evaluate" queues that evaluation on the
job queue (the API's ``POST .../evaluate`` makes the same call); the worker
scores the active version too when it has no score yet, since the gate needs
both. While an evaluation is queued or running, a timer follows its job and
refreshes the table, so the scores appear without a click. Clicking a row
picks its version. Reviewers may evaluate; promoting, rolling back and
registering are an admin's, and their controls are hidden from others.
"""

from types import SimpleNamespace

import gradio as gr

from medsam_core.errors import MedsamError
from medsam_core.models import FAMILIES
from portal.store.models import JobState, Role
from portal.store.services import jobs, model_versions, training, worklists
from portal.store.services.worklists import VersionRow
from portal.web.ui.common import failure_text, need_project, reported
from portal.web.ui.context import PortalContext

VERSION_HEADERS = [
    "active",
    "version",
    "name",
    "family",
    "parent",
    "job",
    "val Dice before",
    "val Dice after",
    "evaluated on",
    "created",
]
POLL_S = 3.0
BEFORE_NOTE = (
    "*val Dice before*: the parent's score for a fine-tune; for any other version, the active "
    "version's, on the same frozen validation images. The gate promotes a version whose *after* is at "
    "least the active one's. Click a row to pick its version."
)


def _layout() -> SimpleNamespace:
    c = SimpleNamespace()
    c.table = gr.Dataframe(headers=VERSION_HEADERS, label="Model versions", interactive=False, elem_id="models-table")
    gr.Markdown(BEFORE_NOTE)
    with gr.Row():
        c.version = gr.Number(label="Version id", precision=0, elem_id="models-version")
        c.evaluate = gr.Button("Evaluate on the validation images", elem_id="models-evaluate")
        c.force = gr.Checkbox(label="Force past the gate (admins)", visible=False, elem_id="models-force")
        c.activate = gr.Button("Activate (promotion gate)", variant="primary", visible=False, elem_id="models-activate")
        c.rollback = gr.Button("Roll back to the previous version", visible=False, elem_id="models-rollback")
        c.refresh = gr.Button("↻", size="sm", scale=0, elem_id="models-refresh")
    c.status = gr.Markdown(elem_id="models-status")
    with gr.Accordion("Register a MedSAM / SAM checkpoint", open=False, visible=False) as c.register_box:
        with gr.Row():
            c.file = gr.File(label="Checkpoint (.pth)", file_types=[".pth", ".pt"], elem_id="ckpt-file")
            c.family = gr.Dropdown(list(FAMILIES), value="medsam_vit_b", label="Model family", elem_id="ckpt-family")
            c.name = gr.Textbox(label="Name (optional)", elem_id="ckpt-name")
        c.register = gr.Button("Register (checked by loading it first)", elem_id="ckpt-register")
    c.job = gr.State(None)  # the evaluation job the timer follows
    c.timer = gr.Timer(POLL_S)
    return c


def _score(value: float | None) -> float | str:
    return "" if value is None else round(value, 4)


def version_table_row(row: VersionRow, active_score: float | None = None) -> list:
    """``active_score``: the active version's evaluation, the "before" of a version without a parent."""
    v = row.version
    if row.pending_evaluation is not None:
        evaluated = f"queued (job {row.pending_evaluation})"
    else:
        n = row.evaluated_images
        evaluated = "not yet" if n is None else f"{n} image{'' if n == 1 else 's'}"
    before = row.val_dice_before
    if before is None and v.parent_id is None and not row.active:
        before = active_score
    return [
        "● active" if row.active else "",
        v.id,
        v.name,
        v.family,
        v.parent_id or "",
        v.training_job_id or "",
        _score(before),
        _score(row.val_dice),
        evaluated,
        v.created_at.strftime("%Y-%m-%d %H:%M"),
    ]


def version_table(rows: list[VersionRow]) -> list[list]:
    active = next((r for r in rows if r.active), None)
    score = active.val_dice if active is not None and active.evaluated_images is not None else None
    return [version_table_row(r, score) for r in rows]


def _need_version(vid, doing: str) -> int:
    if not vid:
        raise gr.Error(f"Pick the version to {doing}: click its row, or type its id.")
    return int(vid)


def _job_line(job) -> str:
    what = f"Evaluation job {job.id} of version {job.params.get('model_version_id')}: **{job.state.value}**"
    if job.state == JobState.failed:
        return failure_text(f"evaluation job {job.id} failed: {job.error}")
    if job.state == JobState.succeeded:
        return "✓ " + what + "; the scores are in the table."
    return what


def _table(ctx: PortalContext, user, pid) -> list[list]:
    return version_table(ctx.read(worklists.version_rows, user, int(pid))) if pid else []


def _view_handlers(ctx: PortalContext) -> SimpleNamespace:
    """Reading and following: the table, the admin-only controls, an evaluation's progress."""

    def table(user, pid) -> list[list]:
        return _table(ctx, user, pid)

    def refresh(pid, request: gr.Request):
        try:
            return table(ctx.user(request), pid)
        except (gr.Error, MedsamError):  # a project change never raises a toast
            return []

    def controls(request: gr.Request):
        try:
            admin = ctx.user(request).role == Role.admin
        except gr.Error:
            admin = False
        return [gr.update(visible=admin)] * 3 + [gr.Accordion(visible=admin)]

    def follow(pid, jid, request: gr.Request):
        """A timer tick: nothing unless an evaluation is followed; its state, and the table, while it is."""
        if jid is None:
            return gr.skip(), gr.skip(), gr.skip()
        try:
            user = ctx.user(request)
            job = ctx.read(jobs.get_job, int(jid), user)
            rows = table(user, pid)
        except (gr.Error, MedsamError):
            return gr.skip(), gr.skip(), None
        done = job.state in (JobState.succeeded, JobState.failed, JobState.cancelled)
        return _job_line(job), rows, None if done else jid

    def pick(evt: gr.SelectData):
        row = evt.row_value or []
        return row[1] if len(row) > 1 and row[1] not in (None, "") else gr.skip()

    return SimpleNamespace(refresh=refresh, controls=controls, follow=follow, pick=pick)


def _action_handlers(ctx: PortalContext) -> SimpleNamespace:
    """Changing things: evaluate, activate (through the gate), roll back, register a checkpoint."""
    store = ctx.store

    def table(user, pid) -> list[list]:
        return _table(ctx, user, pid)

    @reported(2)
    def evaluate(pid, vid, request: gr.Request):
        user = ctx.user(request)
        pid, vid = need_project(pid), _need_version(vid, "evaluate")
        job = ctx.queue.submit_evaluation(store, user, pid, vid)
        gr.Info(f"Evaluation of version {vid} queued")
        return (
            f"Evaluation of version **{vid}** queued (job {job.id}); its validation Dice appears in the "
            "table when it has run.",
            table(user, pid),
            job.id,
        )

    @reported(1)
    def activate(pid, vid, force, request: gr.Request):
        user = ctx.user(request)
        pid, vid = need_project(pid), _need_version(vid, "activate")
        with store.transaction() as db:
            training.promote(db, user, pid, vid, force=bool(force))
        gr.Info(f"Version {vid} is now active")
        return (f"✓ Version **{vid}** is active" + (" (forced past the gate)." if force else "."), table(user, pid))

    @reported(1)
    def rollback(pid, request: gr.Request):
        user = ctx.user(request)
        with store.transaction() as db:
            project_row = model_versions.rollback(db, user, need_project(pid))
        return (f"✓ Rolled back: version **{project_row.active_model_version_id}** is active.", table(user, pid))

    @reported(2)
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
            return f"{done}, not evaluated yet: {exc}", table(user, pid), None
        return (
            f"{done}; its evaluation on the validation images is queued (job {job.id}). Promote it once it "
            "has a score.",
            table(user, pid),
            job.id,
        )

    return SimpleNamespace(
        evaluate=evaluate,
        activate=activate,
        rollback=rollback,
        register=register,
    )


def build_versions_tab(ctx: PortalContext) -> None:
    """Components and events of the tab; call inside ``gr.Tab``."""
    c = _layout()
    h = SimpleNamespace(**vars(_view_handlers(ctx)), **vars(_action_handlers(ctx)))
    c.register.click(h.register, [ctx.project, c.file, c.family, c.name], [c.status, c.table, c.job])
    for trigger in (ctx.project.change, c.refresh.click):
        trigger(h.refresh, [ctx.project], [c.table])
    ctx.project.change(h.controls, None, [c.force, c.activate, c.rollback, c.register_box])
    c.table.select(h.pick, None, [c.version])
    c.timer.tick(h.follow, [ctx.project, c.job], [c.status, c.table, c.job], show_progress="hidden")
    c.evaluate.click(h.evaluate, [ctx.project, c.version], [c.status, c.table, c.job])
    c.activate.click(h.activate, [ctx.project, c.version, c.force], [c.status, c.table])
    c.rollback.click(h.rollback, [ctx.project], [c.status, c.table])
