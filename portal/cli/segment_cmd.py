"""``medsam segment``: box/point prompts on image files, masks written as npy and PNG.

Every image is read and every prompt checked before the model loads or a file
is written, so a bad input anywhere in the batch writes nothing at all.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from portal.cli import volume_cmd
from portal.cli.common import add_model_options, build_predictor, output_stem
from portal.store.settings import get_settings


def register(sub) -> None:
    p = sub.add_parser(
        "segment",
        help="segment images with box and point prompts",
        description="Segment each IMAGE with the same prompts. Writes <stem>_mask.npy (uint8 at the "
        "original size: 0/1, or labels 1..K for K boxes), <stem>_mask.png and "
        "<stem>_overlay.png into --out.",
    )
    p.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE",
        help="PNG, JPEG, BMP, TIFF, npy, DICOM or NIfTI file (--propagate: one NIfTI volume or DICOM series folder)",
    )
    p.add_argument(
        "--box",
        nargs=4,
        type=float,
        action="append",
        metavar=("X0", "Y0", "X1", "Y1"),
        help="box in original pixels; repeat for several objects",
    )
    p.add_argument(
        "--point",
        nargs=3,
        type=float,
        action="append",
        metavar=("X", "Y", "LABEL"),
        help="point in original pixels, LABEL 1 include or 0 exclude; repeat for more",
    )
    p.add_argument(
        "--window",
        default=None,
        metavar="NAME",
        help="CT window for raw intensities: abdomen, lung, brain, bone (default: 0.5-99.5 percentile)",
    )
    p.add_argument(
        "--slice",
        type=int,
        default=None,
        dest="slice_index",
        help="slice of a 3-D volume, from 0 (default: the middle slice)",
    )
    p.add_argument("--out", type=Path, default=Path("medsam_out"), help="output folder (default: ./medsam_out)")
    p.add_argument("--json", action="store_true", help="print one JSON object per image on stdout")
    volume_cmd.add_segment_options(p)
    add_model_options(p)
    p.set_defaults(handler=run)


@dataclass
class Job:
    path: Path
    stem: str
    rgb: np.ndarray
    slice_index: int | None


def _prepare(args, max_pixels: int) -> list[Job]:
    from medsam_core.errors import InvalidImageError, MedsamError, PromptError
    from medsam_core.imageio import read_image
    from medsam_core.prompts import validate_boxes, validate_points
    from medsam_core.windows import WINDOW_PRESETS

    if not args.box and not args.point:
        raise PromptError("give at least one --box X0 Y0 X1 Y1 or --point X Y LABEL")
    if args.point and args.box and len(args.box) > 1:
        raise PromptError("--point refines one object: use it with at most one --box")
    if args.window is not None and args.window not in WINDOW_PRESETS:
        raise MedsamError(f"unknown window '{args.window}'; choose one of: {', '.join(WINDOW_PRESETS)}")
    paths = [Path(p) for p in args.images]
    stems: dict[str, Path] = {}
    for path in paths:
        stem = output_stem(path)
        if stem in stems:
            raise MedsamError(
                f"{stems[stem]} and {path} would write the same output files ({stem}_mask.*); "
                "segment them into different --out folders"
            )
        stems[stem] = path
    jobs, problems = [], []
    for path in paths:
        try:
            image = read_image(path, max_pixels=max_pixels)
            if args.window and not image.window_applies:
                print(
                    f"note: {path.name} is an 8-bit image; --window applies only to raw intensities and is ignored",
                    file=sys.stderr,
                )
            slice_index = args.slice_index
            if image.num_slices > 1 and slice_index is None:
                slice_index = image.num_slices // 2
                print(
                    f"note: {path.name} has {image.num_slices} slices; segmenting slice {slice_index} "
                    "(choose with --slice)",
                    file=sys.stderr,
                )
            rgb = image.display(slice_index=slice_index, window=args.window)
            validate_boxes(args.box, rgb.shape[:2])
            validate_points(args.point, rgb.shape[:2])
        except (InvalidImageError, PromptError) as exc:
            message = str(exc)
            problems.append(message if str(path) in message or path.name in message else f"{path}: {message}")
            continue
        jobs.append(Job(path, output_stem(path), rgb, slice_index if image.num_slices > 1 else None))
    if problems:
        raise InvalidImageError("nothing was written, because:\n  " + "\n  ".join(problems))
    return jobs


def run(args: argparse.Namespace) -> int:
    from medsam_core.errors import MedsamError
    from medsam_core.models import get_family
    from medsam_core.outputs import write_mask_files

    settings = get_settings()
    get_family(args.model or settings.default_model)  # an unknown family fails before any image is read
    if args.propagate:
        return volume_cmd.run_segment(args, settings)
    if args.z_range is not None:
        raise MedsamError("--z-range applies with --propagate only")
    jobs = _prepare(args, settings.max_image_pixels)
    predictor = build_predictor(args, settings)
    for job in jobs:
        embedding = predictor.encode(job.rgb)
        prediction = predictor.decode(embedding, boxes=args.box, points=args.point)
        paths = write_mask_files(args.out, job.stem, job.rgb, prediction.masks)
        areas = [int(m.sum()) for m in prediction.masks]
        record = {
            "image": str(job.path),
            **paths,
            "slice": job.slice_index,
            "model": predictor.family,
            "height": job.rgb.shape[0],
            "width": job.rgb.shape[1],
            "area": int(sum(areas)),
            "areas": areas,
            "predicted_iou": round(float(prediction.iou[0]), 4)
            if len(areas) == 1
            else [round(float(v), 4) for v in prediction.iou],
            "encode_ms": round(embedding.encode_ms, 1),
            "decode_ms": round(prediction.decode_ms, 1),
            "cache_hit": embedding.cache_hit,
            "backend": predictor.backend.name,
        }
        if args.json:
            print(json.dumps(record), flush=True)
        else:
            iou = ", ".join(f"{v:.2f}" for v in prediction.iou)
            print(
                f"{job.path.name}: {len(areas)} mask(s), {sum(areas)} px, predicted IoU {iou}, "
                f"encode {embedding.encode_ms:.0f} ms{' (cached)' if embedding.cache_hit else ''}, "
                f"decode {prediction.decode_ms:.0f} ms -> {paths['mask_png']}"
            )
    return 0
