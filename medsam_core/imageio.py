"""Read medical and ordinary images into one slice-stack shape the engine understands.

Every reader funnels into ``(S, H, W)`` or ``(S, H, W, 3)`` so the rest of the
engine never branches on file format. Inputs come from untrusted uploads, so
sizes are checked from headers before any pixel data is decoded, and every
failure is an ``InvalidImageError`` whose message alone tells a clinician what
to fix.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from medsam_core.dicom_file import decode_dicom, dicom_values, is_monochrome1, mirror, open_dicom, require_pixels
from medsam_core.errors import InvalidImageError, invalid_file
from medsam_core.medical_image import MedicalImage

if TYPE_CHECKING:
    from nibabel.dataobj_images import DataobjImage
    from nibabel.spatialimages import SpatialImage

SUPPORTED_SUFFIXES: tuple[str, ...] = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".tif",
    ".tiff",
    ".npy",
    ".dcm",
    ".nii",
    ".nii.gz",
)
DEFAULT_MAX_PIXELS = 100_000_000
_VOLUME_FACTOR = 4

_SUFFIX_FORMATS = {
    ".png": "pillow",
    ".jpg": "pillow",
    ".jpeg": "pillow",
    ".bmp": "pillow",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".npy": "npy",
    ".dcm": "dicom",
    ".nii": "nifti",
    ".nii.gz": "nifti",
}
_PILLOW_FORMATS = {"PNG": "png", "JPEG": "jpeg", "BMP": "bmp"}
_EIGHT_BIT_MODES = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
_SUPPORTED_TEXT = (
    "Supported formats: " + ", ".join(SUPPORTED_SUFFIXES) + " (files without a suffix are recognised by their content)."
)


_fail = invalid_file  # the readers' one error shape; a short name for the many call sites here


def _check_plane_size(
    path: str, height: int, width: int, slices: int, max_pixels: int, max_voxels: int | None = None
) -> None:
    """Refuse oversize images from header numbers, before decoding allocates anything.

    ``max_voxels`` defaults to a multiple of the plane limit; volume readers pass their own.
    """
    if height * width > max_pixels:
        raise _fail(
            path,
            f"the image is {width} x {height} = {height * width:,} pixels per slice, "
            f"above the limit of {max_pixels:,}. Downsample it before uploading.",
        )
    total = height * width * slices
    limit = _VOLUME_FACTOR * max_pixels if max_voxels is None else max_voxels
    if total > limit:
        raise _fail(
            path,
            f"the volume has {slices} slices and {total:,} voxels in total, above the "
            f"limit of {limit:,}. Crop or downsample it.",
        )


def _finish(
    path: str, arr: np.ndarray, raw: bool, fmt: str, max_pixels: int, max_voxels: int | None = None
) -> MedicalImage:
    """Last shared gate: every reader's output is validated the same way."""
    if arr.dtype.kind == "b":
        arr = arr.astype(np.uint8) * 255
    if arr.dtype.kind not in "uif":
        raise _fail(path, f"pixel type {arr.dtype} is not a numeric image type.")
    if arr.ndim == 2:
        arr = arr[None]
    if not (arr.ndim == 3 or (arr.ndim == 4 and arr.shape[-1] == 3)):
        raise _fail(
            path, f"unexpected pixel array shape {arr.shape}; need a 2-D image, an RGB image or a stack of 2-D slices."
        )
    slices, height, width = arr.shape[:3]
    if height < 2 or width < 2 or slices < 1:
        raise _fail(path, f"the image is only {width} x {height} pixels; at least 2 x 2 is needed.")
    _check_plane_size(path, height, width, slices, max_pixels, max_voxels)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise _fail(
            path,
            "the image contains NaN or infinite values. Replace them with real numbers "
            "(for example with numpy.nan_to_num) and save it again.",
        )
    if not raw and arr.dtype != np.uint8:
        raw = True
    return MedicalImage(pixels=np.ascontiguousarray(arr), raw=raw, source_format=fmt)


def _read_pillow(path: str, max_pixels: int, sniffed: bool) -> MedicalImage:
    from PIL import Image

    try:
        with Image.open(path, formats=list(_PILLOW_FORMATS)) as im:
            width, height = im.size
            _check_plane_size(path, height, width, 1, max_pixels)
            fmt = _PILLOW_FORMATS.get(im.format or "", "png")
            if im.mode in _EIGHT_BIT_MODES:
                target = "L" if im.mode in ("1", "L", "LA", "La") else "RGB"
                arr, raw = np.asarray(im.convert(target)), False
            else:
                # I;16*, I and F modes keep their native depth for windowing.
                arr, raw = np.array(im), True
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _fail(
            path,
            f"the image header declares far more pixels than the limit of "
            f"{max_pixels:,} per slice (possible decompression bomb). "
            "Downsample it before uploading.",
        ) from None
    except InvalidImageError:
        raise
    except Exception as exc:  # Pillow signals corruption with many exception types
        if sniffed:
            raise _fail(path, f"the file type was not recognised. {_SUPPORTED_TEXT}") from None
        raise _fail(
            path,
            f"the image could not be decoded ({type(exc).__name__}: {exc}). The file is "
            "probably truncated or corrupt, or not really the type its name suggests; "
            "export it again.",
        ) from None
    return _finish(path, arr[None] if arr.ndim == 3 else arr, raw, fmt, max_pixels)


