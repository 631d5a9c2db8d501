"""The Segment (demo) tab: upload any supported file, drag boxes, click points, download the mask.

Uploads live in a temporary folder and are deleted after an hour; nothing
goes into the database or the blob store.
"""

import shutil
from pathlib import Path

import gradio as gr
import numpy as np
from gradio_image_annotation import image_annotator
from PIL import Image as PILImage

from medsam_core.errors import PromptError
from medsam_core.imageio import read_image
from medsam_core.outputs import label_map, mask_png, overlay
from portal.web.ui.common import (
    WINDOW_CHOICES,
    draw_points,
    friendly,
    new_work_dir,
    overlay_value,
    sweep,
    window_value,
)

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
    boxes = [[float(b["xmin"]), float(b["ymin"]), float(b["xmax"]), float(b["ymax"])]
             for b in annotated.get("boxes") or []]
    if drop_tiny:
        boxes = [b for b in boxes if abs(b[2] - b[0]) >= 2 and abs(b[3] - b[1]) >= 2]
    return boxes


def build_segment_tab(engine, max_pixels: int, prefix: str = "seg") -> None:
    state = gr.State({})
    with gr.Row():
        with gr.Column(scale=1):
            upload = gr.File(label="Image: PNG, JPEG, BMP, TIFF, npy, DICOM or NIfTI", file_count="single",
                             elem_id=f"{prefix}-file")
            with gr.Row():
                window = gr.Dropdown(WINDOW_CHOICES, value=WINDOW_CHOICES[0], label="CT window (raw images)",
                                     elem_id=f"{prefix}-window")
                slice_no = gr.Number(label="Slice of a volume (-1: the middle one)", precision=0, value=-1,
                                     elem_id=f"{prefix}-slice")
            info = gr.Markdown(elem_id=f"{prefix}-info")
            annot = image_annotator(label="Drag one or more boxes", image_type="numpy", disable_edit_boxes=True,
                                    sources=[], show_clear_button=False, elem_id=f"{prefix}-annotator",
                                    label_list=["object"], label_colors=[(255, 200, 0)])
            with gr.Row():
                point_kind = gr.Radio(["include", "exclude"], value="include", label="Click adds an",
                                      elem_id=f"{prefix}-point-kind")
                clear_boxes = gr.Button("Clear boxes", size="sm")
                clear_points = gr.Button("Clear points", size="sm")
            points_view = gr.Image(label="Click to add include/exclude points", interactive=False, format="png",
                                   elem_id=f"{prefix}-points", buttons=[])
            run_btn = gr.Button("Segment", variant="primary", elem_id=f"{prefix}-run")
        with gr.Column(scale=1):
            result = gr.AnnotatedImage(label="Mask overlay", format="png", elem_id=f"{prefix}-overlay")
            summary = gr.Markdown(elem_id=f"{prefix}-summary")
            with gr.Row():
                dl_npy = gr.DownloadButton("Mask .npy", visible=False, elem_id=f"{prefix}-dl-npy")
                dl_png = gr.DownloadButton("Mask .png", visible=False, elem_id=f"{prefix}-dl-png")
                dl_overlay = gr.DownloadButton("Overlay .png", visible=False, elem_id=f"{prefix}-dl-overlay")

    hidden = (gr.update(visible=False, value=None),) * 3

    @friendly
    def load(file, window_choice, slice_index):
        sweep(KIND)
        if file is None:
            return ({}, None, None, "", None, "", *hidden)
        src = Path(file)
        work = new_work_dir(KIND)
        name = Path(getattr(file, "orig_name", None) or src.name).name
        kept = work / name
        shutil.copyfile(src, kept)
        try:
            medical = read_image(kept, max_pixels=max_pixels)
            index = None if slice_index in (None, "") or int(slice_index) < 0 else int(slice_index)
            rgb = medical.display(slice_index=index if medical.num_slices > 1 else None,
                                  window=window_value(window_choice))
        except Exception:
            shutil.rmtree(work, ignore_errors=True)  # a rejected file is not kept
            raise
        note = (f"**{name}**: {medical.width}x{medical.height}, {medical.source_format}"
                + (f", {medical.num_slices} slices (showing {medical.num_slices // 2 if index is None else index})"
                   if medical.num_slices > 1 else "")
                + ("" if medical.raw or not window_value(window_choice) else "; 8-bit image, the window does not apply"))
        new_state = {"rgb": rgb, "dir": str(work), "stem": _stem(name), "points": []}
        return (new_state, {"image": rgb, "boxes": []}, rgb, note, None, "", *hidden)

    def _segment(st, annotated, required: bool):
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
        text = (f"Predicted IoU **{ious}** · area {int((labels > 0).sum())} px · "
                f"encode {out['encode_ms']:.0f} ms{' (cached)' if out['cache_hit'] else ''} · "
                f"decode {out['decode_ms']:.0f} ms")
        layers = [(labels == k, f"object {k}") for k in range(1, len(out["masks"]) + 1)]
        return (overlay_value(st["rgb"], layers), text,
                gr.update(value=str(npy), visible=True), gr.update(value=str(png), visible=True),
                gr.update(value=str(ovl), visible=True))

    @friendly
    def segment_click(st, annotated):
        return _segment(st, annotated, True)

    @friendly
    def segment_auto(st, annotated):
        out = _segment(st, annotated, False)
        return out if out is not None else (gr.update(), gr.update(), gr.update(), gr.update(), gr.update())

    @friendly
    def add_point(st, annotated, kind, evt: gr.SelectData):
        if not st or "rgb" not in st:
            raise gr.Error("Upload an image first.")
        x, y = evt.index[0], evt.index[1]
        st = {**st, "points": [*st.get("points", []), [float(x), float(y), 1 if kind == "include" else 0]]}
        return (st, draw_points(st["rgb"], st["points"]), *segment_auto(st, annotated))

    def clear_pts(st):
        if not st or "rgb" not in st:
            return st, None
        st = {**st, "points": []}
        return st, st["rgb"]

    def clear_bx(st):
        return {"image": st["rgb"], "boxes": []} if st and "rgb" in st else None

    outs = [result, summary, dl_npy, dl_png, dl_overlay]
    load_outs = [state, annot, points_view, info, result, summary, dl_npy, dl_png, dl_overlay]
    upload.upload(load, [upload, window, slice_no], load_outs)
    upload.clear(load, [upload, window, slice_no], load_outs)
    window.input(load, [upload, window, slice_no], load_outs)
    slice_no.submit(load, [upload, window, slice_no], load_outs)
    annot.change(segment_auto, [state, annot], outs, trigger_mode="always_last")
    run_btn.click(segment_click, [state, annot], outs)
    points_view.select(add_point, [state, annot, point_kind], [state, points_view, *outs])
    clear_points.click(clear_pts, [state], [state, points_view])
    clear_boxes.click(clear_bx, [state], [annot])


