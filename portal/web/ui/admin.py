"""The Project admin tab: projects, members, uploads, zip import, pre-labelling, precompute, export, deletion.

Each button calls what the REST API route calls: ``images.add_image``,
``portal.web.transfer.import_zip`` / ``build_export``, and the job queue on the
context for pre-labelling and precompute. Exports are built here and handed to
the browser as a download of this logged-in session, because the API's export
URL needs a bearer token a browser tab does not have.
"""

import os
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from medsam_core.errors import MedsamError
from portal.store.models import Job
from portal.store.redact import scrub
from portal.store.services import images, jobs, projects, worklists
from portal.web.transfer import FORMATS, build_export, import_zip, scratch_dir
from portal.web.ui.common import WINDOW_CHOICES, friendly, need_project, new_work_dir, sweep, window_value
from portal.web.ui.context import PortalContext

EXPORT_TTL_S = 30 * 60
JOB_POLL_S = 2.0
MODALITIES = ["ct", "mr", "us", "xray", "endoscopy", "pathology", "other"]
PRELABEL_NOTE = ("Queues one `segment_batch` job with the project's active model for every image that has no "
                 "saved annotation yet. The prompt is the whole image minus the margin below (no per-image box), "
                 "so it suits images where the structure fills most of the frame. The masks become proposals "
                 "in the Annotate tab: nothing is saved as an annotation until someone saves or submits it.")


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


# ---------------------------------------------------------------------------- layout
def _project_rows(c: SimpleNamespace) -> None:
    with gr.Accordion("New project", open=True):
        with gr.Row():
            c.name = gr.Textbox(label="Name", elem_id="admin-name")
            c.modality = gr.Dropdown(MODALITIES, value="other", label="Modality", allow_custom_value=True)
            c.labels = gr.Textbox(label="Label classes (comma-separated)", value="lesion", elem_id="admin-labels")
            c.create = gr.Button("Create project", elem_id="admin-create")
    with gr.Row():
        c.member = gr.Textbox(label="Add member (username)", elem_id="admin-member")
        c.member_btn = gr.Button("Add member", elem_id="admin-add-member")
    with gr.Row():
        c.files = gr.File(label="Upload images (several files)", file_count="multiple", elem_id="admin-upload")
        c.window = gr.Dropdown(WINDOW_CHOICES, value=WINDOW_CHOICES[0], label="CT window")
        c.upload = gr.Button("Add to project", elem_id="admin-upload-btn")
    with gr.Row():
        c.zip = gr.File(label="Import a zip: images/ + masks/ (masks become submitted annotations)",
                        file_types=[".zip"], elem_id="admin-import")
        c.zip_btn = gr.Button("Import zip", elem_id="admin-import-btn")
    c.images = gr.Dataframe(headers=["image", "file", "slice", "size"], label="Images", interactive=False,
                            elem_id="admin-images")


def _job_rows(c: SimpleNamespace) -> None:
    with gr.Accordion("Pre-label with the active model", open=True):
        gr.Markdown(PRELABEL_NOTE)
        with gr.Row():
            c.margin = gr.Slider(0, 30, value=5, step=1, label="Margin of the box (% of each side)",
                                 elem_id="admin-prelabel-margin")
            c.prelabel = gr.Button("Pre-label with the active model", elem_id="admin-prelabel")
            c.precompute = gr.Button("Precompute embeddings", elem_id="admin-precompute")
        c.job_id = gr.State(None)
        c.job_md = gr.Markdown(elem_id="admin-job")
        c.job_timer = gr.Timer(JOB_POLL_S)


def _export_and_delete_rows(c: SimpleNamespace) -> None:
    with gr.Row():
        c.format = gr.Dropdown(list(FORMATS), value="npy", label="Export format", elem_id="admin-export-format")
        c.approved = gr.Checkbox(label="Approved annotations only", elem_id="admin-export-approved")
        c.export = gr.Button("Build export zip", elem_id="admin-export")
        c.download = gr.DownloadButton("Download the zip", visible=False, elem_id="admin-export-download")
    with gr.Row():
        c.del_image = gr.Number(label="Image id to delete", precision=0)
        c.del_image_ok = gr.Checkbox(label="Yes, delete it with its masks and annotations")
        c.del_image_btn = gr.Button("Delete image", variant="stop")
    with gr.Row():
        c.del_project_name = gr.Textbox(label="Type the project's name to delete it")
        c.del_project_btn = gr.Button("Delete project", variant="stop")


