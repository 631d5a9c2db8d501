"""The Project admin tab: projects, members and accounts, images, pre-labelling, precompute, export, deletion.

Each button calls what the REST API route calls: ``images.add_image``,
``portal.web.transfer.import_zip`` / ``build_export``, and the job queue on the
context for pre-labelling and precompute. Exports are built here and handed to
the browser as a download of this logged-in session, because the API's export
URL needs a bearer token a browser tab does not have. A refused action tells
why in the status line (``reported``) and leaves the lists and the project
dropdown as they were. The images part is ``admin_images``, the members and
accounts part ``people``.
"""

from types import SimpleNamespace

import gradio as gr

from portal.store.models import Job
from portal.store.services import jobs, projects, worklists
from portal.web.transfer import FORMATS, build_export
from portal.web.ui import admin_images, people
from portal.web.ui.common import need_project, new_work_dir, reported, sweep
from portal.web.ui.context import PortalContext

EXPORT_TTL_S = 30 * 60
JOB_POLL_S = 2.0
MODALITIES = ["ct", "mr", "us", "xray", "endoscopy", "pathology", "other"]
PRELABEL_NOTE = (
    "Queues one `segment_batch` job with the project's active model for every image that has no "
    "saved annotation yet. The prompt is the whole image minus the margin below (no per-image box), "
    "so it suits images where the structure fills most of the frame. The masks become proposals "
    "in the Annotate tab: nothing is saved as an annotation until someone saves or submits it."
)


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
    c.status = gr.Markdown(elem_id="admin-status")
    people.layout(c)
    admin_images.layout(c)


def _job_rows(c: SimpleNamespace) -> None:
    with gr.Accordion("Pre-label with the active model", open=True):
        gr.Markdown(PRELABEL_NOTE)
        with gr.Row():
            c.margin = gr.Slider(
                0, 30, value=5, step=1, label="Margin of the box (% of each side)", elem_id="admin-prelabel-margin"
            )
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
        c.del_project_name = gr.Textbox(label="Type the project's name to delete it")
        c.del_project_btn = gr.Button("Delete project", variant="stop")


def _layout() -> SimpleNamespace:
    c = SimpleNamespace()
    _project_rows(c)
    _job_rows(c)
    _export_and_delete_rows(c)
    return c


# ---------------------------------------------------------------------------- handlers
def _project_handlers(ctx: PortalContext) -> SimpleNamespace:
    store = ctx.store

    @reported(2)
    def create(name, modality, labels, request: gr.Request):
        """The dropdown gets its new choices here and its value in a second event (``select``): sent
        together, the new id was refused as "not in the list of choices" by the tabs' change events."""
        user = ctx.user(request)
        names = [s.strip() for s in (labels or "").split(",") if s.strip()]
        with store.transaction() as session:
            created = projects.create_project(session, user, name or "", modality or "other", names)
            pid, pname = created.id, created.name
        gr.Info(f"Created project {pname}")
        return (
            f"✓ Created project **{pname}** (#{pid}).",
            gr.update(choices=ctx.read(worklists.project_choices, user)),
            pid,
        )

    def select(pid):
        return gr.skip() if pid is None else pid

    @reported(1)
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

    return SimpleNamespace(create=create, select=select, delete_project=delete_project)


def _job_and_export_handlers(ctx: PortalContext) -> SimpleNamespace:
    store = ctx.store

    @reported(1)
    def prelabel(pid, margin_pct, request: gr.Request):
        user = ctx.user(request)
        pid = need_project(pid)
        rows = ctx.read(worklists.unannotated_images, user, pid)
        if not rows:
            raise gr.Error("Every image already has an annotation; nothing to pre-label.")
        job = ctx.queue.submit_segment_batch(store, user, pid, None, prelabel_items(rows, float(margin_pct)))
        version = job.params["model_version_id"]  # None above: the active version, as the job recorded it
        return f"✓ Pre-labelling queued: job {job.id}, {len(rows)} images, model version {version}.", job.id

    @reported(1)
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

    @reported(1)
    def export(pid, fmt, approved_only, request: gr.Request):
        user = ctx.user(request)
        pid = need_project(pid)
        sweep("export", EXPORT_TTL_S)
        path = build_export(store, user, pid, fmt, bool(approved_only), 1024, new_work_dir("export"))
        return (
            f"✓ Export ready: {path.name} ({path.stat().st_size / 1e6:.2f} MB).",
            gr.DownloadButton(f"Download {path.name}", value=str(path), visible=True),
        )

    return SimpleNamespace(prelabel=prelabel, precompute=precompute, poll=poll, export=export)


def build_admin_tab(ctx: PortalContext) -> None:
    """Components and events of the tab; call inside ``gr.Tab``."""
    c = _layout()
    project = ctx.project
    p, j = _project_handlers(ctx), _job_and_export_handlers(ctx)
    created = gr.State(None)
    project.change(lambda: gr.DownloadButton(visible=False), None, [c.download])
    c.create.click(p.create, [c.name, c.modality, c.labels], [c.status, project, created]).then(
        p.select, [created], [project]
    )
    people.wire(ctx, c)
    admin_images.wire(ctx, c)
    c.prelabel.click(j.prelabel, [project, c.margin], [c.status, c.job_id])
    c.precompute.click(j.precompute, [project], [c.status, c.job_id])
    c.job_timer.tick(j.poll, [c.job_id], [c.job_md], show_progress="hidden")
    c.export.click(j.export, [project, c.format, c.approved], [c.status, c.download])
    c.del_project_btn.click(p.delete_project, [project, c.del_project_name], [c.status, project])
