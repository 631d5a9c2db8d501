"""The logged-in portal: Segment (demo), Annotate, Review, Train, Models and Project admin tabs.

Every write goes through ``portal.store.services`` or ``workers.dispatch``, the
same calls the REST API makes. Errors from them arrive as gr.Error messages,
and nothing is written when a request is refused.
"""

import gradio as gr

from medsam_core.models import FAMILIES
import pandas as pd

from portal.store.models import TrainingJob
from portal.store.services import annotations, images, model_versions, training
from portal.store.services.images import display_pixels
from portal.store.services.masks import load_mask
from portal.web.ui import queries as q
from portal.web.ui.admin import build_admin_tab
from portal.web.ui.admin import need_project as _need_project
from portal.web.ui.annotate import build_annotate_tab
from portal.web.ui.common import friendly, overlay_value, user_of
from portal.web.ui.segment import build_segment_tab

SHORTCUTS_JS = """
<script>
document.addEventListener('keydown', (e) => {
  const t = e.target; const tag = (t && t.tagName || '').toLowerCase();
  if (tag === 'input' || tag === 'textarea' || (t && t.isContentEditable)) return;
  const click = (id) => { const b = document.querySelector('#' + id); if (b) { e.preventDefault(); b.click(); } };
  if (e.altKey && (e.key === 'n' || e.key === 'ArrowRight')) click('ann-next');
  else if (e.altKey && (e.key === 'p' || e.key === 'ArrowLeft')) click('ann-prev');
  else if (e.altKey && e.key === 's') click('ann-save');
  else if (e.altKey && e.key === 'Enter') click('ann-submit');
});
</script>
"""

JOB_HEADERS = ["job", "state", "mode", "epoch", "loss", "val Dice", "ETA s", "result / error"]
VERSION_HEADERS = ["active", "version", "name", "family", "parent", "job", "val Dice before", "val Dice after",
                   "created"]
COUNT_HEADERS = ["project", "images", "unlabelled", "draft", "submitted", "approved", "rejected"]


