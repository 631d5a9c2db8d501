"""A CT or MR volume as one object with its geometry, and label maps written back onto it.

The 2-D readers in ``medsam_core.imageio`` show a volume as a stack of slices and forget where
they sit in space. Propagation, 3-D export and alignment with reference labels need that space:
an exported mask must overlay the input in ITK-SNAP or 3D Slicer, and a label file stored in
another orientation must be lined up through the affines, never by array index. So a ``Volume``
keeps the raw values exactly as ``read_image`` shows them, plus the NIfTI-convention affine from
voxel (column, row, slice) to RAS+ millimetres.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import TYPE_CHECKING

import numpy as np

from medsam_core import dicom_series
from medsam_core.errors import InvalidImageError
from medsam_core.imageio import _VOLUME_FACTOR, DEFAULT_MAX_PIXELS, _fail, _file_kind, _read_nifti_with_affine
from medsam_core.medical_image import MedicalImage

if TYPE_CHECKING:
    import nibabel as nib
    from nibabel.spatialimages import SpatialImage

DEFAULT_MAX_VOXELS = _VOLUME_FACTOR * DEFAULT_MAX_PIXELS
# CT stored as NIfTI carries no modality tag; air at about -1000 HU in an integer image is the tell.
_HU_AIR_BELOW = -500


@dataclass(frozen=True, eq=False)
class Volume:
    """Raw values (Z, H, W) plus the affine voxel (column, row, z) -> RAS+ mm.

    ``eq=False`` for the same reason as ``MedicalImage``: identity equality, no array comparisons.
    """

    pixels: np.ndarray
    affine: np.ndarray
    source_format: str
    modality: str
    slice_positions: tuple[float, ...] | None = None
    sop_instance_uids: tuple[str, ...] | None = None
    series_instance_uid: str | None = None

    def __post_init__(self) -> None:
        px, aff = self.pixels, self.affine
        if not isinstance(px, np.ndarray) or px.ndim != 3 or px.dtype.kind not in "uif":
            raise InvalidImageError("Volume.pixels must be a numeric (Z, H, W) numpy array.")
        if not isinstance(aff, np.ndarray) or aff.shape != (4, 4) or not np.isfinite(aff).all():
            raise InvalidImageError("Volume.affine must be a finite 4 x 4 array.")
        if abs(np.linalg.det(aff[:3, :3])) < 1e-12:
            raise InvalidImageError("Volume.affine is singular: the voxels have no extent in space.")
        for name in ("slice_positions", "sop_instance_uids"):
            per_slice = getattr(self, name)
            if per_slice is not None and len(per_slice) != px.shape[0]:
                raise InvalidImageError(f"Volume.{name} needs one entry per slice ({px.shape[0]}).")

    @property
    def shape(self) -> tuple[int, int, int]:
        z, h, w = self.pixels.shape
        return int(z), int(h), int(w)

    @property
    def num_slices(self) -> int:
        return self.shape[0]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """(column mm, row mm, slice mm): the lengths of the affine's voxel axes."""
        col, row, sl = (float(np.linalg.norm(self.affine[:3, i])) for i in range(3))
        return col, row, sl

    @property
    def orientation(self) -> tuple[str, str, str]:
        import nibabel as nib

        codes = tuple(str(c) for c in nib.aff2axcodes(self.affine))  # type: ignore[no-untyped-call]
        return codes[0], codes[1], codes[2]

    @cached_property
    def _whole(self) -> MedicalImage:
        return MedicalImage(pixels=self.pixels, raw=True, source_format=self.source_format)

    def slice_image(self, z: int) -> MedicalImage:
        """One slice as the 2-D path's image, so display, windowing and the cache key are the 2-D ones.

        Percentile contrast is the whole volume's, as ``read_image(...).display(z)`` gives for a
        volume, so scrolling does not flicker and a slice encodes exactly as its per-slice row did.
        """
        if isinstance(z, bool) or not isinstance(z, (int, np.integer)) or not 0 <= z < self.num_slices:
            raise InvalidImageError(
                f"Slice index {z!r} is out of range: this volume has {self.num_slices} slice(s), "
                f"valid indices are 0 to {self.num_slices - 1}."
            )
        one = MedicalImage(pixels=self.pixels[int(z) : int(z) + 1], raw=True, source_format=self.source_format)
        # cached_property stores in the instance dict; seeding it hands over the volume-wide bounds.
        one.__dict__["_display_bounds"] = self._whole._display_bounds
        return one


def _guess_modality(pixels: np.ndarray) -> str:
    if pixels.dtype.kind in "iu" and pixels.size and int(pixels.min()) < _HU_AIR_BELOW:
        return "CT"
    return "other"


def read_nifti_volume(path: str | os.PathLike[str], *, max_voxels: int = DEFAULT_MAX_VOXELS) -> Volume:
    """A NIfTI file as a volume; 2-D files become one slice."""
    shown = os.fspath(path)
    kind, stream = _file_kind(shown)
    if kind != "nifti":
        raise _fail(shown, "this is not a NIfTI image (.nii or .nii.gz).")
    image, affine = _read_nifti_with_affine(shown, max_voxels, stream, max_voxels)
    px = image.pixels
    if px.ndim != 3:
        raise _fail(shown, f"NIfTI volumes must hold one value per voxel, got shape {px.shape}.")
    return Volume(pixels=px, affine=affine, source_format="nifti", modality=_guess_modality(px))


