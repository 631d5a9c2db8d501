"""Small real volumes for the volume tests: a BRATS crop (cheap to encode) and the shared DICOM series."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from tests.conftest import require

BRATS_CASE = "brats_2013_pat0005_1"
# Voxel (x, y) ranges through the tumour; 64 x 64 slices keep each encode cheap.
CROP_XY = (slice(50, 114), slice(130, 194))


def brats_paths(sample_data: Path) -> tuple[Path, Path]:
    root = sample_data / "volumes" / "brats"
    image, label = root / "images" / f"{BRATS_CASE}.nii.gz", root / "labels" / f"{BRATS_CASE}.nii.gz"
    require(image.is_file() and label.is_file(), f"BRATS volume not found under {root}")
    return image, label


def tiny_brats(sample_data: Path, folder: Path, z: tuple[int, int] = (94, 98)) -> tuple[Path, Path]:
    """A crop through the tumour (slices ``z[0]`` to ``z[1] - 1``) as NIfTI (image, whole-tumour label),
    affines kept right by nibabel's slicer."""
    image, label = brats_paths(sample_data)
    folder.mkdir(parents=True, exist_ok=True)
    out_image, out_label = (
        folder / f"tiny_brats_{z[0]}_{z[1]}.nii.gz",
        folder / f"tiny_brats_{z[0]}_{z[1]}_label.nii.gz",
    )
    crop = (*CROP_XY, slice(*z))
    if not out_image.exists():
        nib.save(nib.load(image).slicer[crop], out_image)
        cropped = nib.load(label).slicer[crop]
        whole = (np.asanyarray(cropped.dataobj) > 0).astype(np.uint8)
        nib.save(nib.Nifti1Image(whole, cropped.affine), out_label)
    return out_image, out_label


def tumour_zhw(label_path: Path) -> np.ndarray:
    """The label as the portal's (Z, H, W) bool array: NIfTI (x, y, z) -> (z, y, x)."""
    return np.asanyarray(nib.load(label_path).dataobj).transpose(2, 1, 0) > 0


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


def dicom_series(sample_data: Path) -> list[Path]:
    folder = sample_data / "volumes" / "ct_dicom_series" / "images"
    files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    require(len(files) == 20, f"the 20-slice DICOM series was not found in {folder}")
    return files
