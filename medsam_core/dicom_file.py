"""One DICOM file's pixels as modality values, with plain errors: shared by the 2-D reader and the series reader.

Kept apart from ``imageio`` so the series reader (``dicom_series``) can use
these pieces without reaching into another module's private names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from medsam_core.errors import invalid_file

if TYPE_CHECKING:
    from pydicom.dataset import Dataset


def dicom_rescale(ds: Dataset) -> tuple[float, float]:
    """Top-level tags first, then the shared functional group used by enhanced multi-frame."""
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is None and "SharedFunctionalGroupsSequence" in ds:
        group = ds.SharedFunctionalGroupsSequence[0]
        if "PixelValueTransformationSequence" in group:
            pvt = group.PixelValueTransformationSequence[0]
            slope, intercept = pvt.get("RescaleSlope"), pvt.get("RescaleIntercept")
    return float(slope if slope not in (None, "") else 1.0), float(intercept if intercept not in (None, "") else 0.0)


def open_dicom(path: str, *, header_only: bool = False, shown: str | None = None) -> Dataset:
    """Parse with the same plain errors everywhere; ``header_only`` skips the pixel data (series checks),
    ``shown`` names the file in messages when ``path`` is a working copy."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=header_only)
    except InvalidDicomError:
        raise invalid_file(
            shown or path,
            "not a DICOM file (the 'DICM' marker is missing). Export it again from the "
            "PACS or viewer as a standard DICOM file.",
        ) from None
    except Exception as exc:
        raise invalid_file(
            shown or path, f"the DICOM file could not be parsed ({exc}); it is probably truncated or corrupt."
        ) from None


def require_pixels(path: str, ds: Dataset) -> None:
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise invalid_file(
            path,
            "this DICOM file holds no image (for example a report or structure set). Choose an image series instead.",
        )


def decode_dicom(path: str, ds: Dataset) -> np.ndarray:
    """The stored pixel array, with an actionable message for codecs we lack."""
    require_pixels(path, ds)
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    try:
        arr = ds.pixel_array
    except Exception as exc:
        if syntax is not None and syntax.is_compressed:
            raise invalid_file(
                path,
                f"its pixel data is compressed as '{syntax.name}', which cannot be decoded "
                f"here ({exc}). Convert it to uncompressed DICOM (e.g. 'gdcmconv --raw') or "
                "install a decoder such as pylibjpeg.",
            ) from None
        raise invalid_file(
            path, f"the DICOM pixel data could not be decoded ({exc}); the file is probably truncated or corrupt."
        ) from None
    result: np.ndarray = arr
    return result


def dicom_values(ds: Dataset, arr: np.ndarray) -> np.ndarray:
    """Stored values -> modality values (HU for CT), float32."""
    slope, intercept = dicom_rescale(ds)
    values: np.ndarray = arr.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    return values


def is_monochrome1(ds: Dataset) -> bool:
    return str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1"


def mirror(values: np.ndarray) -> np.ndarray:
    """MONOCHROME1 means "low = white". Mirroring within the volume's own range
    keeps the value span (and percentile contrast) while making bright mean
    dense, as in every other modality the model sees."""
    return (values.min() + values.max()) - values if values.size else values
