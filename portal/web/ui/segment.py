"""The Segment (demo) tab: upload any supported file, drag boxes, click points, download the mask.

Uploads live in a temporary folder and are deleted after ``demo_ttl_minutes``;
nothing goes into the database or the blob store.
"""

import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
from gradio_image_annotation import image_annotator
from PIL import Image as PILImage

from medsam_core.errors import InvalidImageError, MedsamError, PromptError
from medsam_core.imageio import read_image
from medsam_core.outputs import label_map, mask_png, overlay
from portal.store.services.images import safe_filename
from portal.store.settings import Settings
from portal.web.ui.common import (
    WINDOW_CHOICES,
    demo_ttl_s,
    draw_points,
    friendly,
    new_work_dir,
    overlay_value,
    sweep,
    window_value,
)
from portal.web.ui.engine import DemoEngine

KIND = "demo"
MULTI_SUFFIXES = (".nii.gz",)


def _stem(name: str) -> str:
    for suffix in MULTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem or "image"


def boxes_of(annotated: dict | None, drop_tiny: bool = False) -> list[list[float]]:
    """Boxes in original pixels. ``drop_tiny`` skips the zero-size box the tool reports on mouse-down."""
    if not annotated:
        return []
    if annotated.get("orientation", 0) not in (0, None):
        raise PromptError("the image was rotated in the box tool; rotate it back to draw boxes")
    boxes = [
        [float(b["xmin"]), float(b["ymin"]), float(b["xmax"]), float(b["ymax"])] for b in annotated.get("boxes") or []
    ]
    if drop_tiny:
        boxes = [b for b in boxes if abs(b[2] - b[0]) >= 2 and abs(b[3] - b[1]) >= 2]
    return boxes


def _layout(prefix: str) -> SimpleNamespace:
    c = SimpleNamespace(state=gr.State({}))
    with gr.Row():
        with gr.Column(scale=1):
            c.upload = gr.File(
                label="Image: PNG, JPEG, BMP, TIFF, npy, DICOM or NIfTI", file_count="single", elem_id=f"{prefix}-file"
            )
            with gr.Row():
                c.window = gr.Dropdown(
                    WINDOW_CHOICES, value=WINDOW_CHOICES[0], label="CT window (raw images)", elem_id=f"{prefix}-window"
                )
                c.slice_no = gr.Number(
                    label="Slice of a volume (-1: the middle one)", precision=0, value=-1, elem_id=f"{prefix}-slice"
                )
            c.info = gr.Markdown(elem_id=f"{prefix}-info")
            c.annot = image_annotator(
                label="Drag one or more boxes",
                image_type="numpy",
                disable_edit_boxes=True,
                sources=[],
                show_clear_button=False,
                elem_id=f"{prefix}-annotator",
                label_list=["object"],
                label_colors=[(255, 200, 0)],
                boxes_alpha=0.0,  # outlined: a filled box hides the object it is drawn around
            )
            with gr.Row():
                c.point_kind = gr.Radio(
                    ["include", "exclude"], value="include", label="Click adds an", elem_id=f"{prefix}-point-kind"
                )
                c.clear_boxes = gr.Button("Clear boxes", size="sm")
                c.clear_points = gr.Button("Clear points", size="sm")
            c.points_view = gr.Image(
                label="Click to add include/exclude points",
                interactive=False,
                format="png",
                elem_id=f"{prefix}-points",
                buttons=[],
            )
            c.run = gr.Button("Segment", variant="primary", elem_id=f"{prefix}-run")
        with gr.Column(scale=1):
            c.result = gr.AnnotatedImage(label="Mask overlay", format="png", elem_id=f"{prefix}-overlay")
            c.summary = gr.Markdown(elem_id=f"{prefix}-summary")
            with gr.Row():
                c.dl_npy = gr.DownloadButton("Mask .npy", visible=False, elem_id=f"{prefix}-dl-npy")
                c.dl_png = gr.DownloadButton("Mask .png", visible=False, elem_id=f"{prefix}-dl-png")
                c.dl_overlay = gr.DownloadButton("Overlay .png", visible=False, elem_id=f"{prefix}-dl-overlay")
    return c


def _hidden() -> tuple:
    return (gr.update(visible=False, value=None),) * 3


def _describe(medical, name: str, index: int | None, window_choice) -> str:
    slices = (
        f", {medical.num_slices} slices (showing {medical.num_slices // 2 if index is None else index})"
        if medical.num_slices > 1
        else ""
    )
    window = "" if medical.raw or not window_value(window_choice) else "; 8-bit image, the window does not apply"
    return f"**{name}**: {medical.width}x{medical.height}, {medical.source_format}{slices}{window}"


