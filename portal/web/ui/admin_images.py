"""The images part of the Project admin tab: upload, zip import, thumbnails, deleting the selected image.

The list is a gallery of thumbnails, so an admin finds the image to delete by
looking at it and clicks it instead of typing an id. Thumbnails are made from
the pixels the annotators see (``images.display_pixels``: the slice, in its
window) and kept in the UI's scratch folder under the row's id and content.
"""

import os
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
from PIL import Image as PILImage

from medsam_core.errors import MedsamError
from portal.store.models import Image
from portal.store.redact import scrub
from portal.store.services import images, worklists
from portal.web.transfer import import_zip, scratch_dir
from portal.web.ui.common import WINDOW_CHOICES, need_project, reported, tmp_dir, window_value
from portal.web.ui.context import PortalContext

THUMB_SIDE = 160
NOTHING_SELECTED = "No image selected: click one above."


def layout(c: SimpleNamespace) -> None:
    with gr.Row():
        c.files = gr.File(label="Upload images (several files)", file_count="multiple", elem_id="admin-upload")
        c.window = gr.Dropdown(WINDOW_CHOICES, value=WINDOW_CHOICES[0], label="CT window")
        c.upload = gr.Button("Add to project", elem_id="admin-upload-btn")
    with gr.Row():
        c.zip = gr.File(
            label="Import a zip: images/ + masks/ (masks become submitted annotations)",
            file_types=[".zip"],
            elem_id="admin-import",
        )
        c.zip_btn = gr.Button("Import zip", elem_id="admin-import-btn")
    c.images = gr.Gallery(
        label="Images (click one to select it)",
        columns=8,
        height=340,
        allow_preview=False,
        object_fit="contain",
        elem_id="admin-images",
    )
    c.image_ids = gr.State([])
    c.selected = gr.State(None)
    with gr.Row():
        c.selected_md = gr.Markdown(NOTHING_SELECTED, elem_id="admin-selected")
        c.del_image_ok = gr.Checkbox(label="Yes, delete it with its masks and annotations", elem_id="admin-delete-ok")
        c.del_image_btn = gr.Button("Delete the selected image", variant="stop", elem_id="admin-delete-image")


def _caption(image: Image) -> str:
    part = f" · slice {image.slice_index + 1}/{image.num_slices}" if image.num_slices > 1 else ""
    return f"#{image.id} {image.filename}{part} · {image.width}x{image.height}"


def thumbnail(ctx: PortalContext, image: Image) -> str | None:
    """A small PNG of what annotators see; None when the stored file cannot be read (the caption still shows)."""
    path = tmp_dir("thumbs") / f"{image.id}_{image.blob_sha[:16]}_{image.window or 'auto'}.png"
    if not path.exists():
        try:
            picture = PILImage.fromarray(images.display_pixels(ctx.blobs, image, ctx.settings))
        except (MedsamError, OSError):
            return None
        picture.thumbnail((THUMB_SIDE, THUMB_SIDE))
        part = path.with_suffix(".part")
        picture.save(part, format="PNG")
        os.replace(part, path)
    return str(path)


def gallery(ctx: PortalContext, user, pid) -> tuple[list, list[int]]:
    """The gallery's value and the image id behind each of its items, in the same order."""
    rows = ctx.read(worklists.project_images, user, int(pid)) if pid else []
    shown = [(i, thumb) for i in rows if (thumb := thumbnail(ctx, i)) is not None]
    return [(thumb, _caption(i)) for i, thumb in shown], [i.id for i, _ in shown]


def _upload_lines(ctx: PortalContext, user, pid: int, files, window_choice, progress) -> tuple[int, list[str]]:
    lines, good = [], 0
    for path in progress.tqdm(files, desc="Uploading"):
        name = Path(path).name
        try:
            added = ctx.run(
                images.add_or_find_image,
                ctx.blobs,
                ctx.settings,
                user,
                pid,
                path,
                filename=name,
                window=window_value(window_choice),
            )
            rows = added.rows
            if not added.new:
                lines.append(
                    f"- = {name}: already in the project as image {rows[0].id} ({rows[0].filename}); nothing was added"
                )
                continue
            good += 1
            lines.append(f"- ✓ {name}: image {rows[0].id}" + (f" ({len(rows)} slices)" if len(rows) > 1 else ""))
        except MedsamError as exc:
            lines.append(f"- ✗ {name}: {scrub(str(exc))}")
    return good, lines


def handlers(ctx: PortalContext) -> SimpleNamespace:
    store, settings = ctx.store, ctx.settings

    def refresh(pid, request: gr.Request):
        try:
            return (*gallery(ctx, ctx.user(request), pid), None, NOTHING_SELECTED)
        except (gr.Error, MedsamError):  # a project change never raises a toast; the other tabs say why
            return [], [], None, NOTHING_SELECTED

    @reported(2)
    def upload(pid, files, window_choice, request: gr.Request, progress=gr.Progress()):  # noqa: B008
        user = ctx.user(request)
        pid = need_project(pid)
        if not files:
            raise gr.Error("Choose one or more files first.")
        good, lines = _upload_lines(ctx, user, pid, files, window_choice, progress)
        refused = sum(line.startswith("- ✗") for line in lines)
        if refused:
            gr.Warning(f"{refused} of {len(files)} files were refused; see the list")
        return f"{good} of {len(files)} files added:\n" + "\n".join(lines), *gallery(ctx, user, pid)

    @reported(2)
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
        lines = "".join(f"\n- skipped: {s}" for s in report["skipped"])
        lines += "".join(f"\n- note: {s}" for s in report.get("notes", []))
        gr.Info(f"Imported {report['images']} images")
        return (
            f"✓ Imported {report['images']} images and {report['annotations']} annotations (submitted, "
            f"waiting for review).{lines}",
            *gallery(ctx, user, pid),
        )

    def pick(ids, evt: gr.SelectData):
        index = evt.index if isinstance(evt.index, int) else evt.index[0]
        if not ids or index >= len(ids):
            return None, NOTHING_SELECTED
        caption = (evt.value or {}).get("caption") if isinstance(evt.value, dict) else None
        return ids[index], f"Selected: **{caption or f'image #{ids[index]}'}**"

    @reported(4)
    def delete_image(pid, image_id, ok, request: gr.Request):
        user = ctx.user(request)
        if image_id is None:
            raise gr.Error("Click the image to delete first.")
        if not ok:
            raise gr.Error("Tick the confirmation box first.")
        ctx.run(images.delete_image, user, int(image_id))
        return (f"✓ Deleted image {int(image_id)}.", *gallery(ctx, user, pid), None, NOTHING_SELECTED)

    return SimpleNamespace(
        refresh=refresh, upload=upload, import_zip_file=import_zip_file, pick=pick, delete_image=delete_image
    )


def wire(ctx: PortalContext, c: SimpleNamespace) -> None:
    """The events of the images part; ``c.status`` is the tab's status line."""
    i = handlers(ctx)
    listing = [c.images, c.image_ids]
    ctx.project.change(i.refresh, [ctx.project], [*listing, c.selected, c.selected_md])
    c.upload.click(i.upload, [ctx.project, c.files, c.window], [c.status, *listing])
    c.zip_btn.click(i.import_zip_file, [ctx.project, c.zip], [c.status, *listing])
    c.images.select(i.pick, [c.image_ids], [c.selected, c.selected_md])
    c.del_image_btn.click(
        i.delete_image, [ctx.project, c.selected, c.del_image_ok], [c.status, *listing, c.selected, c.selected_md]
    )
