"""Convert labelled data into the seed's training layout: ``imgs/*.npy`` (HxWx3 float in [0, 1]) + ``gts/*.npy``.

The recipe is MedSAM's preprocessing: window (CT) or percentile-clip, three
channels, resize (cubic for images, nearest for masks), drop slices without
labels and objects under a size limit. So our exports train with the seed's
own ``train_one_gpu.py`` as well as with ``medsam train``.

Sources understood:
* ``images/`` + ``masks/`` (2-D files of any supported format, same stems);
* NIfTI volumes with label volumes: ``images/`` + ``labels/`` (or nnU-Net's
  ``imagesTr/`` + ``labelsTr/``, where images may end in ``_0000``);
* DICOM series: ``images/<case>/`` folders of slices + ``labels/<case>.nii.gz``.
  Slices are ordered by ImagePositionPatient (then InstanceNumber), and the
  label volume must be on that grid, as exporters such as 3D Slicer write it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
from PIL import Image

from medsam_core.errors import InvalidImageError, MedsamError
from medsam_core.imageio import read_image
from medsam_core.medical_image import MedicalImage
from medsam_core.outputs import atomic_write, npy_bytes

if TYPE_CHECKING:
    from nibabel.dataobj_images import DataobjImage

NIFTI = (".nii", ".nii.gz")


@dataclass
class PrepareReport:
    written: int = 0
    slices_without_labels: int = 0
    objects_dropped: int = 0
    cases: int = 0


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".npy", ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _pairs(src: Path) -> Iterator[tuple[str, Path, Path]]:
    for image_dir, label_dir in (("images", "masks"), ("images", "labels"), ("imagesTr", "labelsTr")):
        if not ((src / image_dir).is_dir() and (src / label_dir).is_dir()):
            continue
        labels = {_stem(p): p for p in (src / label_dir).iterdir() if not p.name.startswith(".")}
        found = False
        for image in sorted((src / image_dir).iterdir()):
            stem = _stem(image)
            case = stem[:-5] if stem.endswith("_0000") and stem[:-5] in labels else stem
            if case in labels:
                found = True
                yield case, image, labels[case]
        if found:
            return
    raise MedsamError(
        f"{src}: found no image/label pairs; expected images/ + masks/, images/ + labels/ "
        "or imagesTr/ + labelsTr/ with matching names"
    )


def _read_series(folder: Path, max_pixels: int) -> MedicalImage:
    import pydicom

    slices = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - non-DICOM files in a series folder are skipped
            continue
        position = getattr(ds, "ImagePositionPatient", None)
        key = (float(position[2]) if position else 0.0, int(getattr(ds, "InstanceNumber", 0) or 0))
        slices.append((key, path))
    if not slices:
        raise InvalidImageError(f"{folder}: no DICOM slices found")
    planes = [read_image(p, max_pixels=max_pixels).pixels[0] for _, p in sorted(slices)]
    if len({p.shape for p in planes}) != 1:
        raise InvalidImageError(f"{folder}: the slices differ in size; is this one series?")
    return MedicalImage(np.stack(planes).astype(np.float32), raw=True, source_format="dicom")


def _read_labels(path: Path) -> np.ndarray:
    """(S, H, W) integer labels, oriented like ``read_image`` orients the image."""
    if path.name.lower().endswith(NIFTI):
        import nibabel as nib

        # nibabel types load() as its base image class; a NIfTI file loads as a Nifti1/2Image.
        data: np.ndarray = np.asanyarray(cast("DataobjImage", nib.load(str(path))).dataobj)
        if data.ndim == 2:
            data = data[..., None]
        if data.ndim != 3:
            raise InvalidImageError(f"{path}: a label volume must be 2-D or 3-D, got {data.shape}")
        labels: np.ndarray = np.rint(np.moveaxis(data, -1, 0).transpose(0, 2, 1)).astype(np.int32)
        return labels
    if path.suffix.lower() == ".npy":
        arr: np.ndarray = np.load(path, allow_pickle=False)
    else:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L") if im.mode in ("RGB", "RGBA", "P", "LA") else im)
    arr = np.squeeze(arr)
    return arr[None].astype(np.int32) if arr.ndim == 2 else arr.astype(np.int32)


def _resize_labels(labels: np.ndarray, size: int, min_px: int) -> tuple[np.ndarray, int]:
    out = np.asarray(Image.fromarray(labels.astype(np.int32)).resize((size, size), Image.Resampling.NEAREST))
    dropped = 0
    for value in np.unique(out):
        if value and (out == value).sum() < min_px:
            out = np.where(out == value, 0, out)
            dropped += 1
    return out.astype(np.uint8), dropped


def prepare_folder(
    src: str | Path,
    out: str | Path,
    *,
    window: str | None = None,
    size: int = 1024,
    min_object_px: int = 100,
    max_pixels: int = 100_000_000,
) -> PrepareReport:
    src, out = Path(src), Path(out)
    if size < 64:
        raise MedsamError("--size must be at least 64 pixels")
    (out / "imgs").mkdir(parents=True, exist_ok=True)
    (out / "gts").mkdir(parents=True, exist_ok=True)
    report = PrepareReport()
    for case, image_path, label_path in _pairs(src):
        image = (
            _read_series(image_path, max_pixels)
            if image_path.is_dir()
            else read_image(image_path, max_pixels=max_pixels)
        )
        labels = _read_labels(label_path)
        if labels.shape != (image.num_slices, image.height, image.width):
            raise InvalidImageError(
                f"{label_path}: labels are {labels.shape} (slices, H, W) but the image is "
                f"{(image.num_slices, image.height, image.width)}"
            )
        report.cases += 1
        volume = image.num_slices > 1
        for index in range(image.num_slices):
            if not labels[index].any():
                report.slices_without_labels += 1
                continue
            gts, dropped = _resize_labels(labels[index], size, min_object_px)
            report.objects_dropped += dropped
            if not gts.any():
                report.slices_without_labels += 1
                continue
            rgb = image.display(slice_index=index, window=window)
            resized = np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BICUBIC), np.float32)
            img = (resized - resized.min()) / max(float(resized.max() - resized.min()), 1e-8)
            name = f"{case}-{index:03d}" if volume else case
            atomic_write(out / "imgs" / f"{name}.npy", npy_bytes(img.astype(np.float32)))
            atomic_write(out / "gts" / f"{name}.npy", npy_bytes(gts))
            report.written += 1
    return report
