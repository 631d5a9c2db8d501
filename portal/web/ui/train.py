"""The Train tab: queue a fine-tune, watch its progress and curves, cancel it.

Jobs are queued and cancelled through the job queue on the context (the one
the REST API uses); the parameters are checked by the training service before
anything is queued, so a bad request is refused here at once.
"""

from types import SimpleNamespace

import gradio as gr
import pandas as pd

from medsam_core.training.modes import MODES
from portal.store.models import Job, JobKind
from portal.store.services import worklists
from portal.web.ui.common import friendly, need_project
from portal.web.ui.context import PortalContext

JOB_HEADERS = ["job", "state", "mode", "epoch", "loss", "val Dice", "ETA s", "result / error"]
POLL_S = 3.0
CURVE_COLUMNS = ["epoch", "value", "series"]


def _layout() -> SimpleNamespace:
    c = SimpleNamespace()
    with gr.Row():
        c.mode = gr.Dropdown(list(MODES), value=MODES[0], label="Mode", elem_id="train-mode")
        c.epochs = gr.Number(value=5, precision=0, minimum=1, maximum=1000, label="Epochs", elem_id="train-epochs")
        c.lr = gr.Number(value=1e-4, label="Learning rate", elem_id="train-lr")
        c.queue = gr.Button("Queue fine-tune", variant="primary", elem_id="train-queue")
    c.status = gr.Markdown(elem_id="train-status")
    c.jobs = gr.Dataframe(
        headers=JOB_HEADERS,
        label=f"Training jobs (refreshes every {POLL_S:g} s)",
        interactive=False,
        elem_id="train-jobs",
    )
    with gr.Row():
        c.job = gr.Dropdown(label="Job", choices=[], elem_id="train-job")
        c.cancel = gr.Button("Cancel job", variant="stop", elem_id="train-cancel")
    with gr.Row():
        c.loss = gr.LinePlot(x="epoch", y="value", color="series", title="Loss", height=260, elem_id="train-loss")
        c.dice = gr.LinePlot(
            x="epoch", y="value", color="series", title="Validation Dice", height=260, elem_id="train-dice"
        )
    c.timer = gr.Timer(POLL_S)
    return c


def _rounded(value) -> float | str:
    return "" if value is None else round(float(value), 4)


def job_row(job: Job) -> list:
    p, r = job.progress or {}, job.result or {}
    epoch = f"{p.get('epoch', 0)}/{p.get('epochs', job.params.get('epochs'))}" if p.get("epoch") else ""
    note = job.error or (f"version {r['model_version_id']}" if r.get("model_version_id") else r.get("note", ""))
    eta = p.get("eta_s")
    return [
        job.id,
        job.state.value,
        job.params.get("mode"),
        epoch,
        _rounded(p.get("loss")),
        _rounded(p.get("val_dice")),
        "" if eta is None else eta,
        note,
    ]


def curves(job: Job | None) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Loss and validation-Dice series per epoch, and the epochs in order.

    Epochs are category labels ("0", "1", ...), so the axis never shows a
    fractional epoch. The Dice series starts at epoch 0 with the starting
    weights' score (the parent's, which the trainer measured first): a line
    needs two points, and a one-epoch job would otherwise draw nothing. The
    parent's score is also drawn flat, as the "before" to beat.
    """
    loss, dice = [], []
    for m in (job.epoch_metrics if job else []) or []:
        epoch = str(m["epoch"])
        if m.get("train_loss") is not None:
            loss.append({"epoch": epoch, "value": m["train_loss"], "series": "train loss"})
        if m.get("val_loss") is not None:
            loss.append({"epoch": epoch, "value": m["val_loss"], "series": "val loss"})
        if m.get("val_dice") is not None:
            dice.append({"epoch": epoch, "value": m["val_dice"], "series": "val Dice"})
    base = (job.progress or {}).get("baseline_val_dice") if job else None
    if base is not None and dice:
        dice.insert(0, {"epoch": "0", "value": base, "series": "val Dice"})
        dice += [{"epoch": d["epoch"], "value": base, "series": "before (parent)"} for d in list(dice)]
    order = sorted({row["epoch"] for row in loss + dice}, key=int)
    return pd.DataFrame(loss, columns=CURVE_COLUMNS), pd.DataFrame(dice, columns=CURVE_COLUMNS), order


def build_train_tab(ctx: PortalContext) -> None:
    """Components and events of the tab; call inside ``gr.Tab``."""
    c = _layout()
    store = ctx.store

    def refresh(pid, selected, request: gr.Request):
        try:
            user = ctx.user(request)
            rows = ctx.read(worklists.training_jobs, user, int(pid)) if pid else []
        except Exception:  # noqa: BLE001 - a timer tick never raises a toast
            return gr.update(), gr.update(), gr.update(), gr.update()
        ids = [j.id for j in rows]
        chosen = selected if selected in ids else (ids[0] if ids else None)
        loss, dice, order = curves(next((j for j in rows if j.id == chosen), None))
        return (
            [job_row(j) for j in rows],
            gr.update(choices=[(f"job {i}", i) for i in ids], value=chosen),
            gr.LinePlot(value=loss, sort=order),
            gr.LinePlot(value=dice, sort=order),
        )

    @friendly
    def submit(pid, mode, epochs, lr, request: gr.Request):
        user = ctx.user(request)
        pid = need_project(pid)
        if epochs is None or lr is None:
            raise gr.Error("Give the number of epochs and the learning rate.")
        params = {"mode": mode, "epochs": int(epochs), "lr": float(lr)}
        job = ctx.queue.submit_finetune(store, user, pid, params)
        gr.Info(f"Queued fine-tune job {job.id}")
        return (
            f"✓ Queued job **{job.id}** ({mode}, {int(epochs)} epochs, lr {float(lr):g}).",
            *refresh(pid, job.id, request),
        )

    @friendly
    def cancel(pid, jid, request: gr.Request):
        user = ctx.user(request)
        if not jid:
            raise gr.Error("Choose a job first.")
        ctx.read(worklists.training_jobs, user, need_project(pid))  # membership of the project shown
        ctx.queue.cancel(store, int(jid), user, kinds={JobKind.finetune})
        return (f"Cancel requested for job {jid}.", *refresh(pid, jid, request))

    outs = [c.jobs, c.job, c.loss, c.dice]
    c.queue.click(submit, [ctx.project, c.mode, c.epochs, c.lr], [c.status, *outs])
    c.cancel.click(cancel, [ctx.project, c.job], [c.status, *outs])
    c.timer.tick(refresh, [ctx.project, c.job], outs, show_progress="hidden")
    ctx.project.change(refresh, [ctx.project, c.job], outs)
    c.job.input(refresh, [ctx.project, c.job], outs)
