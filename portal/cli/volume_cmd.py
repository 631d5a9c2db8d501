"""The volume halves of ``medsam segment --propagate`` and ``medsam evaluate --volumes``.

Everything a user typed is checked against the volume before the model loads,
so a bad box, slice or z range writes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from portal.cli.common import build_predictor, collect_scores, output_stem
from portal.store.settings import Settings


def add_segment_options(p: argparse.ArgumentParser) -> None:
    from medsam_core.propagation import DEFAULT_SCHEME, SCHEMES

    group = p.add_argument_group("volumes")
    group.add_argument(
        "--propagate",
        action="store_true",
        help="VOLUME is a NIfTI file or a DICOM series folder: propagate each --box from --slice through the "
        "slices; writes <stem>_mask.nii.gz (the input's shape and affine) and <stem>_mask.npy (Z, H, W)",
    )
    group.add_argument(
        "--z-range",
        nargs=2,
        type=int,
        metavar=("Z0", "Z1"),
        default=None,
        help="with --propagate: first and last slice to segment, inclusive (default: the whole volume)",
    )
    group.add_argument(
        "--scheme",
        choices=tuple(SCHEMES),
        default=DEFAULT_SCHEME,
        help=f"with --propagate: how slices are prompted (default {DEFAULT_SCHEME}; cvpr24 is the plain "
        "CVPR 2024 MedSAM-on-laptop baseline)",
    )


def add_evaluate_options(p: argparse.ArgumentParser) -> None:
    from medsam_core.propagation import DEFAULT_SCHEME, SCHEMES

    group = p.add_argument_group("volumes")
    group.add_argument(
        "--volumes",
        action="store_true",
        help="DATA_DIR holds images/<case>.nii.gz + labels/<case>.nii.gz, or nnU-Net's imagesTr/<case>_0000.nii.gz "
        "+ labelsTr/<case>.nii.gz: each object is propagated from a tight box on the middle slice of its z extent "
        "and scored in 3-D (NSD tolerance in mm)",
    )
    group.add_argument("--binary", action="store_true", help="with --volumes: all labels > 0 form one object")
    group.add_argument(
        "--scheme",
        choices=tuple(SCHEMES),
        default=DEFAULT_SCHEME,
        help=f"with --volumes: propagation scheme (default {DEFAULT_SCHEME})",
    )


@dataclass
class VolumeJob:
    path: Path
    stem: str
    volume: Any  # medsam_core.volume.Volume
    key_slice: int
    z_range: tuple[int, int]
    boxes: list[list[float]]


def _prepare(args: argparse.Namespace, settings: Settings) -> VolumeJob:
    from medsam_core.errors import MedsamError, PromptError
    from medsam_core.prompts import validate_boxes
    from medsam_core.propagation import check_range
    from medsam_core.volume import read_volume
    from medsam_core.windows import window_bounds

    if len(args.images) != 1:
        raise MedsamError("--propagate takes one VOLUME (a NIfTI file or a DICOM series folder)")
    if not args.box:
        raise PromptError("--propagate needs a --box X0 Y0 X1 Y1 on the key slice (repeat it for several objects)")
    if args.point:
        raise PromptError("--point is not used with --propagate; give a --box per object")
    if len(args.box) > 255:
        raise PromptError("at most 255 objects fit one uint8 label map")
    if args.window is not None:
        window_bounds(args.window)
    path = Path(args.images[0])
    volume = read_volume(path, max_voxels=settings.max_image_pixels * 4)
    num_slices = volume.shape[0]
    key = args.slice_index
    if key is None:
        key = num_slices // 2
        print(f"note: propagating from slice {key}, the middle of {num_slices} (choose with --slice)", file=sys.stderr)
    z_range = check_range(num_slices, key, None if args.z_range is None else tuple(args.z_range))
    stem = path.name if path.is_dir() else output_stem(path)
    for box in args.box:
        validate_boxes(box, volume.shape[1:])
    return VolumeJob(path, stem, volume, key, z_range, args.box)


def _object_record(index: int, box: list[float], result: Any) -> dict[str, Any]:
    return {
        "label": index,
        "box": box,
        "slices": result.slices,
        "area": {str(z): a for z, a in sorted(result.areas().items())},
        "predicted_iou": {str(z): round(v, 4) for z, v in sorted(result.iou.items())},
        "stopped": result.stopped,
        "decode_ms": round(result.decode_ms, 1),
        "total_ms": round(result.total_ms, 1),
    }


def run_segment(args: argparse.Namespace, settings: Settings) -> int:
    """``medsam segment VOLUME --propagate``: one label per --box, all sharing one encode per slice."""
    import time

    from medsam_core.outputs import atomic_write, label_map, npy_bytes
    from medsam_core.propagation import SliceEncoder, propagate
    from medsam_core.volume import label_map_nifti

    job = _prepare(args, settings)
    start = time.perf_counter()
    predictor = build_predictor(args, settings)
    volume = job.volume
    encoder = SliceEncoder(predictor, lambda z: volume.slice_image(z).display(window=args.window))
    records, masks = [], []
    for index, box in enumerate(job.boxes, start=1):
        result = propagate(predictor, encoder, volume.shape[0], job.key_slice, box, job.z_range, scheme=args.scheme)
        masks.append(result.masks)
        records.append(_object_record(index, box, result))
    labels = label_map(np.stack(masks))
    nifti_bytes = _gzip_nifti(label_map_nifti(labels, volume))
    args.out.mkdir(parents=True, exist_ok=True)
    nifti_path, npy_path = args.out / f"{job.stem}_mask.nii.gz", args.out / f"{job.stem}_mask.npy"
    atomic_write(nifti_path, nifti_bytes)
    atomic_write(npy_path, npy_bytes(labels))
    record = {
        "volume": str(job.path),
        "mask_nifti": str(nifti_path),
        "mask_npy": str(npy_path),
        "shape": list(labels.shape),
        "key_slice": job.key_slice,
        "z_range": list(job.z_range),
        "scheme": args.scheme,
        "objects": records,
        "encoded_slices": encoder.slices,
        "encoder_runs": encoder.misses,
        "encode_ms": round(encoder.encode_ms, 1),
        "decode_ms": round(sum(r["decode_ms"] for r in records), 1),
        "total_ms": round((time.perf_counter() - start) * 1000, 1),
        "model": predictor.family,
        "backend": predictor.backend.name,
    }
    if args.json:
        print(json.dumps(record), flush=True)
    else:
        for r in records:
            print(
                f"object {r['label']}: {len(r['slices'])} slices, {sum(r['area'].values())} voxels, "
                f"decode {r['decode_ms']:.0f} ms"
            )
        print(
            f"{job.path.name}: {encoder.slices} slices encoded ({encoder.misses} new) in "
            f"{encoder.encode_ms / 1000:.1f} s -> {nifti_path}, {npy_path}"
        )
    return 0


def _gzip_nifti(image: Any) -> bytes:
    """The .nii.gz bytes in memory, so the file lands whole or not at all (like every other output)."""
    import gzip

    return gzip.compress(image.to_bytes(), compresslevel=6)


def run_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from medsam_core.errors import MedsamError
    from medsam_core.volume_evaluation import evaluate_volumes, find_volume_pairs, summarize_volumes

    if args.box_jitter:
        raise MedsamError("--box-jitter applies to 2-D images; --volumes prompts with tight boxes")
    pairs = find_volume_pairs(args.data_dir)[: args.limit]
    predictor = build_predictor(args, settings)
    scores = collect_scores(
        evaluate_volumes(
            predictor,
            pairs,
            binary=args.binary,
            scheme=args.scheme,
            nsd_tolerance=args.nsd_tolerance,
            max_voxels=settings.max_image_pixels * 4,
        ),
        len(pairs),
        "volume",
        args.json,
    )
    summary = {
        **summarize_volumes(scores),
        "model": predictor.family,
        "scheme": args.scheme,
        "binary": args.binary,
        "nsd_tolerance_mm": args.nsd_tolerance,
        "data_dir": str(args.data_dir),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{summary['cases']} volumes, {summary['objects']} objects ({predictor.family}, scheme {args.scheme})")
        print(f"3D Dice  mean {summary['mean_dice']:.4f}  median {summary['median_dice']:.4f}")
        print(
            f"3D NSD   mean {summary['mean_nsd']:.4f}  median {summary['median_nsd']:.4f}  "
            f"(tolerance {args.nsd_tolerance:g} mm)"
        )
    return 0
