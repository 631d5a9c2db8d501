"""Options shared by the model-running commands, and building a predictor from settings."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from medsam_core.backends import BACKENDS
from portal.store.settings import Settings, get_settings


def add_model_options(parser: argparse.ArgumentParser) -> None:
    from medsam_core.models import FAMILIES

    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        metavar="NAME",
        default=None,
        help=f"model family: {', '.join(FAMILIES)} (default: MEDSAM_DEFAULT_MODEL or lite)",
    )
    group.add_argument(
        "--checkpoint",
        metavar="PATH",
        default=None,
        help="weights file; required for the ViT families, optional for lite (bundled)",
    )
    group.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: MEDSAM_DEVICE)")
    group.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="inference backend (default: MEDSAM_INFERENCE_BACKEND, auto)",
    )


def build_predictor(args: argparse.Namespace, settings: Settings | None = None):
    """The command line's model options over the settings, then the store's one predictor factory."""
    from medsam_core.cache import DirectoryEmbeddingStore, EmbeddingCache
    from medsam_core.models import load_model
    from portal.store.runtime import build_predictor as predictor_from_settings

    settings = settings or get_settings()
    if args.backend:
        settings = settings.model_copy(update={"inference_backend": args.backend})
    model = load_model(args.model or settings.default_model, args.checkpoint, args.device or settings.device)
    store = DirectoryEmbeddingStore(settings.embedding_dir, settings.embedding_cache_mb * 1024 * 1024)
    cache = EmbeddingCache(store, memory_items=settings.embedding_memory_items)
    return predictor_from_settings(settings, model, cache)


MULTI_SUFFIXES = (".nii.gz",)


def output_stem(path: Path) -> str:
    """``scan.nii.gz`` gives ``scan``, not ``scan.nii``: output names follow what users call the file."""
    name = path.name
    for suffix in MULTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def collect_scores(scores: Iterable[Any], total: int, unit: str, as_json: bool) -> list[Any]:
    """Scores as they come, with a progress bar on stderr and, for ``--json``, one line each.

    Printed as they are computed, so a long evaluation shows its first cases at once.
    """
    from tqdm import tqdm

    kept = []
    with tqdm(total=total, desc="evaluate", unit=unit, file=sys.stderr, disable=None) as progress:
        for score in scores:
            kept.append(score)
            progress.update(1)
            progress.set_postfix(dice=f"{score.dice:.3f}")
            if as_json:
                print(json.dumps(score.as_dict()), flush=True)
    return kept