def _read_tiff(path: str, max_pixels: int) -> MedicalImage:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise _fail(path, "the TIFF file contains no image pages; export it again.")
            series = tif.series[0]
            shape, axes = tuple(series.shape), series.axes
            if "Y" in axes and "X" in axes:
                height, width = shape[axes.index("Y")], shape[axes.index("X")]
            else:
                height, width = shape[-2:] if len(shape) >= 2 else (1, 1)
            samples = shape[axes.index("S")] if "S" in axes else 1
            slices = int(np.prod(shape)) // max(1, height * width * samples)
            _check_plane_size(path, height, width, max(1, slices), max_pixels)
            arr = series.asarray()
    except InvalidImageError:
        raise
    except Exception as exc:
        raise _fail(
            path,
            f"the TIFF could not be decoded ({type(exc).__name__}: {exc}). It may be "
            "truncated, corrupt or use a compression that needs the 'imagecodecs' "
            "package; save it uncompressed and try again.",
        ) from None
    rgb = False
    if "S" in axes:
        arr = np.moveaxis(arr, axes.index("S"), -1)  # planar RGB -> channels-last
        n = arr.shape[-1]
        if n in (1, 2):
            arr = arr[..., 0]  # grey, or grey + alpha
        elif n in (3, 4):
            arr, rgb = arr[..., :3], True  # drop alpha
        else:
            raise _fail(path, f"TIFF with {n} samples per pixel is not supported; use grey or RGB.")
    spatial = 3 if rgb else 2
    if arr.ndim < spatial:
        raise _fail(path, f"TIFF pixel array has unexpected shape {arr.shape}.")
    # Pages, channels of a hyperstack, time points...: all become slices.
    lead = arr.shape[: arr.ndim - spatial]
    arr = arr.reshape((int(np.prod(lead)),) + arr.shape[arr.ndim - spatial :])
    return _finish(path, arr, arr.dtype not in (np.uint8, np.bool_), "tiff", max_pixels)


def _read_npy(path: str, max_pixels: int) -> MedicalImage:
    fmt = np.lib.format
    try:
        with open(path, "rb") as fh:
            version = fmt.read_magic(fh)
            reader = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _fortran, dtype = reader(fh)
    except Exception as exc:
        raise _fail(path, f"not a valid NumPy .npy file ({exc}). Save arrays with numpy.save.") from None
    if dtype.hasobject:
        raise _fail(
            path,
            "the array holds Python objects (pickled data), which are never loaded for "
            "safety. Save a plain numeric array, e.g. numpy.save(path, arr.astype('float32')).",
        )
    if dtype.kind not in "uifb":
        raise _fail(path, f"array type {dtype} is not a numeric image; use an integer or float array.")
    if len(shape) == 3 and shape[-1] == 1:
        shape = shape[:2]
    if len(shape) == 3 and shape[-1] != 3:
        hint = (
            " It looks channels-first; move the channel axis last with numpy.moveaxis(arr, 0, -1)."
            if shape[0] in (1, 3)
            else " For a 3-D volume, use NIfTI or DICOM."
        )
        raise _fail(path, f"array shape {shape} is not an image; expected H x W, H x W x 1 or H x W x 3.{hint}")
    if len(shape) not in (2, 3):
        raise _fail(path, f"array has {len(shape)} dimension(s) {shape}; expected H x W, H x W x 1 or H x W x 3.")
    _check_plane_size(path, int(shape[0]), int(shape[1]), 1, max_pixels)
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise _fail(path, f"the .npy data could not be read ({exc}); the file is probably truncated.") from None
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3:
        arr = arr[None]
    return _finish(path, arr, arr.dtype not in (np.uint8, np.bool_), "npy", max_pixels)


def _read_dicom(path: str, max_pixels: int) -> MedicalImage:
    ds = open_dicom(path)
    require_pixels(path, ds)
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    frames = int(ds.get("NumberOfFrames") or 1)
    _check_plane_size(path, rows, cols, frames, max_pixels)
    arr = decode_dicom(path, ds)
    samples = int(ds.get("SamplesPerPixel") or 1)
    if frames == 1:
        arr = arr[None]
    if samples == 3 and arr.dtype == np.uint8:
        # Colour DICOM (endoscopy, ultrasound) is display-ready like a photo.
        return _finish(path, arr, False, "dicom", max_pixels)
    values = dicom_values(ds, arr)
    if is_monochrome1(ds):
        values = mirror(values)
    return _finish(path, values, True, "dicom", max_pixels)


