"""3-D labels of a DICOM series as a DICOM Segmentation object, and back.

A DICOM-SEG is what a PACS, OHIF or 3D Slicer loads next to the series it was drawn on: it
references each source slice by SOPInstanceUID, so it must be written against the very
datasets the portal stores (the de-identified copies), in the volume's slice order.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medsam_core.errors import InvalidImageError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from medsam_core.volume import Volume

# The label value rides along as the segment's tracking ID, so a read-back restores the values.
_TRACKING = "medsam label {}"
_TRACKING_RE = re.compile(r"^medsam label (\d+)$")
_POSITION_TOL_MM = 0.01


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("medsam-portal")
    except PackageNotFoundError:
        return "unknown"


def source_datasets(paths: Sequence[str | os.PathLike[str]], volume: Volume) -> list[Dataset]:
    """The series' headers in the volume's slice order, as ``write_dicom_seg`` needs them."""
    import pydicom

    if volume.sop_instance_uids is None:
        raise InvalidImageError("Only a volume read from a DICOM series can be exported as DICOM-SEG.")
    from medsam_core.dicom_series import instance_uid

    by_uid = {}
    for p in paths:
        ds = pydicom.dcmread(os.fspath(p), stop_before_pixels=True)
        ds.SOPInstanceUID, ds.SOPClassUID = instance_uid(ds), instance_uid(ds, "SOPClassUID")
        if not (ds.get("StudyInstanceUID") and ds.get("SeriesInstanceUID")):
            raise InvalidImageError(
                "The series has no Study or Series Instance UID, so a DICOM-SEG cannot reference it. "
                "Upload the series again: stored copies are given the UIDs that the export left empty."
            )
        by_uid[str(ds.SOPInstanceUID)] = ds
    missing = [uid for uid in volume.sop_instance_uids if uid not in by_uid]
    if missing:
        raise InvalidImageError(f"{len(missing)} slice(s) of the volume are not among the given DICOM files.")
    return [by_uid[uid] for uid in volume.sop_instance_uids]


def write_dicom_seg(
    labels: np.ndarray,
    label_names: dict[int, str],
    source: list[Dataset],
    path: str | os.PathLike[str],
) -> Path:
    """One segment per named label value, frames referencing ``source`` (Z order, as the volume's slices)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    arr = np.asarray(labels)
    if arr.ndim != 3 or arr.shape[0] != len(source):
        raise InvalidImageError(f"The label map is {arr.shape}; the series has {len(source)} slice(s).")
    values = sorted(v for v in label_names if 0 < v < 256)
    if not values:
        raise InvalidImageError("Nothing to export: no label values from 1 to 255 were named.")
    unnamed = sorted(set(np.unique(arr).tolist()) - {0, *values})
    if unnamed:
        raise InvalidImageError(f"Label value(s) {unnamed} have no name; name every label before exporting.")
    lut = np.zeros(256, dtype=np.uint8)
    lut[values] = np.arange(1, len(values) + 1)
    segments = lut[arr.astype(np.uint8)]
    algorithm = hd.AlgorithmIdentificationSequence(
        name="MedSAM", family=codes.cid7162.ArtificialIntelligence, version=_version()
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n,
            segment_label=label_names[v][:64] or f"label {v}",
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
            algorithm_identification=algorithm,
            tracking_id=_TRACKING.format(v),
            tracking_uid=hd.UID(),
        )
        for n, v in enumerate(values, start=1)
    ]
    seg = hd.seg.Segmentation(
        source_images=source,
        pixel_array=segments,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="medsam-portal",
        manufacturer_model_name="MedSAM",
        software_versions=_version(),
        device_serial_number="none",
    )
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:  # never a half-written SEG under the real name
        seg.save_as(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _slice_of(frame: Dataset, volume: Volume, uid_index: dict[str, int], normal: np.ndarray) -> int | None:
    """By the referenced source SOP instance, else by the frame's position along the slice normal."""
    for derivation in frame.get("DerivationImageSequence", []):
        for src in derivation.get("SourceImageSequence", []):
            z = uid_index.get(str(src.ReferencedSOPInstanceUID))
            if z is not None:
                return z
    if "PlanePositionSequence" not in frame or volume.slice_positions is None:
        return None
    along = float(np.asarray(frame.PlanePositionSequence[0].ImagePositionPatient, dtype=float) @ normal)
    gaps = np.abs(np.asarray(volume.slice_positions) - along)
    z = int(np.argmin(gaps))
    return z if gaps[z] <= _POSITION_TOL_MM else None


def read_dicom_seg_onto(path: str | os.PathLike[str], volume: Volume) -> np.ndarray:
    """The SEG's segments painted onto the volume's (Z, H, W) grid with their label values."""
    import highdicom as hd

    seg = hd.seg.segread(os.fspath(path))
    if (int(seg.Rows), int(seg.Columns)) != volume.shape[1:]:
        raise InvalidImageError(f"The DICOM-SEG is {seg.Columns} x {seg.Rows}; the volume's slices are not.")
    value_of = {}
    for desc in seg.SegmentSequence:
        match = _TRACKING_RE.match(str(desc.get("TrackingID", "")))
        value_of[int(desc.SegmentNumber)] = int(match.group(1)) if match else int(desc.SegmentNumber)
    uid_index = {uid: z for z, uid in enumerate(volume.sop_instance_uids or ())}
    # The slice normal in LPS (row cosine x column cosine), as slice_positions were projected on it;
    # the affine's third column is not it when a gantry tilt shears the grid.
    lps = np.diag([-1.0, -1.0, 1.0]) @ volume.affine[:3, :2]
    normal = np.cross(lps[:, 0], lps[:, 1])
    normal /= np.linalg.norm(normal)
    frames = seg.pixel_array.reshape(-1, *volume.shape[1:])
    shared = seg.SharedFunctionalGroupsSequence[0]
    out = np.zeros(volume.shape, dtype=np.uint8)
    for frame, pixels in zip(seg.PerFrameFunctionalGroupsSequence, frames, strict=True):
        z = _slice_of(frame, volume, uid_index, normal)
        if z is None:
            raise InvalidImageError("The DICOM-SEG has a frame that lies on none of this volume's slices.")
        # A one-segment SEG may state its segment once, in the shared groups.
        ident = frame.get("SegmentIdentificationSequence") or shared.SegmentIdentificationSequence
        number = int(ident[0].ReferencedSegmentNumber)
        out[z][pixels > 0] = value_of[number]
    return out
