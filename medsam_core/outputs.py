"""Mask files people can open: npy for code, PNGs for eyes.

A 0/1 PNG looks black in every viewer, so a single mask is written 0/255 and a
label map as a palette PNG. Every file is written to a temporary name and
renamed, so a crash never leaves half a mask behind.
"""

from __future__ import annotations

import io
import os
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

# Distinct colours for labels 1..K (0 is black background); repeats after 10.
PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
]


def label_map(masks: np.ndarray) -> np.ndarray:
    """(K, H, W) bool -> uint8 (H, W): 0/1 for one mask, labels 1..K for several (later boxes on top)."""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim == 2:
        masks = masks[None]
    if len(masks) > 255:
        raise ValueError("at most 255 objects fit a uint8 label map")
    out = np.zeros(masks.shape[1:], dtype=np.uint8)
    for index, mask in enumerate(masks, start=1):
        out[mask] = index
    return out


def colour(label: int, palette: list[tuple[int, int, int]] | None = None) -> tuple[int, int, int]:
    """Label ``label`` (1..K): ``palette[label - 1]`` when given and long enough, else the default."""
    if palette and 0 < label <= len(palette):
        return tuple(palette[label - 1])  # type: ignore[return-value]
    return PALETTE[(label - 1) % len(PALETTE)]


def mask_png(labels: np.ndarray, n_labels: int, palette: list[tuple[int, int, int]] | None = None) -> Image.Image:
    """0/255 for a single unnamed mask; with ``palette`` (the callers' label colours) or several
    labels, a palette PNG whose pixel values stay the label numbers and show in their colours."""
    if n_labels <= 1 and not palette:
        return Image.fromarray((labels > 0).astype(np.uint8) * 255, mode="L")
    image = Image.fromarray(labels, mode="P")
    flat = [0, 0, 0]
    for label in range(1, 256):
        flat.extend(colour(label, palette))
    image.putpalette(flat)
    return image


def overlay(
    rgb: np.ndarray, labels: np.ndarray, alpha: float = 0.45, palette: list[tuple[int, int, int]] | None = None
) -> np.ndarray:
    """Tinted masks with a solid outline, so thin structures stay visible."""
    from scipy import ndimage

    out = rgb.astype(np.float32).copy()
    for label in np.unique(labels):
        if label == 0:
            continue
        region = labels == label
        tint = np.asarray(colour(int(label), palette), np.float32)
        out[region] = (1 - alpha) * out[region] + alpha * tint
        edge = region & ~ndimage.binary_erosion(region, border_value=0)
        out[edge] = tint
    return out.clip(0, 255).astype(np.uint8)


def atomic_write(path: Path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def npy_bytes(arr: np.ndarray) -> bytes:
    """An .npy file's bytes, never pickled: what every download and export writes."""
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def write_mask_files(out_dir: Path, stem: str, rgb: np.ndarray, masks: np.ndarray) -> dict[str, str]:
    """Write ``<stem>_mask.npy``, ``<stem>_mask.png`` and ``<stem>_overlay.png``; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = label_map(masks)
    n = 1 if np.asarray(masks).ndim == 2 else len(masks)
    encoded = {
        "mask_npy": (out_dir / f"{stem}_mask.npy", npy_bytes(labels)),
        "mask_png": (out_dir / f"{stem}_mask.png", _png_bytes(mask_png(labels, n))),
        "overlay_png": (out_dir / f"{stem}_overlay.png", _png_bytes(Image.fromarray(overlay(rgb, labels)))),
    }
    # Everything is encoded before the first file lands, so a failure writes nothing.
    for path, data in encoded.values():
        atomic_write(path, data)
    return {name: str(path) for name, (path, _) in encoded.items()}
