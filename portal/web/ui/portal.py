"""The logged-in portal: Segment (demo), Annotate, Review, Train, Models and Project admin tabs.

Every write goes through ``portal.store.services`` or ``workers.dispatch``, the
same calls the REST API makes. Errors from them arrive as gr.Error messages,
and nothing is written when a request is refused.
"""

import gradio as gr
import numpy as np
import pandas as pd
from gradio_image_annotation import image_annotator

from portal.store.errors import ConflictError
from portal.store.models import TrainingJob
from portal.store.services import annotations, images, model_versions, projects, training
from portal.store.services.images import display_pixels
from portal.store.services.masks import load_mask
from portal.web.ui import queries as q
from portal.web.ui.common import (
    EDITOR_MAX_SIDE,
    WINDOW_CHOICES,
    corrected_mask,
    editor_value,
    friendly,
    overlay_value,
    user_of,
    window_value,
)
from portal.web.ui.segment import boxes_of, build_segment_tab

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

QUEUE_MODES = [("Unlabelled first", "unlabelled"), ("Needs my fix (rejected)", "fix")]
HISTORY_HEADERS = ["revision", "author", "time (UTC)", "model version", "prompt", "comment"]
JOB_HEADERS = ["job", "state", "mode", "epoch", "loss", "val Dice", "ETA s", "result / error"]
VERSION_HEADERS = ["active", "version", "name", "family", "parent", "job", "val Dice before", "val Dice after",
                   "created"]
COUNT_HEADERS = ["project", "images", "unlabelled", "draft", "submitted", "approved", "rejected"]


def _need_project(pid):
    if pid in (None, ""):
        raise gr.Error("Choose a project first.")
    return int(pid)