def build_portal(app_state, engine) -> gr.Blocks:
    store = app_state.store
    settings = app_state.settings

    def seg_service():
        return app_state.segmentation  # the REST API's service: one segmentation path for both

    with gr.Blocks(title="MedSAM portal") as demo:
        with gr.Row():
            who = gr.Markdown(elem_id="who")
            project = gr.Dropdown(label="Project", choices=[], value=None, elem_id="project", scale=2)
            refresh_projects = gr.Button("↻ Projects", size="sm", scale=0)

        with gr.Tabs():
            # ---------------------------------------------------------------- Segment (demo)
            with gr.Tab("Segment (demo)", id="segment"):
                build_segment_tab(engine, settings.max_image_pixels, prefix="seg")

            # ---------------------------------------------------------------- Annotate
            with gr.Tab("Annotate", id="annotate"):
                build_annotate_tab(store, seg_service, project)

            # ---------------------------------------------------------------- Review
            with gr.Tab("Review", id="review"):
                counts = gr.Dataframe(headers=COUNT_HEADERS, label="Per-project counts", interactive=False,
                                      elem_id="rev-counts")
                subs = gr.Dataframe(headers=["annotation", "image", "file", "label", "revision", "author"],
                                    label="Submitted", interactive=False, elem_id="rev-list")
                with gr.Row():
                    rev_pick = gr.Dropdown(label="Annotation to review", choices=[], elem_id="rev-pick")
                    rev_refresh = gr.Button("↻", size="sm", scale=0, elem_id="rev-refresh")
                rev_view = gr.AnnotatedImage(label="Submitted mask", format="png", elem_id="rev-view")
                rev_comment = gr.Textbox(label="Comment (required to reject)", elem_id="rev-comment")
                with gr.Row():
                    approve_btn = gr.Button("Approve", variant="primary", elem_id="rev-approve")
                    reject_btn = gr.Button("Reject", variant="stop", elem_id="rev-reject")
                rev_status = gr.Markdown(elem_id="rev-status")

            # ---------------------------------------------------------------- Train
            with gr.Tab("Train", id="train"):
                with gr.Row():
                    t_mode = gr.Dropdown(["decoder", "full"], value="decoder", label="Mode", elem_id="train-mode")
                    t_epochs = gr.Number(value=5, precision=0, minimum=1, maximum=1000, label="Epochs",
                                         elem_id="train-epochs")
                    t_lr = gr.Number(value=1e-4, label="Learning rate", elem_id="train-lr")
                    t_queue = gr.Button("Queue fine-tune", variant="primary", elem_id="train-queue")
                t_status = gr.Markdown(elem_id="train-status")
                jobs_table = gr.Dataframe(headers=JOB_HEADERS, label="Training jobs (refreshes every 3 s)",
                                          interactive=False, elem_id="train-jobs")
                with gr.Row():
                    t_job = gr.Dropdown(label="Job", choices=[], elem_id="train-job")
                    t_cancel = gr.Button("Cancel job", variant="stop", elem_id="train-cancel")
                with gr.Row():
                    loss_plot = gr.LinePlot(x="epoch", y="value", color="series", title="Loss", height=260,
                                            elem_id="train-loss")
                    dice_plot = gr.LinePlot(x="epoch", y="value", color="series", title="Validation Dice",
                                            height=260, elem_id="train-dice")
                timer = gr.Timer(3.0)

            # ---------------------------------------------------------------- Models
            with gr.Tab("Models", id="models"):
                versions_table = gr.Dataframe(headers=VERSION_HEADERS, label="Model versions", interactive=False,
                                              elem_id="models-table")
                with gr.Row():
                    m_version = gr.Number(label="Version id", precision=0, elem_id="models-version")
                    m_force = gr.Checkbox(label="Force past the gate (admins)", elem_id="models-force")
                    m_activate = gr.Button("Activate (promotion gate)", variant="primary", elem_id="models-activate")
                    m_rollback = gr.Button("Roll back to the previous version", elem_id="models-rollback")
                    m_refresh = gr.Button("↻", size="sm", scale=0, elem_id="models-refresh")
                m_status = gr.Markdown(elem_id="models-status")
                with gr.Accordion("Register a MedSAM / SAM checkpoint", open=False):
                    with gr.Row():
                        ck_file = gr.File(label="Checkpoint (.pth)", file_types=[".pth", ".pt"], elem_id="ckpt-file")
                        ck_family = gr.Dropdown(list(FAMILIES), value="medsam_vit_b", label="Model family",
                                                elem_id="ckpt-family")
                        ck_name = gr.Textbox(label="Name (optional)", elem_id="ckpt-name")
                    ck_button = gr.Button("Register (checked by loading it first)", elem_id="ckpt-register")

            # ---------------------------------------------------------------- Project admin
            with gr.Tab("Project admin", id="admin"):
                build_admin_tab(app_state, project)

        # ==================================================================== handlers
        def refresh_project_list(pid, request: gr.Request):
            user = user_of(store, request)
            choices = q.projects_for(store, user)
            ids = [v for _, v in choices]
            value = pid if pid in ids else (ids[0] if ids else None)
            return (f"**{user.username}** ({user.role.value}) · [log out](logout)",
                    gr.update(choices=choices, value=value))

        demo.load(refresh_project_list, [project], [who, project])
        refresh_projects.click(refresh_project_list, [project], [who, project])

        # -------------------------------------------------------------- Review
        @friendly
        def refresh_review(pid, current, request: gr.Request):
            user = user_of(store, request)
            rows = q.submitted(store, user, int(pid)) if pid else []
            choices = [(f"#{r['annotation_id']} {r['filename']} · {r['label']} r{r['revision']} by {r['author']}",
                        r["annotation_id"]) for r in rows]
            ids = [v for _, v in choices]
            return (q.counts(store, user), [[r["annotation_id"], r["image_id"], r["filename"], r["label"],
                                             r["revision"], r["author"]] for r in rows],
                    gr.update(choices=choices, value=current if current in ids else (ids[0] if ids else None)))

        @friendly
        def show_review(aid, request: gr.Request):
            user = user_of(store, request)
            if not aid:
                return None
            revs = annotations.revisions(store, user, int(aid))  # checks membership
            latest = revs[-1]
            from portal.store.models import Annotation

            with store.transaction() as session:
                image_id = session.get(Annotation, int(aid)).image_id
            image = images.get_image(store, user, image_id)
            return overlay_value(display_pixels(store, image), [(load_mask(store, latest.blob_sha),
                                                                 f"revision {latest.number}")])

        @friendly
        def decide(pid, aid, comment, approve, request: gr.Request):
            user = user_of(store, request)
            if not aid:
                raise gr.Error("Choose a submitted annotation first.")
            if approve:
                annotations.approve(store, user, int(aid), comment or None)
            else:
                annotations.reject(store, user, int(aid), comment)
            word = "Approved" if approve else "Rejected"
            gr.Info(f"{word} annotation #{aid}")
            return (f"✓ {word} annotation #{aid}.", "", *refresh_review(pid, None, request))

        rev_outs = [counts, subs, rev_pick]
        for trigger in (project.change, rev_refresh.click):
            trigger(refresh_review, [project, rev_pick], rev_outs)
        rev_pick.change(show_review, [rev_pick], [rev_view])
        @friendly
        def approve(pid, aid, comment, request: gr.Request):
            return decide(pid, aid, comment, True, request)

        @friendly
        def reject(pid, aid, comment, request: gr.Request):
            return decide(pid, aid, comment, False, request)

        approve_btn.click(approve, [project, rev_pick, rev_comment], [rev_status, rev_comment, *rev_outs])
        reject_btn.click(reject, [project, rev_pick, rev_comment], [rev_status, rev_comment, *rev_outs])

        # -------------------------------------------------------------- Train
        def job_row(job: TrainingJob) -> list:
            p, r = job.progress or {}, job.result or {}
            epoch = f"{p.get('epoch', 0)}/{p.get('epochs', job.params.get('epochs'))}" if p.get("epoch") else ""
            note = job.error or (f"version {r['model_version_id']}" if r.get("model_version_id") else
                                 r.get("note", ""))
            loss = p.get("loss")
            dice = p.get("val_dice")
            return [job.id, job.state.value, job.params.get("mode"), epoch,
                    "" if loss is None else round(float(loss), 4), "" if dice is None else round(float(dice), 4),
                    p.get("eta_s") if p.get("eta_s") is not None else "", note]

        def curves(job: TrainingJob | None):
            loss, dice = [], []
            for m in (job.epoch_metrics if job else []) or []:
                if m.get("train_loss") is not None:
                    loss.append({"epoch": m["epoch"], "value": m["train_loss"], "series": "train loss"})
                if m.get("val_loss") is not None:
                    loss.append({"epoch": m["epoch"], "value": m["val_loss"], "series": "val loss"})
                if m.get("val_dice") is not None:
                    dice.append({"epoch": m["epoch"], "value": m["val_dice"], "series": "val Dice"})
            base = (job.progress or {}).get("baseline_val_dice") if job else None
            if base is not None and dice:
                dice += [{"epoch": d["epoch"], "value": base, "series": "before (parent)"} for d in list(dice)]
            cols = ["epoch", "value", "series"]
            return pd.DataFrame(loss, columns=cols), pd.DataFrame(dice, columns=cols)

        def refresh_jobs(pid, selected, request: gr.Request):
            try:
                user = user_of(store, request)
                rows = q.training_jobs(store, user, int(pid)) if pid else []
            except Exception:  # noqa: BLE001 - a timer tick never raises a toast
                return gr.update(), gr.update(), gr.update(), gr.update()
            ids = [j.id for j in rows]
            chosen = selected if selected in ids else (ids[0] if ids else None)
            job = next((j for j in rows if j.id == chosen), None)
            loss, dice = curves(job)
            return ([job_row(j) for j in rows], gr.update(choices=[(f"job {i}", i) for i in ids], value=chosen),
                    loss, dice)

        @friendly
        def queue_job(pid, tmode, epochs, lr, request: gr.Request):
            from workers import dispatch

            user = user_of(store, request)
            pid = _need_project(pid)
            if epochs is None or lr is None:
                raise gr.Error("Give the number of epochs and the learning rate.")
            job = dispatch.submit_finetune(store, user, pid, {"mode": tmode, "epochs": int(epochs), "lr": float(lr)})
            gr.Info(f"Queued fine-tune job {job.id}")
            return (f"✓ Queued job **{job.id}** ({tmode}, {int(epochs)} epochs, lr {float(lr):g}).",
                    *refresh_jobs(pid, job.id, request))

        @friendly
        def cancel_job(pid, jid, request: gr.Request):
            from workers import dispatch

            user = user_of(store, request)
            if not jid:
                raise gr.Error("Choose a job first.")
            q.training_jobs(store, user, _need_project(pid))  # membership
            dispatch.cancel(store, TrainingJob, int(jid), user)
            return (f"Cancel requested for job {jid}.", *refresh_jobs(pid, jid, request))

        job_outs = [jobs_table, t_job, loss_plot, dice_plot]
        t_queue.click(queue_job, [project, t_mode, t_epochs, t_lr], [t_status, *job_outs])
        t_cancel.click(cancel_job, [project, t_job], [t_status, *job_outs])
        timer.tick(refresh_jobs, [project, t_job], job_outs, show_progress="hidden")
        project.change(refresh_jobs, [project, t_job], job_outs)
        t_job.input(refresh_jobs, [project, t_job], job_outs)

        # -------------------------------------------------------------- Models
        @friendly
        def refresh_models(pid, request: gr.Request):
            user = user_of(store, request)
            return q.versions(store, user, int(pid)) if pid else []

        @friendly
        def activate(pid, vid, force, request: gr.Request):
            user = user_of(store, request)
            pid = _need_project(pid)
            if not vid:
                raise gr.Error("Give the id of the version to activate.")
            training.promote(store, user, pid, int(vid), force=bool(force))
            gr.Info(f"Version {int(vid)} is now active")
            return f"✓ Version **{int(vid)}** is active" + (" (forced past the gate)." if force else "."), \
                refresh_models(pid, request)

        @friendly
        def rollback(pid, request: gr.Request):
            user = user_of(store, request)
            project_row = model_versions.rollback(store, user, _need_project(pid))
            return f"✓ Rolled back: version **{project_row.active_model_version_id}** is active.", \
                refresh_models(pid, request)

        @friendly
        def register_checkpoint(pid, path, family, name, request: gr.Request):
            user = user_of(store, request)
            if not path:
                raise gr.Error("Choose a checkpoint file first.")
            version = model_versions.register_checkpoint(store, user, _need_project(pid), family, path, name or None)
            return f"✓ Registered **{version.name}** as version {version.id}; evaluate or promote it above.", \
                refresh_models(pid, request)

        ck_button.click(register_checkpoint, [project, ck_file, ck_family, ck_name], [m_status, versions_table])
        for trigger in (project.change, m_refresh.click):
            trigger(refresh_models, [project], [versions_table])
        m_activate.click(activate, [project, m_version, m_force], [m_status, versions_table])
        m_rollback.click(rollback, [project], [m_status, versions_table])

    return demo
