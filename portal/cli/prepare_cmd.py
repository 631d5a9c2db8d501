"""``medsam prepare``: labelled images, NIfTI or DICOM into the training layout."""

from __future__ import annotations

import argparse
from pathlib import Path

from portal.store.settings import get_settings


def register(sub) -> None:
    p = sub.add_parser(
        "prepare",
        help="convert labelled data into imgs/ + gts/ npy for training",
        description="SRC: images/ + masks/, images/ + labels/ (NIfTI volumes or DICOM series "
        "folders), or nnU-Net's imagesTr/ + labelsTr/. Writes OUT/imgs/*.npy "
        "(HxWx3 float in [0, 1]) and OUT/gts/*.npy (uint8 labels), one per labelled slice.",
    )
    p.add_argument("src", type=Path, metavar="SRC")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--window", default=None, help="CT window: abdomen, lung, brain, bone (default: percentiles)")
    p.add_argument("--size", type=int, default=1024, help="output side in pixels (default 1024)")
    p.add_argument("--min-object-px", type=int, default=100, help="drop objects smaller than this (default 100)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from medsam_core.errors import MedsamError
    from medsam_core.prepare import prepare_folder
    from medsam_core.windows import WINDOW_PRESETS

    if args.window is not None and args.window not in WINDOW_PRESETS:
        raise MedsamError(f"unknown window '{args.window}'; choose one of: {', '.join(WINDOW_PRESETS)}")
    report = prepare_folder(
        args.src,
        args.out,
        window=args.window,
        size=args.size,
        min_object_px=args.min_object_px,
        max_pixels=get_settings().max_image_pixels,
    )
    print(
        f"{report.cases} cases: wrote {report.written} slices to {args.out}; skipped "
        f"{report.slices_without_labels} without labels; dropped {report.objects_dropped} objects under "
        f"{args.min_object_px} px"
    )
    return 0