def _nifti_to_slices(path: str, img: DataobjImage, max_pixels: int, max_voxels: int | None = None) -> MedicalImage:
    shape = tuple(int(n) for n in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) not in (2, 3):
        raise _fail(
            path,
            f"NIfTI image has shape {tuple(img.shape)}; only 2-D images and 3-D volumes are "
            "supported. Split 4-D series into one volume per time point or channel.",
        )
    x, y = shape[0], shape[1]
    _check_plane_size(path, y, x, shape[2] if len(shape) == 3 else 1, max_pixels, max_voxels)
    arr = np.asarray(img.dataobj).reshape(shape)
    # (X, Y[, Z]) -> (Z, Y, X): rows are y, as SimpleITK's GetArrayFromImage gives.
    arr = arr.T if arr.ndim == 2 else np.transpose(arr, (2, 1, 0))
    return _finish(path, np.ascontiguousarray(arr), True, "nifti", max_pixels, max_voxels)


def _read_nifti_with_affine(
    path: str, max_pixels: int, stream_kind: str | None = None, max_voxels: int | None = None
) -> tuple[MedicalImage, np.ndarray]:
    """The slices plus the file's voxel -> world affine, for readers that keep geometry."""
    import nibabel as nib

    try:
        if stream_kind is None:
            # nibabel types load() as its base image class; a NIfTI file loads as a Nifti1/2Image.
            img = cast("SpatialImage", nib.load(path, mmap=False))
            return _nifti_to_slices(path, img, max_pixels, max_voxels), np.asarray(img.affine, dtype=np.float64)
        klass = nib.Nifti2Image if stream_kind.endswith("2") else nib.Nifti1Image
        opener = gzip.open if stream_kind.startswith("gz") else open
        with opener(path, "rb") as fh:
            img = klass.from_stream(fh)
            return _nifti_to_slices(path, img, max_pixels, max_voxels), np.asarray(img.affine, dtype=np.float64)
    except InvalidImageError:
        raise
    except Exception as exc:
        raise _fail(
            path,
            f"the NIfTI file could not be read ({type(exc).__name__}: {exc}); it is probably truncated or corrupt.",
        ) from None


def _nifti_magic(head: bytes) -> str | None:
    if head[344:348] == b"n+1\x00":
        return "1"
    if head[4:8] == b"n+2\x00":
        return "2"
    return None


def _sniff(path: str) -> tuple[str, str | None]:
    """Guess the reader from content for files whose name gives no hint (PACS exports, uploads)."""
    with open(path, "rb") as fh:
        head = fh.read(544)
    if head[128:132] == b"DICM":
        return "dicom", None
    if head.startswith(b"\x93NUMPY"):
        return "npy", None
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff", None
    kind = _nifti_magic(head)
    if kind:
        return "nifti", kind
    if head.startswith(b"\x1f\x8b"):
        try:
            with gzip.open(path, "rb") as gz:
                kind = _nifti_magic(gz.read(544))
        except (OSError, EOFError):
            kind = None
        if kind:
            return "nifti", "gz" + kind
        raise _fail(path, f"this is a gzip-compressed file but not a NIfTI image. {_SUPPORTED_TEXT}")
    return "pillow-sniffed", None


def _file_kind(shown: str) -> tuple[str, str | None]:
    """(reader, NIfTI stream kind) from the name, else from the content; empty files refused."""
    p = Path(shown)
    if p.stat().st_size == 0:
        raise _fail(shown, "the file is empty (0 bytes); the upload or export probably failed.")
    name = p.name.lower()
    suffix = ".nii.gz" if name.endswith(".nii.gz") else p.suffix.lower()
    kind = _SUFFIX_FORMATS.get(suffix)
    if kind is not None:
        return kind, None
    try:
        return _sniff(shown)
    except OSError as exc:
        raise _fail(shown, f"the file could not be opened ({exc.strerror or exc}).") from None


def read_image(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> MedicalImage:
    """Single entry point so every caller gets the same safety checks and layout."""
    shown = os.fspath(path)
    p = Path(shown)
    if not p.exists():
        raise InvalidImageError(f"Image file not found: {shown}. Check the path and try again.")
    if p.is_dir():
        raise _fail(
            shown, "this is a folder, not an image file. Choose one image file (for a DICOM series, one .dcm file)."
        )
    kind, stream = _file_kind(shown)
    if kind in ("pillow", "pillow-sniffed"):
        return _read_pillow(shown, max_pixels, sniffed=kind == "pillow-sniffed")
    if kind == "tiff":
        return _read_tiff(shown, max_pixels)
    if kind == "npy":
        return _read_npy(shown, max_pixels)
    if kind == "dicom":
        return _read_dicom(shown, max_pixels)
    return _read_nifti_with_affine(shown, max_pixels, stream)[0]