def read_volume(path: str | os.PathLike[str], *, max_voxels: int = DEFAULT_MAX_VOXELS) -> Volume:
    """One entry point for a NIfTI file, a folder holding one DICOM series, or a zip of one series."""
    shown = os.fspath(path)
    p = Path(shown)
    if not p.exists():
        raise InvalidImageError(f"Volume not found: {shown}. Check the path and try again.")
    if p.is_dir():
        return series_volume(dicom_series.folder_files(p), max_voxels=max_voxels, shown=shown)
    kind = "zip" if p.suffix.lower() == ".zip" else _file_kind(shown)[0]
    if kind == "nifti":
        return read_nifti_volume(p, max_voxels=max_voxels)
    if kind == "dicom":
        return read_dicom_series([p], max_voxels=max_voxels)
    if kind == "zip" or zipfile.is_zipfile(p):
        with TemporaryDirectory(prefix="medsam-series-") as tmp:
            files = dicom_series.zip_files(p, Path(tmp), max_voxels=max_voxels)
            return series_volume(files, max_voxels=max_voxels, shown=shown)
    raise _fail(
        shown,
        "this is not a volume. Choose a NIfTI file (.nii, .nii.gz), a folder holding one DICOM series, "
        "or a .zip of one series.",
    )


def read_dicom_series(
    paths: Sequence[str | os.PathLike[str]],
    *,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    names: Sequence[str] | None = None,
) -> Volume:
    """Slices sorted along their normal; one series with one geometry, else a plain refusal.

    ``names`` are what messages call the files (the upload's names when ``paths`` are working copies).
    """
    shown = [Path(p).name for p in paths] if names is None else list(names)
    if len(shown) != len(paths):
        raise ValueError("read_dicom_series needs one name per path.")
    return series_volume([(Path(p), n) for p, n in zip(paths, shown, strict=True)], max_voxels=max_voxels)


def series_volume(files: Sequence[tuple[Path, str]], *, max_voxels: int, shown: str | None = None) -> Volume:
    """``files`` are (path to read, name messages show); ``shown`` names the whole upload (a zip, a folder)."""
    series = dicom_series.read_series_files(files, max_voxels=max_voxels, shown=shown)
    return Volume(
        pixels=series.pixels,
        affine=series.affine,
        source_format="dicom",
        modality=series.modality,
        slice_positions=series.slice_positions,
        sop_instance_uids=series.sop_instance_uids,
        series_instance_uid=series.series_instance_uid,
    )


def _as_label_uint8(labels: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.shape != shape:
        raise InvalidImageError(f"{what} has shape {arr.shape}; the volume is (Z, H, W) = {shape}.")
    if arr.dtype.kind == "b":
        return arr.astype(np.uint8)
    if arr.dtype.kind not in "uif":
        raise InvalidImageError(f"{what} must hold integer label values, not {arr.dtype}.")
    if arr.size and (float(arr.min()) < 0 or float(arr.max()) > 255 or not np.array_equal(arr, np.rint(arr))):
        raise InvalidImageError(f"{what} must hold whole label values from 0 to 255.")
    return arr.astype(np.uint8)


def nifti_on_grid(data: np.ndarray, volume: Volume) -> nib.Nifti1Image:
    """(Z, H, W) values back in the input's voxel order (X, Y, Z) and affine, so viewers overlay them."""
    import nibabel as nib

    img = nib.Nifti1Image(np.ascontiguousarray(data.transpose(2, 1, 0)), volume.affine)  # type: ignore[no-untyped-call]
    img.header.set_data_dtype(data.dtype)  # type: ignore[no-untyped-call]
    img.header.set_xyzt_units("mm")  # type: ignore[no-untyped-call]
    # Both qform and sform: ITK, Slicer and FSL differ in which one they trust.
    img.set_qform(volume.affine, code=1)  # type: ignore[no-untyped-call]
    img.set_sform(volume.affine, code=1)  # type: ignore[no-untyped-call]
    return img


def label_map_nifti(labels: np.ndarray, volume: Volume) -> nib.Nifti1Image:
    """A uint8 (Z, H, W) label map on the input's grid."""
    return nifti_on_grid(_as_label_uint8(labels, volume.shape, "The label map"), volume)


def write_label_nifti(labels: np.ndarray, volume: Volume, path: str | os.PathLike[str]) -> Path:
    import nibabel as nib

    target = Path(path)
    if not target.name.lower().endswith((".nii", ".nii.gz")):
        raise InvalidImageError(f"A NIfTI label map needs a .nii or .nii.gz name, not '{target.name}'.")
    nib.save(label_map_nifti(labels, volume), str(target))
    return target


def labels_onto(volume: Volume, label_image: SpatialImage) -> np.ndarray:
    """Resample a label image onto the volume's voxels through both affines (nearest neighbour).

    Voxels of the volume that fall outside the label image get 0.
    """
    from scipy.ndimage import affine_transform

    data = np.asanyarray(label_image.dataobj)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim != 3:
        raise InvalidImageError(f"A label image must be 2-D or 3-D, got shape {data.shape}.")
    label_affine = np.asarray(label_image.affine, dtype=np.float64)
    values = _as_label_uint8(data, data.shape, "The label image")
    # volume voxel (col, row, z) -> world -> label voxel
    to_label = np.linalg.inv(label_affine) @ volume.affine
    z, h, w = volume.shape
    if values.shape == (w, h, z) and np.allclose(to_label, np.eye(4), atol=1e-4):
        return np.ascontiguousarray(values.transpose(2, 1, 0))  # same grid: nothing to resample
    out = affine_transform(
        values, to_label[:3, :3], offset=to_label[:3, 3], output_shape=(w, h, z), order=0, mode="constant", cval=0
    )
    result: np.ndarray = np.ascontiguousarray(out.transpose(2, 1, 0).astype(np.uint8))
    return result