def _loader(max_pixels: int, ttl_s: float) -> Callable[..., tuple]:
    """The upload handler: reads the file into a work folder of its own; a refused file is not kept."""

    @friendly
    def load(file, window_choice, slice_index):
        sweep(KIND, ttl_s)
        if file is None:
            return ({}, None, None, "", None, "", *_hidden())
        src = Path(file)
        work = new_work_dir(KIND)
        name = safe_filename(getattr(file, "orig_name", None) or src.name)
        kept = work / name
        shutil.copyfile(src, kept)
        try:
            medical = read_image(kept, max_pixels=max_pixels)
            index = None if slice_index in (None, "") or int(slice_index) < 0 else int(slice_index)
            rgb = medical.display(
                slice_index=index if medical.num_slices > 1 else None, window=window_value(window_choice)
            )
        except MedsamError as exc:
            shutil.rmtree(work, ignore_errors=True)  # a rejected file is not kept
            raise InvalidImageError(str(exc).replace(str(kept), name)) from None  # its name, not our folder
        except Exception:
            shutil.rmtree(work, ignore_errors=True)
            raise
        note = _describe(medical, name, index, window_choice)
        new_state = {"rgb": rgb, "dir": str(work), "stem": _stem(name), "points": []}
        return (new_state, {"image": rgb, "boxes": []}, rgb, note, None, "", *_hidden())

    return load


def _segmenter(engine: DemoEngine) -> Callable[..., tuple | None]:
    """Segment the state's image with its boxes and points; write the three downloads next to the upload."""

    def run(st, annotated, required: bool):
        if not st or "rgb" not in st:
            if required:
                raise gr.Error("Upload an image first.")
            return None
        boxes = boxes_of(annotated, drop_tiny=not required)
        points = st.get("points") or []
        if not boxes and not points:
            if required:
                raise PromptError("drag a box on the image (or click points) first")
            return None
        out = engine.segment(st["rgb"], boxes=boxes or None, points=points or None)
        labels = label_map(out["masks"])
        work, stem = Path(st["dir"]), st["stem"]
        npy, png, ovl = work / f"{stem}_mask.npy", work / f"{stem}_mask.png", work / f"{stem}_overlay.png"
        np.save(npy, labels, allow_pickle=False)
        mask_png(labels, len(out["masks"])).save(png)
        PILImage.fromarray(overlay(st["rgb"], labels)).save(ovl)
        ious = ", ".join(f"{v:.3f}" for v in out["iou"])
        text = (
            f"Predicted IoU **{ious}** · area {int((labels > 0).sum())} px · "
            f"encode {out['encode_ms']:.0f} ms{' (cached)' if out['cache_hit'] else ''} · "
            f"decode {out['decode_ms']:.0f} ms"
        )
        layers = [(labels == k, f"object {k}") for k in range(1, len(out["masks"]) + 1)]
        return (
            overlay_value(st["rgb"], layers),
            text,
            gr.update(value=str(npy), visible=True),
            gr.update(value=str(png), visible=True),
            gr.update(value=str(ovl), visible=True),
        )

    return run


def _prompt_handlers(engine: DemoEngine) -> SimpleNamespace:
    run = _segmenter(engine)

    @friendly
    def segment_click(st, annotated):
        return run(st, annotated, True)

    @friendly
    def segment_auto(st, annotated):
        out = run(st, annotated, False)
        return out if out is not None else (gr.update(), gr.update(), gr.update(), gr.update(), gr.update())

    @friendly
    def add_point(st, annotated, kind, evt: gr.SelectData):
        if not st or "rgb" not in st:
            raise gr.Error("Upload an image first.")
        x, y = evt.index[0], evt.index[1]
        st = {**st, "points": [*st.get("points", []), [float(x), float(y), 1 if kind == "include" else 0]]}
        return (st, draw_points(st["rgb"], st["points"]), *segment_auto(st, annotated))

    def clear_points(st):
        if not st or "rgb" not in st:
            return st, None
        st = {**st, "points": []}
        return st, st["rgb"]

    def clear_boxes(st):
        return {"image": st["rgb"], "boxes": []} if st and "rgb" in st else None

    return SimpleNamespace(
        segment_click=segment_click,
        segment_auto=segment_auto,
        add_point=add_point,
        clear_points=clear_points,
        clear_boxes=clear_boxes,
    )


def build_segment_tab(engine: DemoEngine, settings: Settings, prefix: str = "seg") -> None:
    """The demo's components and events; ``settings`` gives the pixel limit and the uploads' time-to-live."""
    c = _layout(prefix)
    load = _loader(settings.max_image_pixels, demo_ttl_s(settings))
    h = _prompt_handlers(engine)
    outs = [c.result, c.summary, c.dl_npy, c.dl_png, c.dl_overlay]
    load_outs = [c.state, c.annot, c.points_view, c.info, *outs]
    load_ins = [c.upload, c.window, c.slice_no]
    c.upload.upload(load, load_ins, load_outs)
    c.upload.clear(load, load_ins, load_outs)
    c.window.input(load, load_ins, load_outs)
    c.slice_no.submit(load, load_ins, load_outs)
    c.annot.change(h.segment_auto, [c.state, c.annot], outs, trigger_mode="always_last")
    c.run.click(h.segment_click, [c.state, c.annot], outs)
    c.points_view.select(h.add_point, [c.state, c.annot, c.point_kind], [c.state, c.points_view, *outs])
    c.clear_points.click(h.clear_points, [c.state], [c.state, c.points_view])
    c.clear_boxes.click(h.clear_boxes, [c.state], [c.annot])
