"""The Project admin tab: projects, members, uploads, zip import, pre-labelling, precompute, export, deletion.

Each button calls the function the REST API route calls: ``images.add_image``,
``portal.web.transfer.import_zip`` / ``build_export``, ``workers.dispatch``.
Exports are built here and handed to the browser as a download of this
logged-in session, because the API's export URL needs a bearer token a browser
tab does not have.
"""

import os
import shutil
import tempfile
from pathlib import Path

import gradio as gr

from medsam_core.errors import MedsamError
from portal.store.models import Job
from portal.store.services import images, jobs, model_versions, projects
from portal.web.transfer import FORMATS, build_export, import_zip, scratch_dir
from portal.web.ui import queries as q
from portal.web.ui.common import WINDOW_CHOICES, friendly, new_work_dir, sweep, user_of, window_value

EXPORT_TTL_S = 30 * 60
JOB_POLL_S = 2.0
PRELABEL_NOTE = ("Queues one `segment_batch` job with the project's active model for every image that has no "
                 "saved annotation yet. The prompt is the whole image minus the margin below (no per-image box), "
                 "so it suits images where the structure fills most of the frame. The masks become proposals "
                 "in the Annotate tab: nothing is saved as an annotation until someone saves or submits it.")


def need_project(pid) -> int:
    if pid in (None, ""):
        raise gr.Error("Choose a project first.")
    return int(pid)


def prelabel_items(rows, margin_pct: float) -> list[dict]:
    """One whole-image-minus-margin box per image, in original pixels."""
    items = []
    for image in rows:
        mx, my = round(image.width * margin_pct / 100), round(image.height * margin_pct / 100)
        items.append({"image_id": image.id, "boxes": [[mx, my, image.width - 1 - mx, image.height - 1 - my]]})
    return items


def job_text(job: Job) -> str:
    p = job.progress or {}
    done, total = p.get("done"), p.get("total")
    parts = [f"Job **{job.id}** ({job.kind.value}): **{job.state.value}**"]
    if total:
        parts.append(f"{done}/{total} images")
    if p.get("eta_s"):
        parts.append(f"ETA {p['eta_s']:.0f} s")
    if job.error:
        parts.append(f"error: {job.error}")
    elif job.result:
        parts.append(", ".join(f"{k} {v}" for k, v in job.result.items()))
    return " · ".join(parts)