def build_portal(app_state, engine) -> gr.Blocks:
    store = app_state.store
    settings = app_state.settings

    def seg_service():
        service = getattr(app_state, "segmentation", None)
        if service is None:
            from portal.web.ui.engine import FallbackSegmentation

            service = FallbackSegmentation(store, engine)
        return service

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
                ann = gr.State({})
                with gr.Row():
                    label = gr.Dropdown(label="Label class", choices=[], elem_id="ann-label")
                    mode = gr.Radio(QUEUE_MODES, value="unlabelled", label="Queue", elem_id="ann-mode")
                    pick = gr.Dropdown(label="Image", choices=[], elem_id="ann-image", scale=2)
                with gr.Row():
                    prev_btn = gr.Button("◀ Previous (Alt+P)", size="sm", elem_id="ann-prev")
                    next_btn = gr.Button("Next (Alt+N) ▶", size="sm", elem_id="ann-next")
                    reload_btn = gr.Button("Reload", size="sm", elem_id="ann-reload")
                with gr.Row():
                    with gr.Column():
                        a_boxes = image_annotator(label="1. Drag a box", image_type="numpy", disable_edit_boxes=True,
                                                  sources=[], show_clear_button=False, elem_id="ann-annotator",
                                                  label_list=["object"], label_colors=[(255, 200, 0)])
                        propose_btn = gr.Button("Propose mask", elem_id="ann-propose")
                    with gr.Column():
                        editor = gr.ImageEditor(
                            label="2. Correct with the brush / eraser (undo in the toolbar)", type="numpy",
                            image_mode="RGBA", format="png", layers=False, transforms=(), sources=(),
                            brush=gr.Brush(colors=["#ff2828"], default_color="#ff2828", color_mode="fixed",
                                           default_size=12),
                            eraser=gr.Eraser(default_size=12), elem_id="ann-editor", height=560,
                            canvas_size=(EDITOR_MAX_SIDE, EDITOR_MAX_SIDE), fixed_canvas=True)
                ann_status = gr.Markdown(elem_id="ann-status")
                with gr.Row():
                    save_btn = gr.Button("Save draft (Alt+S)", elem_id="ann-save")
                    submit_btn = gr.Button("Submit for review (Alt+Enter)", variant="primary", elem_id="ann-submit")
                with gr.Group(visible=False, elem_id="ann-conflict") as conflict_box:
                    conflict_md = gr.Markdown(elem_id="ann-conflict-message")
                    with gr.Row():
                        mine_view = gr.AnnotatedImage(label="Your unsaved mask", format="png")
                        theirs_view = gr.AnnotatedImage(label="The newer saved revision", format="png")
                    take_newer = gr.Button("Load the newer revision (your edit is discarded)",
                                           elem_id="ann-load-newer")
                history = gr.Dataframe(headers=HISTORY_HEADERS, label="Revision history", interactive=False,
                                       elem_id="ann-history")

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

            # ---------------------------------------------------------------- Project admin
            with gr.Tab("Project admin", id="admin"):
                with gr.Accordion("New project", open=True):
                    with gr.Row():
                        p_name = gr.Textbox(label="Name", elem_id="admin-name")
                        p_modality = gr.Dropdown(["ct", "mr", "us", "xray", "endoscopy", "pathology", "other"],
                                                 value="other", label="Modality", allow_custom_value=True)
                        p_labels = gr.Textbox(label="Label classes (comma-separated)", value="lesion",
                                              elem_id="admin-labels")
                        p_create = gr.Button("Create project", elem_id="admin-create")
                with gr.Row():
                    member = gr.Textbox(label="Add member (username)", elem_id="admin-member")
                    member_btn = gr.Button("Add member", elem_id="admin-add-member")
                with gr.Row():
                    up_files = gr.File(label="Upload images (several files)", file_count="multiple",
                                       elem_id="admin-upload")
                    up_window = gr.Dropdown(WINDOW_CHOICES, value=WINDOW_CHOICES[0], label="CT window")
                    up_btn = gr.Button("Add to project", elem_id="admin-upload-btn")
                images_table = gr.Dataframe(headers=["image", "file", "slice", "size"], label="Images",
                                            interactive=False, elem_id="admin-images")
                with gr.Row():
                    del_image = gr.Number(label="Image id to delete", precision=0)
                    del_image_ok = gr.Checkbox(label="Yes, delete it with its masks and annotations")
                    del_image_btn = gr.Button("Delete image", variant="stop")
                with gr.Row():
                    del_project_name = gr.Textbox(label="Type the project's name to delete it")
                    del_project_btn = gr.Button("Delete project", variant="stop")
                with gr.Row():
                    precompute_btn = gr.Button("Precompute embeddings", elem_id="admin-precompute")
                    export_md = gr.Markdown()
                admin_status = gr.Markdown(elem_id="admin-status")

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

        # -------------------------------------------------------------- Annotate
        def queue_choices(user, pid, lbl, qmode):
            rows = q.image_queue(store, user, pid, lbl, qmode) if pid and lbl else []
            return [(f"#{r['image_id']} {r['filename']}" + (f" [slice {r['slice']}]" if r["slice"] else "")
                     + f" · {r['status']}" + (f" r{r['revision']}" if r["revision"] else ""), r["image_id"])
                    for r in rows]

        @friendly
        def on_project(pid, request: gr.Request):
            user = user_of(store, request)
            if not pid:
                return gr.update(choices=[], value=None)
            labels = q.project_labels(store, user, int(pid))
            return gr.update(choices=labels, value=labels[0] if labels else None)

        @friendly
        def on_queue(pid, lbl, qmode, current, request: gr.Request):
            user = user_of(store, request)
            choices = queue_choices(user, pid, lbl, qmode)
            ids = [v for _, v in choices]
            return gr.update(choices=choices, value=current if current in ids else (ids[0] if ids else None))

        def _load(user, pid, lbl, image_id):
            image = images.get_image(store, user, int(image_id))
            rgb = display_pixels(store, image)
            found = q.annotation_for(store, image.id, lbl)
            mask, base, status = None, 0, "unlabelled"
            if found is not None and found.current_revision > 0:
                latest = q.latest_revision(store, found.id)
                mask, base, status = load_mask(store, latest.blob_sha), found.current_revision, found.status.value
            st = {"image_id": image.id, "label": lbl, "rgb": rgb, "base_revision": base,
                  "annotation_id": found.id if found else None, "mask": mask, "mask_id": None,
                  "model_version_id": None, "prompt": None}
            rows = q.revision_rows(store, found.id) if found else []
            text = (f"Image #{image.id} **{image.filename}** ({image.width}x{image.height}) · label **{lbl}** · "
                    f"{status}" + (f", revision {base}" if base else ""))
            return st, {"image": rgb, "boxes": []}, editor_value(rgb, mask), text, rows

        @friendly
        def load_image(pid, lbl, image_id, request: gr.Request):
            user = user_of(store, request)
            if not image_id or not lbl:
                return {}, None, None, "Choose an image.", [], gr.update(visible=False)
            return (*_load(user, pid, lbl, image_id), gr.update(visible=False))

        @friendly
        def move(pid, lbl, qmode, current, delta, request: gr.Request):
            user = user_of(store, request)
            ids = [v for _, v in queue_choices(user, pid, lbl, qmode)]
            if not ids:
                raise gr.Error("The queue is empty.")
            index = ids.index(current) + delta if current in ids else 0
            return gr.update(value=ids[max(0, min(len(ids) - 1, index))])

        @friendly
        def propose(st, annotated, request: gr.Request, drop_tiny: bool = False):
            user = user_of(store, request)
            if not st or "image_id" not in st:
                raise gr.Error("Choose an image first.")
            boxes = boxes_of(annotated, drop_tiny=drop_tiny)
            if not boxes:
                raise gr.Error("Drag a box around the object first.")
            out = seg_service().segment(user, st["image_id"], boxes=boxes)
            row = q.mask_row(store, out["mask_id"])
            mask = load_mask(store, row.blob_sha)
            st = {**st, "mask": mask, "mask_id": out["mask_id"], "model_version_id": out["model_version_id"],
                  "prompt": {"boxes": boxes}}
            text = (f"Proposed mask: predicted IoU **{out['predicted_iou']:.3f}**, area {out['area']} px, model "
                    f"version {out['model_version_id']}, {out['timing_ms'].get('total', 0):.0f} ms. Correct it, "
                    "then save or submit (base revision " f"{st['base_revision']}).")
            return st, editor_value(st["rgb"], mask), text

        @friendly
        def auto_propose(st, annotated, request: gr.Request):
            if not st or "image_id" not in st or not boxes_of(annotated, drop_tiny=True):
                return gr.update(), gr.update(), gr.update()
            return propose(st, annotated, request, drop_tiny=True)

        def save(st, edited, submit, request: gr.Request):
            user = user_of(store, request)
            if not st or "image_id" not in st:
                raise gr.Error("Choose an image first.")
            h, w = st["rgb"].shape[:2]
            base_mask = st["mask"] if st.get("mask") is not None else np.zeros((h, w), np.uint8)
            mask = corrected_mask(edited, base_mask).astype(np.uint8)
            try:
                rev = annotations.save_revision(
                    store, user, st["image_id"], st["label"], mask, st["base_revision"], base_mask_id=st["mask_id"],
                    model_version_id=st["model_version_id"], prompt=st["prompt"], submit=submit)
            except ConflictError as exc:
                gr.Warning(str(exc))
                theirs = None
                found = q.annotation_for(store, st["image_id"], st["label"])
                if found is not None:
                    latest = q.latest_revision(store, found.id)
                    theirs = load_mask(store, latest.blob_sha) if latest else None
                message = (f"**Not saved: conflict.** {exc}" +
                           (f" (revision {exc.current_revision} by {exc.author})" if exc.current_revision else ""))
                return (st, f"⚠ {message}", gr.update(), gr.update(visible=True), message,
                        overlay_value(st["rgb"], [(mask, "yours")]),
                        overlay_value(st["rgb"], [(theirs if theirs is not None else np.zeros_like(mask),
                                                   f"revision {exc.current_revision}")]))
            st = {**st, "base_revision": rev.number, "mask": mask, "annotation_id": rev.annotation_id}
            what = "Submitted for review" if submit else "Draft saved"
            gr.Info(f"{what}: revision {rev.number}")
            return (st, f"✓ {what}: revision **{rev.number}** of '{st['label']}' on image #{st['image_id']}.",
                    q.revision_rows(store, rev.annotation_id), gr.update(visible=False), "", None, None)

        save_outs = [ann, ann_status, history, conflict_box, conflict_md, mine_view, theirs_view]
        project.change(on_project, [project], [label])
        for trigger in (label.change, mode.change):
            trigger(on_queue, [project, label, mode, pick], [pick])
        project.change(on_queue, [project, label, mode, pick], [pick])
        load_outs = [ann, a_boxes, editor, ann_status, history, conflict_box]
        pick.change(load_image, [project, label, pick], load_outs)
        reload_btn.click(load_image, [project, label, pick], load_outs)
        take_newer.click(load_image, [project, label, pick], load_outs)
        delta_prev, delta_next = gr.State(-1), gr.State(1)
        prev_btn.click(move, [project, label, mode, pick, delta_prev], [pick])
        next_btn.click(move, [project, label, mode, pick, delta_next], [pick])
        propose_btn.click(propose, [ann, a_boxes], [ann, editor, ann_status])
        a_boxes.change(auto_propose, [ann, a_boxes], [ann, editor, ann_status], trigger_mode="always_last")
        @friendly
        def save_draft(st, edited, request: gr.Request):
            return save(st, edited, False, request)

        @friendly
        def save_submit(st, edited, request: gr.Request):
            return save(st, edited, True, request)

        save_btn.click(save_draft, [ann, editor], save_outs)
        submit_btn.click(save_submit, [ann, editor], save_outs)

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

        for trigger in (project.change, m_refresh.click):
            trigger(refresh_models, [project], [versions_table])
        m_activate.click(activate, [project, m_version, m_force], [m_status, versions_table])
        m_rollback.click(rollback, [project], [m_status, versions_table])

        # -------------------------------------------------------------- Project admin
        @friendly
        def refresh_admin(pid, request: gr.Request):
            user = user_of(store, request)
            if not pid:
                return [], ""
            links = " · ".join(f"[{fmt}](/api/v1/projects/{int(pid)}/export?format={fmt})"
                               for fmt in ("npy", "png", "seed"))
            return q.project_images(store, user, int(pid)), f"Export (REST API, a zip): {links}"

        @friendly
        def create(name, modality, labels, request: gr.Request):
            user = user_of(store, request)
            names = [s.strip() for s in (labels or "").split(",") if s.strip()]
            with store.transaction() as session:
                created = projects.create_project(session, user, name or "", modality or "other", names)
                pid, pname = created.id, created.name
            gr.Info(f"Created project {pname}")
            return (f"✓ Created project **{pname}** (#{pid}).",
                    gr.update(choices=q.projects_for(store, user), value=pid))

        @friendly
        def add_member(pid, username, request: gr.Request):
            user = user_of(store, request)
            pid = _need_project(pid)
            target = q.user_by_name(store, (username or "").strip())
            if target is None:
                raise gr.Error(f"There is no user '{username}'.")
            with store.transaction() as session:
                projects.add_member(session, user, pid, target)
            return f"✓ {target.username} is a member of project #{pid}."

        @friendly
        def upload(pid, files, window_choice, request: gr.Request, progress=gr.Progress()):
            user = user_of(store, request)
            pid = _need_project(pid)
            if not files:
                raise gr.Error("Choose one or more files first.")
            from pathlib import Path

            from medsam_core.errors import MedsamError

            lines, good = [], 0
            for path in progress.tqdm(files, desc="Uploading"):
                name = Path(path).name
                try:
                    rows = images.add_image(store, user, pid, path, filename=name,
                                            window=window_value(window_choice))
                    good += 1
                    lines.append(f"- ✓ {name}: image {rows[0].id}" + (f" ({len(rows)} slices)" if len(rows) > 1
                                                                       else ""))
                except MedsamError as exc:
                    lines.append(f"- ✗ {name}: {exc}")
            if good < len(files):
                gr.Warning(f"{len(files) - good} of {len(files)} files were refused; see the list")
            return f"{good} of {len(files)} files added:\n" + "\n".join(lines), *refresh_admin(pid, request)

        @friendly
        def delete_image(pid, image_id, ok, request: gr.Request):
            user = user_of(store, request)
            if not ok:
                raise gr.Error("Tick the confirmation box first.")
            if not image_id:
                raise gr.Error("Give the id of the image to delete.")
            images.delete_image(store, user, int(image_id))
            return f"✓ Deleted image {int(image_id)}.", *refresh_admin(pid, request)

        @friendly
        def delete_project(pid, typed, request: gr.Request):
            user = user_of(store, request)
            pid = _need_project(pid)
            row = q.project_of(store, pid)
            if row is None or (typed or "").strip() != row.name:
                raise gr.Error("Type the project's exact name to confirm the deletion.")
            with store.transaction() as session:
                projects.delete_project(session, user, pid)
            choices = q.projects_for(store, user)
            return (f"✓ Deleted project {row.name}.",
                    gr.update(choices=choices, value=choices[0][1] if choices else None))

        @friendly
        def precompute(pid, request: gr.Request):
            from workers import dispatch

            user = user_of(store, request)
            pid = _need_project(pid)
            job = dispatch.submit_precompute(store, user, pid, model_versions.active_version(store, pid).id)
            return f"✓ Embedding precompute queued (job {job.id})."

        for trigger in (project.change,):
            trigger(refresh_admin, [project], [images_table, export_md])
        p_create.click(create, [p_name, p_modality, p_labels], [admin_status, project])
        member_btn.click(add_member, [project, member], [admin_status])
        up_btn.click(upload, [project, up_files, up_window], [admin_status, images_table, export_md])
        del_image_btn.click(delete_image, [project, del_image, del_image_ok], [admin_status, images_table, export_md])
        del_project_btn.click(delete_project, [project, del_project_name], [admin_status, project])
        precompute_btn.click(precompute, [project], [admin_status])
    return demo