def _layout() -> SimpleNamespace:
    c = SimpleNamespace()
    _project_rows(c)
    _job_rows(c)
    _export_and_delete_rows(c)
    c.status = gr.Markdown(elem_id="admin-status")
    return c


# ---------------------------------------------------------------------------- handlers
def _project_handlers(ctx: PortalContext) -> SimpleNamespace:
    store = ctx.store

    @friendly
    def create(name, modality, labels, request: gr.Request):
        user = ctx.user(request)
        names = [s.strip() for s in (labels or "").split(",") if s.strip()]
        with store.transaction() as session:
            created = projects.create_project(session, user, name or "", modality or "other", names)
            pid, pname = created.id, created.name
        gr.Info(f"Created project {pname}")
        return (f"✓ Created project **{pname}** (#{pid}).",
                gr.update(choices=ctx.read(worklists.project_choices, user), value=pid))

    @friendly
    def add_member(pid, username, request: gr.Request):
        user = ctx.user(request)
        pid = need_project(pid)
        with store.transaction() as session:
            target = worklists.find_user(session, user, (username or "").strip())
            if target is None:
                raise gr.Error(f"There is no user '{username}'.")
            projects.add_member(session, user, pid, target)
            return f"✓ {target.username} is a member of project #{pid}."

    @friendly
    def delete_project(pid, typed, request: gr.Request):
        user = ctx.user(request)
        pid = need_project(pid)
        with store.transaction() as session:
            name = projects.get_project(session, user, pid).name
            if (typed or "").strip() != name:
                raise gr.Error("Type the project's exact name to confirm the deletion.")
            projects.delete_project(session, user, pid)
        choices = ctx.read(worklists.project_choices, user)
        return f"✓ Deleted project {name}.", gr.update(choices=choices, value=choices[0][1] if choices else None)

    return SimpleNamespace(create=create, add_member=add_member, delete_project=delete_project)


def _image_table(ctx: PortalContext, user, pid) -> list[list]:
    rows = ctx.read(worklists.project_images, user, int(pid)) if pid else []
    return [[i.id, i.filename, i.slice_index, f"{i.width}x{i.height}"] for i in rows]


def _upload_lines(ctx: PortalContext, user, pid: int, files, window_choice, progress) -> tuple[int, list[str]]:
    lines, good = [], 0
    for path in progress.tqdm(files, desc="Uploading"):
        name = Path(path).name
        try:
            added = ctx.run(images.add_or_find_image, ctx.blobs, ctx.settings, user, pid, path, filename=name,
                            window=window_value(window_choice))
            rows = added.rows
            if not added.new:
                lines.append(f"- = {name}: already in the project as image {rows[0].id} ({rows[0].filename}); "
                             "nothing was added")
                continue
            good += 1
            lines.append(f"- ✓ {name}: image {rows[0].id}" + (f" ({len(rows)} slices)" if len(rows) > 1 else ""))
        except MedsamError as exc:
            lines.append(f"- ✗ {name}: {scrub(str(exc))}")
    return good, lines


