"""Zero-shot accuracy on a labelled folder, prompted with ground-truth boxes.

Two layouts are understood: ``images/*.png`` + ``masks/*.png`` with matching
stems, and the MedSAM training layout ``imgs/*.npy`` + ``gts/*.npy``. Each label
value in a mask is one object, prompted with its tight box (MedSAM's
convention: inclusive max index), optionally pushed out by a random 0..jitter
pixels per side from a seeded generator so two runs compare exactly.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medsam_core.clicks import NOC_TARGET, simulate
from medsam_core.errors import InvalidImageError, MedsamError
from medsam_core.imageio import DEFAULT_MAX_PIXELS, read_image
from medsam_core.metrics import dice, normalized_surface_dice
from medsam_core.predictor import Predictor

LAYOUTS = (("images", "masks", (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")), ("imgs", "gts", (".npy",)))


@dataclass(frozen=True)
class Pair:
    stem: str
    image: Path
    mask: Path


@dataclass
class ImageScore:
    stem: str
    objects: int
    dice: float
    nsd: float
    predicted_iou: float
    encode_ms: float
    decode_ms: float
    cache_hit: bool
    dice_at_clicks: list[float] | None = None  # with clicks: index 0 the box alone, k after k clicks
    noc90: float | None = None  # with clicks: mean clicks to Dice 0.90 over the objects, capped

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.dice_at_clicks is None:  # without --clicks the lines stay as they were
            del out["dice_at_clicks"], out["noc90"]
        return out


def find_pairs(data_dir: str | Path) -> list[Pair]:
    root = Path(data_dir)
    if not root.is_dir():
        raise MedsamError(f"{root} is not a folder")
    for image_dir, mask_dir, suffixes in LAYOUTS:
        if (root / image_dir).is_dir() and (root / mask_dir).is_dir():
            masks = {p.stem: p for p in (root / mask_dir).iterdir() if p.suffix.lower() in suffixes}
            pairs = [
                Pair(p.stem, p, masks[p.stem])
                for p in sorted((root / image_dir).iterdir())
                if p.suffix.lower() in suffixes and p.stem in masks
            ]
            if not pairs:
                raise MedsamError(f"{root}: no image in {image_dir}/ has a mask with the same name in {mask_dir}/")
            return pairs
    raise MedsamError(
        f"{root} has neither images/ + masks/ (PNG pairs with the same names) nor imgs/ + gts/ (npy pairs)"
    )


def read_labels(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Masks arrive in untrusted zips too, so their size is checked from the header before any pixel is
    decoded: a few kilobytes of PNG can declare billions of pixels."""
    try:
        if path.suffix.lower() == ".npy":
            arr = np.load(path, mmap_mode="r", allow_pickle=False)  # the header alone: nothing read yet
            _check_mask_size(path, arr.shape, max_pixels)
            arr = np.array(arr)
        else:
            with Image.open(path) as im:
                _check_mask_size(path, im.size, max_pixels)
                # A palette PNG's values are its indices (label numbers), whatever colours they show in.
                arr = np.asarray(im.convert("L") if im.mode in ("RGB", "RGBA", "LA", "PA") else im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidImageError(
            f"{path}: the mask declares far more pixels than the limit of {max_pixels:,} "
            "(possible decompression bomb); masks must be the size of their image"
        ) from None
    except InvalidImageError:
        raise
    except (OSError, ValueError) as exc:
        raise InvalidImageError(f"{path}: cannot read the ground-truth mask ({exc})") from None
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise InvalidImageError(f"{path}: a ground-truth mask must be 2-D, got shape {arr.shape}")
    return arr


def _check_mask_size(path: Path, shape: tuple[int, ...], max_pixels: int) -> None:
    pixels = int(np.prod(shape, dtype=np.float64)) if shape else 1
    if pixels > max_pixels:
        raise InvalidImageError(
            f"{path}: the mask is {' x '.join(str(n) for n in shape)} = {pixels:,} pixels, "
            f"above the limit of {max_pixels:,}; masks must be the size of their image"
        )


def boxes_from_labels(labels: np.ndarray, jitter: int, rng: np.random.Generator) -> tuple[list[int], np.ndarray]:
    height, width = labels.shape
    values = [int(v) for v in np.unique(labels) if v != 0]
    boxes = []
    for value in values:
        ys, xs = np.nonzero(labels == value)
        x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
        if jitter > 0:
            dx0, dy0, dx1, dy1 = rng.integers(0, jitter + 1, size=4)
            x0, y0 = max(0, x0 - dx0), max(0, y0 - dy0)
            x1, y1 = min(width - 1, x1 + dx1), min(height - 1, y1 + dy1)
        boxes.append([x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)])
    return values, np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