def build_admin_tab(app_state, project) -> None:
    """Components and events of the tab; call inside ``gr.Tab``. ``project`` is the shared project dropdown."""
    store, settings = app_state.store, app_state.settings
    celery_app = app_state.segmentation.celery_app
    with gr.Accordion("New project", open=True):
        with gr.Row():
            p_name = gr.Textbox(label="Name", elem_id="admin-name")
            p_modality = gr.Dropdown(["ct", "mr", "us", "xray", "endoscopy", "pathology", "other"],
                                     value="other", label="Modality", allow_custom_value=True)
            p_labels = gr.Textbox(label="Label classes (comma-separated)", value="lesion", elem_id="admin-labels")
            p_create = gr.Button("Create project", elem_id="admin-create")
    with gr.Row():
        member = gr.Textbox(label="Add member (username)", elem_id="admin-member")
        member_btn = gr.Button("Add member", elem_id="admin-add-member")
    with gr.Row():
        up_files = gr.File(label="Upload images (several files)", file_count="multiple", elem_id="admin-upload")
        up_window = gr.Dropdown(WINDOW_CHOICES, value=WINDOW_CHOICES[0], label="CT window")
        up_btn = gr.Button("Add to project", elem_id="admin-upload-btn")
    with gr.Row():
        zip_file = gr.File(label="Import a zip: images/ + masks/ (masks become submitted annotations)",
                           file_types=[".zip"], elem_id="admin-import")
        zip_btn = gr.Button("Import zip", elem_id="admin-import-btn")
    images_table = gr.Dataframe(headers=["image", "file", "slice", "size"], label="Images", interactive=False,
                                elem_id="admin-images")
    with gr.Accordion("Pre-label with the active model", open=True):
        gr.Markdown(PRELABEL_NOTE)
        with gr.Row():
            margin = gr.Slider(0, 30, value=5, step=1, label="Margin of the box (% of each side)",
                               elem_id="admin-prelabel-margin")
            prelabel_btn = gr.Button("Pre-label with the active model", elem_id="admin-prelabel")
            precompute_btn = gr.Button("Precompute embeddings", elem_id="admin-precompute")
        job_id = gr.State(None)
        job_md = gr.Markdown(elem_id="admin-job")
        job_timer = gr.Timer(JOB_POLL_S)
    with gr.Row():
        ex_format = gr.Dropdown(list(FORMATS), value="npy", label="Export format", elem_id="admin-export-format")
        ex_approved = gr.Checkbox(label="Approved annotations only", elem_id="admin-export-approved")
        ex_btn = gr.Button("Build export zip", elem_id="admin-export")
        ex_download = gr.DownloadButton("Download the zip", visible=False, elem_id="admin-export-download")
    with gr.Row():
        del_image = gr.Number(label="Image id to delete", precision=0)
        del_image_ok = gr.Checkbox(label="Yes, delete it with its masks and annotations")
        del_image_btn = gr.Button("Delete image", variant="stop")
    with gr.Row():
        del_project_name = gr.Textbox(label="Type the project's name to delete it")
        del_project_btn = gr.Button("Delete project", variant="stop")
    admin_status = gr.Markdown(elem_id="admin-status")

    @friendly
    def refresh_admin(pid, request: gr.Request):
        user = user_of(store, request)
        return q.project_images(store, user, int(pid)) if pid else []

    @friendly
    def create(name, modality, labels, request: gr.Request):
        user = user_of(store, request)
        names = [s.strip() for s in (labels or "").split(",") if s.strip()]
        with store.transaction() as session:
            created = projects.create_project(session, user, name or "", modality or "other", names)
            pid, pname = created.id, created.name
        gr.Info(f"Created project {pname}")
        return f"✓ Created project **{pname}** (#{pid}).", gr.update(choices=q.projects_for(store, user), value=pid)

    @friendly
    def add_member(pid, username, request: gr.Request):
        user = user_of(store, request)
        pid = need_project(pid)
        target = q.user_by_name(store, (username or "").strip())
        if target is None:
            raise gr.Error(f"There is no user '{username}'.")
        with store.transaction() as session:
            projects.add_member(session, user, pid, target)
        return f"✓ {target.username} is a member of project #{pid}."

    @friendly
    def upload(pid, files, window_choice, request: gr.Request, progress=gr.Progress()):
        user = user_of(store, request)
        pid = need_project(pid)
        if not files:
            raise gr.Error("Choose one or more files first.")
        lines, good = [], 0
        for path in progress.tqdm(files, desc="Uploading"):
            name = Path(path).name
            try:
                rows = images.add_image(store, user, pid, path, filename=name, window=window_value(window_choice))
                good += 1
                lines.append(f"- ✓ {name}: image {rows[0].id}" + (f" ({len(rows)} slices)" if len(rows) > 1 else ""))
            except MedsamError as exc:
                lines.append(f"- ✗ {name}: {exc}")
        if good < len(files):
            gr.Warning(f"{len(files) - good} of {len(files)} files were refused; see the list")
        return f"{good} of {len(files)} files added:\n" + "\n".join(lines), refresh_admin(pid, request)

    @friendly
    def import_zip_file(pid, path, request: gr.Request):
        user = user_of(store, request)
        pid = need_project(pid)
        if not path:
            raise gr.Error("Choose a zip first.")
        limit = settings.max_upload_mb * 1024 * 1024
        if os.path.getsize(path) > limit:
            raise gr.Error(f"The zip is larger than the upload limit ({settings.max_upload_mb} MB).")
        folder = Path(tempfile.mkdtemp(prefix="import-", dir=scratch_dir(settings)))
        try:
            report = import_zip(store, user, pid, Path(path), folder, Path(path).name)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        skipped = "".join(f"\n- skipped: {s}" for s in report["skipped"])
        gr.Info(f"Imported {report['images']} images")
        return (f"✓ Imported {report['images']} images and {report['annotations']} annotations (submitted, "
                f"waiting for review).{skipped}", refresh_admin(pid, request))

    @friendly
    def prelabel(pid, margin_pct, request: gr.Request):
        from workers import dispatch

        user = user_of(store, request)
        pid = need_project(pid)
        rows = q.unannotated_images(store, user, pid)
        if not rows:
            raise gr.Error("Every image already has an annotation; nothing to pre-label.")
        version = model_versions.active_version(store, pid).id
        job = dispatch.submit_segment_batch(store, user, pid, version, prelabel_items(rows, float(margin_pct)),
                                            celery_app=celery_app)
        return f"✓ Pre-labelling queued: job {job.id}, {len(rows)} images, model version {version}.", job.id

    @friendly
    def precompute(pid, request: gr.Request):
        from workers import dispatch

        user = user_of(store, request)
        pid = need_project(pid)
        job = dispatch.submit_precompute(store, user, pid, model_versions.active_version(store, pid).id,
                                         celery_app=celery_app)
        return f"✓ Embedding precompute queued (job {job.id}).", job.id

    def poll_job(jid, request: gr.Request):
        if jid is None:
            return gr.skip()
        try:
            user = user_of(store, request)
            job = jobs.get_job(store, Job, int(jid), user)  # members of its project only
        except Exception:  # noqa: BLE001 - a timer tick never raises a toast
            return gr.skip()
        return job_text(job)

    @friendly
    def export(pid, fmt, approved_only, request: gr.Request):
        user = user_of(store, request)
        pid = need_project(pid)
        sweep("export", EXPORT_TTL_S)
        path = build_export(store, user, pid, fmt, bool(approved_only), 1024, new_work_dir("export"))
        return (f"✓ Export ready: {path.name} ({path.stat().st_size / 1e6:.2f} MB).",
                gr.DownloadButton(f"Download {path.name}", value=str(path), visible=True))

    @friendly
    def delete_image(pid, image_id, ok, request: gr.Request):
        user = user_of(store, request)
        if not ok:
            raise gr.Error("Tick the confirmation box first.")
        if not image_id:
            raise gr.Error("Give the id of the image to delete.")
        images.delete_image(store, user, int(image_id))
        return f"✓ Deleted image {int(image_id)}.", refresh_admin(pid, request)

    @friendly
    def delete_project(pid, typed, request: gr.Request):
        user = user_of(store, request)
        pid = need_project(pid)
        row = q.project_of(store, pid)
        if row is None or (typed or "").strip() != row.name:
            raise gr.Error("Type the project's exact name to confirm the deletion.")
        with store.transaction() as session:
            projects.delete_project(session, user, pid)
        choices = q.projects_for(store, user)
        return f"✓ Deleted project {row.name}.", gr.update(choices=choices, value=choices[0][1] if choices else None)

    project.change(refresh_admin, [project], [images_table])
    project.change(lambda: gr.DownloadButton(visible=False), None, [ex_download])
    p_create.click(create, [p_name, p_modality, p_labels], [admin_status, project])
    member_btn.click(add_member, [project, member], [admin_status])
    up_btn.click(upload, [project, up_files, up_window], [admin_status, images_table])
    zip_btn.click(import_zip_file, [project, zip_file], [admin_status, images_table])
    prelabel_btn.click(prelabel, [project, margin], [admin_status, job_id])
    precompute_btn.click(precompute, [project], [admin_status, job_id])
    job_timer.tick(poll_job, [job_id], [job_md], show_progress="hidden")
    ex_btn.click(export, [project, ex_format, ex_approved], [admin_status, ex_download])
    del_image_btn.click(delete_image, [project, del_image, del_image_ok], [admin_status, images_table])
    del_project_btn.click(delete_project, [project, del_project_name], [admin_status, project])