def _image_handlers(ctx: PortalContext) -> SimpleNamespace:
    store, settings = ctx.store, ctx.settings

    @friendly
    def refresh(pid, request: gr.Request):
        return _image_table(ctx, ctx.user(request), pid)

    @friendly
    def upload(pid, files, window_choice, request: gr.Request, progress=gr.Progress()):  # noqa: B008
        user = ctx.user(request)
        pid = need_project(pid)
        if not files:
            raise gr.Error("Choose one or more files first.")
        good, lines = _upload_lines(ctx, user, pid, files, window_choice, progress)
        refused = sum(line.startswith("- ✗") for line in lines)
        if refused:
            gr.Warning(f"{refused} of {len(files)} files were refused; see the list")
        return f"{good} of {len(files)} files added:\n" + "\n".join(lines), _image_table(ctx, user, pid)

    @friendly
    def import_zip_file(pid, path, request: gr.Request):
        user = ctx.user(request)
        pid = need_project(pid)
        if not path:
            raise gr.Error("Choose a zip first.")
        if os.path.getsize(path) > settings.max_upload_mb * 1024 * 1024:
            raise gr.Error(f"The zip is larger than the upload limit ({settings.max_upload_mb} MB).")
        folder = Path(tempfile.mkdtemp(prefix="import-", dir=scratch_dir(settings)))
        try:
            report = import_zip(store, user, pid, Path(path), folder, Path(path).name)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        skipped = "".join(f"\n- skipped: {s}" for s in report["skipped"])
        gr.Info(f"Imported {report['images']} images")
        return (f"✓ Imported {report['images']} images and {report['annotations']} annotations (submitted, "
                f"waiting for review).{skipped}", _image_table(ctx, user, pid))

    @friendly
    def delete_image(pid, image_id, ok, request: gr.Request):
        user = ctx.user(request)
        if not ok:
            raise gr.Error("Tick the confirmation box first.")
        if not image_id:
            raise gr.Error("Give the id of the image to delete.")
        ctx.run(images.delete_image, user, int(image_id))
        return f"✓ Deleted image {int(image_id)}.", _image_table(ctx, user, pid)

    return SimpleNamespace(refresh=refresh, upload=upload, import_zip_file=import_zip_file,
                           delete_image=delete_image)


def _job_and_export_handlers(ctx: PortalContext) -> SimpleNamespace:
    store = ctx.store

    @friendly
    def prelabel(pid, margin_pct, request: gr.Request):
        user = ctx.user(request)
        pid = need_project(pid)
        rows = ctx.read(worklists.unannotated_images, user, pid)
        if not rows:
            raise gr.Error("Every image already has an annotation; nothing to pre-label.")
        job = ctx.queue.submit_segment_batch(store, user, pid, None, prelabel_items(rows, float(margin_pct)))
        version = job.params["model_version_id"]  # None above: the active version, as the job recorded it
        return f"✓ Pre-labelling queued: job {job.id}, {len(rows)} images, model version {version}.", job.id

    @friendly
    def precompute(pid, request: gr.Request):
        user = ctx.user(request)
        job = ctx.queue.submit_precompute(store, user, need_project(pid), None)
        return f"✓ Embedding precompute queued (job {job.id}).", job.id

    def poll(jid, request: gr.Request):
        if jid is None:
            return gr.skip()
        try:
            job = ctx.read(jobs.get_job, int(jid), ctx.user(request))  # members of its project only
        except Exception:  # noqa: BLE001 - a timer tick never raises a toast
            return gr.skip()
        return job_text(job)

    @friendly
    def export(pid, fmt, approved_only, request: gr.Request):
        user = ctx.user(request)
        pid = need_project(pid)
        sweep("export", EXPORT_TTL_S)
        path = build_export(store, user, pid, fmt, bool(approved_only), 1024, new_work_dir("export"))
        return (f"✓ Export ready: {path.name} ({path.stat().st_size / 1e6:.2f} MB).",
                gr.DownloadButton(f"Download {path.name}", value=str(path), visible=True))

    return SimpleNamespace(prelabel=prelabel, precompute=precompute, poll=poll, export=export)


def build_admin_tab(ctx: PortalContext) -> None:
    """Components and events of the tab; call inside ``gr.Tab``."""
    c = _layout()
    project = ctx.project
    p, i, j = _project_handlers(ctx), _image_handlers(ctx), _job_and_export_handlers(ctx)
    project.change(i.refresh, [project], [c.images])
    project.change(lambda: gr.DownloadButton(visible=False), None, [c.download])
    c.create.click(p.create, [c.name, c.modality, c.labels], [c.status, project])
    c.member_btn.click(p.add_member, [project, c.member], [c.status])
    c.upload.click(i.upload, [project, c.files, c.window], [c.status, c.images])
    c.zip_btn.click(i.import_zip_file, [project, c.zip], [c.status, c.images])
    c.prelabel.click(j.prelabel, [project, c.margin], [c.status, c.job_id])
    c.precompute.click(j.precompute, [project], [c.status, c.job_id])
    c.job_timer.tick(j.poll, [c.job_id], [c.job_md], show_progress="hidden")
    c.export.click(j.export, [project, c.format, c.approved], [c.status, c.download])
    c.del_image_btn.click(i.delete_image, [project, c.del_image, c.del_image_ok], [c.status, c.images])
    c.del_project_btn.click(p.delete_project, [project, c.del_project_name], [c.status, project])