def evaluate(
    predictor: Predictor,
    pairs: list[Pair],
    *,
    box_jitter: int = 0,
    seed: int = 0,
    nsd_tolerance: float = 2.0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    clicks: int = 0,
) -> Iterator[ImageScore]:
    """Yield one score per image that has at least one object; images with empty masks are skipped.

    ``clicks`` > 0 adds the corrective-click simulation (``medsam_core.clicks``) per object.
    """
    if clicks < 0:
        raise MedsamError(f"clicks must be 0 or more, got {clicks}")
    rng = np.random.default_rng(seed)
    for pair in pairs:
        rgb = read_image(pair.image, max_pixels=max_pixels).display()
        labels = read_labels(pair.mask, max_pixels)
        if labels.shape != rgb.shape[:2]:
            raise InvalidImageError(
                f"{pair.mask}: mask is {labels.shape[1]}x{labels.shape[0]} but image {pair.image.name} is "
                f"{rgb.shape[1]}x{rgb.shape[0]}"
            )
        values, boxes = boxes_from_labels(labels, box_jitter, rng)
        if not values:
            continue
        embedding = predictor.encode(rgb)
        prediction = predictor.decode(embedding, boxes=boxes)
        dices = [dice(m, labels == v) for m, v in zip(prediction.masks, values, strict=True)]
        nsds = [
            normalized_surface_dice(m, labels == v, nsd_tolerance)
            for m, v in zip(prediction.masks, values, strict=True)
        ]
        at_clicks, noc = None, None
        if clicks:
            runs = [simulate(predictor, embedding, b, labels == v, clicks) for b, v in zip(boxes, values, strict=True)]
            at_clicks = [round(float(np.mean(k)), 4) for k in zip(*(r.dice for r in runs), strict=True)]
            noc = float(np.mean([r.clicks_to(NOC_TARGET) for r in runs]))
        yield ImageScore(
            stem=pair.stem,
            objects=len(values),
            dice=float(np.mean(dices)),
            nsd=float(np.mean(nsds)),
            predicted_iou=float(np.mean(prediction.iou)),
            encode_ms=round(embedding.encode_ms, 1),
            decode_ms=round(prediction.decode_ms, 1),
            cache_hit=embedding.cache_hit,
            dice_at_clicks=at_clicks,
            noc90=noc,
        )


def summarize(scores: list[ImageScore]) -> dict[str, Any]:
    if not scores:
        raise MedsamError("no image with a labelled object was evaluated")
    d = [s.dice for s in scores]
    n = [s.nsd for s in scores]
    out: dict[str, Any] = {
        "images": len(scores),
        "objects": sum(s.objects for s in scores),
        "mean_dice": round(statistics.fmean(d), 4),
        "median_dice": round(statistics.median(d), 4),
        "mean_nsd": round(statistics.fmean(n), 4),
        "median_nsd": round(statistics.median(n), 4),
    }
    with_clicks = [s for s in scores if s.dice_at_clicks is not None and s.noc90 is not None]
    if with_clicks:
        rounds = zip(*(s.dice_at_clicks for s in with_clicks if s.dice_at_clicks), strict=True)
        out["dice_at_clicks"] = [round(statistics.fmean(r), 4) for r in rounds]
        out["noc90"] = round(statistics.fmean(s.noc90 for s in with_clicks if s.noc90 is not None), 3)
    return out
