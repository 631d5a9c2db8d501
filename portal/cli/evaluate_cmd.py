"""``medsam evaluate``: Dice and NSD on a labelled folder, prompted with ground-truth boxes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from portal.cli import volume_cmd
from portal.cli.common import add_model_options, build_predictor, collect_scores
from portal.store.settings import get_settings

MAX_CLICKS = 20  # each click is one more decode per object: bounded like every other prompt


def register(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="measure Dice and NSD on a labelled folder",
        description="DATA_DIR holds images/*.png + masks/*.png (same stems; mask 0/255 or label "
        "ids) or imgs/*.npy + gts/*.npy. Each label is prompted with its tight box.",
    )
    p.add_argument("data_dir", type=Path, metavar="DATA_DIR")
    p.add_argument(
        "--box-jitter",
        type=int,
        default=0,
        metavar="PX",
        help="push each box side out by a random 0..PX pixels, like MedSAM's bbox_shift (default 0)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for the jitter, so runs compare (default 0)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N images by name")
    p.add_argument(
        "--nsd-tolerance",
        type=float,
        default=2.0,
        metavar="PX",
        help="boundary tolerance of the normalised surface Dice, in pixels (with --volumes: mm) (default 2)",
    )
    p.add_argument(
        "--clicks",
        type=int,
        default=0,
        metavar="N",
        help="after the box, up to N simulated corrective clicks per object (largest error region first); "
        "adds dice_at_clicks (index 0 = box alone) and noc90 (clicks to Dice 0.90, capped at N) (default 0)",
    )
    p.add_argument("--json", action="store_true", help="one JSON line per image, then a JSON summary line")
    volume_cmd.add_evaluate_options(p)
    add_model_options(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from medsam_core.errors import MedsamError
    from medsam_core.evaluation import evaluate, find_pairs, summarize
    from medsam_core.models import get_family

    if args.box_jitter < 0:
        raise MedsamError("--box-jitter must be 0 or more pixels")
    if args.limit is not None and args.limit < 1:
        raise MedsamError("--limit must be at least 1")
    if not 0 <= args.clicks <= MAX_CLICKS:
        raise MedsamError(f"--clicks must be between 0 and {MAX_CLICKS}")
    settings = get_settings()
    get_family(args.model or settings.default_model)
    if args.volumes and args.clicks:
        raise MedsamError("--clicks applies to 2-D folders only, not with --volumes")
    if args.volumes:
        return volume_cmd.run_evaluate(args, settings)
    if args.binary:
        raise MedsamError("--binary applies with --volumes only")
    pairs = find_pairs(args.data_dir)[: args.limit]
    predictor = build_predictor(args, settings)
    scores = collect_scores(
        evaluate(
            predictor,
            pairs,
            box_jitter=args.box_jitter,
            seed=args.seed,
            nsd_tolerance=args.nsd_tolerance,
            max_pixels=settings.max_image_pixels,
            clicks=args.clicks,
        ),
        len(pairs),
        "img",
        args.json,
    )
    summary = {
        **summarize(scores),
        "model": predictor.family,
        "box_jitter": args.box_jitter,
        "seed": args.seed,
        "clicks": args.clicks,
        "data_dir": str(args.data_dir),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"{summary['images']} images, {summary['objects']} objects ({predictor.family}, "
            f"box jitter {args.box_jitter}px)"
        )
        print(f"Dice  mean {summary['mean_dice']:.4f}  median {summary['median_dice']:.4f}")
        print(
            f"NSD   mean {summary['mean_nsd']:.4f}  median {summary['median_nsd']:.4f}  "
            f"(tolerance {args.nsd_tolerance:g}px)"
        )
        if args.clicks:
            rounds = "  ".join(f"{k}: {v:.4f}" for k, v in enumerate(summary["dice_at_clicks"]))
            print(f"Dice after k clicks  {rounds}  (NoC@90 {summary['noc90']:.2f}, cap {args.clicks})")
    return 0
