"""A DICOM series (one file per slice, from a folder or a zip) read into one voxel grid with its geometry.

File order, names and InstanceNumber say nothing reliable about where a slice is; only
ImagePositionPatient projected on the slice normal does. A series that mixes acquisitions,
misses a slice or repeats one would give a volume whose geometry is a lie, and every 3-D
result computed on it would be silently wrong, so such uploads are refused with a message
saying what to fix. Headers are checked before any pixel data is decoded.

``medsam_core.volume`` wraps the result in a ``Volume``; this module does not import it.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medsam_core.dicom_file import decode_dicom, dicom_values, is_monochrome1, mirror, open_dicom
from medsam_core.errors import InvalidImageError
from medsam_core.imageio import _check_plane_size, _fail, _finish

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

MAX_SERIES_FILES = 4096
# Orientation cosines and spacings agree to this within one series; scanners write ~6 decimals.
_COSINE_TOL = 1e-4
_SPACING_RTOL = 1e-4
# Slice gaps may jitter by rounding in ImagePositionPatient, but a missing slice doubles one.
_GAP_ABS_MM, _GAP_REL = 0.02, 0.01
_DUPLICATE_MM = 1e-3
_GEOMETRY_TAGS = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")
_FIX = "Upload the complete series, exported again from the PACS or viewer."


def _skipped(name: str) -> bool:
    """OS and media-directory clutter that travels with exported series."""
    parts = name.replace("\\", "/").split("/")
    return parts[-1].startswith(".") or parts[-1].upper() == "DICOMDIR" or "__MACOSX" in parts


def folder_files(folder: Path) -> list[tuple[Path, str]]:
    """(file, name relative to the folder), sorted, subfolders included, bounded in count."""
    found: list[tuple[Path, str]] = []
    for p in sorted(folder.rglob("*")):
        name = p.relative_to(folder).as_posix()
        if p.is_file() and not _skipped(name):
            found.append((p, name))
            if len(found) > MAX_SERIES_FILES:
                raise _fail(str(folder), f"more than {MAX_SERIES_FILES} files; one series has at most that many.")
    return found


@dataclass(frozen=True, eq=False)
class Series:
    """What a ``Volume`` needs from a series: values in slice order and where they sit."""

    pixels: np.ndarray
    affine: np.ndarray
    modality: str
    slice_positions: tuple[float, ...]
    sop_instance_uids: tuple[str, ...]
    series_instance_uid: str | None


def zip_files(path: Path, workdir: Path, *, max_voxels: int) -> list[tuple[Path, str]]:
    """Extract a zip's files into ``workdir`` under numbered names (entry names never become paths),
    within a byte budget that a real series of ``max_voxels`` voxels fits."""
    shown = os.fspath(path)
    budget = 4 * max_voxels + (256 << 20)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir() and not _skipped(i.filename)]
            if len(infos) > MAX_SERIES_FILES:
                raise _fail(shown, f"the zip holds {len(infos)} files; one series has at most {MAX_SERIES_FILES}.")
            if sum(i.file_size for i in infos) > budget:
                raise _fail(shown, f"the zip unpacks to more than {budget:,} bytes, too much for one series.")
            out = []
            for n, info in enumerate(infos):
                if info.flag_bits & 0x1:
                    raise _fail(shown, f"{info.filename} is encrypted; zip the series without a password.")
                target = workdir / f"{n:05d}.dcm"
                with zf.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                out.append((target, info.filename))
    except zipfile.BadZipFile as exc:
        raise _fail(shown, f"the zip could not be read ({exc}); it is probably truncated or corrupt.") from None
    return out


def deidentified_copies(
    files: Sequence[tuple[Path, str]], out_dir: Path, *, keep_identifiers: bool = False, uid_salt: str = ""
) -> list[tuple[Path, str]]:
    """De-identify each slice as a single upload is (same salt, so slices stay one series), for the
    store to keep and read; the geometry and pixel tags pass through unchanged."""
    from medsam_core.deidentify import deidentify_dicom_file

    out = []
    for n, (path, name) in enumerate(files):
        target = out_dir / f"{n:05d}.dcm"
        try:
            deidentify_dicom_file(path, target, keep_identifiers=keep_identifiers, uid_salt=uid_salt)
        except InvalidImageError as exc:
            raise InvalidImageError(f"{name}: {exc}") from None
        out.append((target, name))
    _repair_uids([p for p, _ in out], uid_salt)
    return out


def instance_uid(ds: Dataset, keyword: str = "SOPInstanceUID") -> str:
    """SOP Instance/Class UID, from the file meta when the dataset's own copy is empty (seen in real exports)."""
    value = str(ds.get(keyword) or "")
    meta = getattr(ds, "file_meta", None)
    if not value and meta is not None:
        value = str(meta.get("MediaStorage" + keyword) or "")
    return value


def _repair_uids(paths: list[Path], salt: str) -> None:
    """Stored copies get the UIDs that a DICOM-SEG must reference and that some exports leave empty:
    instance and class UIDs from the file meta, and one series and study UID per upload, derived from
    its instances so the same upload always gets the same ones."""
    import pydicom

    from medsam_core.deidentify import _new_uid

    heads = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    seed = "|".join(sorted(instance_uid(ds) for ds in heads))
    made = {kw: _new_uid(f"{kw}|{seed}", salt) for kw in ("SeriesInstanceUID", "StudyInstanceUID")}
    for path, head in zip(paths, heads, strict=True):
        keywords = ("SOPInstanceUID", "SOPClassUID", "SeriesInstanceUID", "StudyInstanceUID")
        if all(head.get(kw) for kw in keywords):
            continue
        ds = pydicom.dcmread(path)
        for kw in ("SOPInstanceUID", "SOPClassUID"):
            setattr(ds, kw, instance_uid(ds, kw))
        for kw, uid in made.items():
            if not ds.get(kw):
                setattr(ds, kw, uid)
        ds.save_as(path, enforce_file_format=True)


def _floats(ds: Dataset, tag: str, n: int, name: str, shown: str) -> np.ndarray:
    try:
        values = np.array([float(v) for v in ds[tag].value], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        values = np.zeros(0)
    if values.shape != (n,) or not np.isfinite(values).all():
        raise _fail(shown, f"{name} has no valid {tag}, so its slice cannot be placed in space. {_FIX}")
    return values


def _headers(files: Sequence[tuple[Path, str]], shown: str) -> list[Dataset]:
    headers = []
    for path, name in files:
        try:
            ds = open_dicom(os.fspath(path), header_only=True, shown=f"{shown}/{name}")
        except InvalidImageError as exc:
            raise InvalidImageError(
                f"{exc} A series folder or zip must hold only the DICOM files of one series."
            ) from None
        missing = [tag for tag in _GEOMETRY_TAGS if ds.get(tag) in (None, "")]
        if missing:
            raise _fail(shown, f"{name} lacks {', '.join(missing)}, so its slice cannot be placed in space. {_FIX}")
        if int(ds.get("NumberOfFrames") or 1) != 1 or int(ds.get("SamplesPerPixel") or 1) != 1:
            raise _fail(
                shown,
                f"{name} is a multi-frame or colour image; volumes are read from series of single-frame "
                "greyscale slices. Convert it to NIfTI (for example with dcm2niix) or open it as a 2-D image.",
            )
        headers.append(ds)
    return headers


def _check_one_series(headers: list[Dataset], names: list[str], shown: str) -> None:
    series: dict[str, list[str]] = {}
    for ds, name in zip(headers, names, strict=True):
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(name)
    if len(series) > 1:
        groups = sorted(series.values(), key=len, reverse=True)
        counts = " + ".join(str(len(g)) for g in groups)
        raise _fail(
            shown,
            f"the files belong to {len(series)} different series ({counts} files; e.g. {groups[0][0]} and "
            f"{groups[1][0]}). Upload one series at a time.",
        )


def _check_same_grid(headers: list[Dataset], names: list[str], shown: str) -> tuple[np.ndarray, np.ndarray]:
    """(orientation cosines, pixel spacing) shared by every slice."""
    iop = _floats(headers[0], "ImageOrientationPatient", 6, names[0], shown)
    spacing = _floats(headers[0], "PixelSpacing", 2, names[0], shown)
    size = (int(headers[0].Rows), int(headers[0].Columns))
    for ds, name in zip(headers[1:], names[1:], strict=True):
        if not np.allclose(_floats(ds, "ImageOrientationPatient", 6, name, shown), iop, atol=_COSINE_TOL):
            raise _fail(shown, f"{name} and {names[0]} differ in orientation; a series has one orientation. {_FIX}")
        if (int(ds.Rows), int(ds.Columns)) != size:
            raise _fail(
                shown,
                f"{name} is {ds.Columns} x {ds.Rows} pixels but {names[0]} is {size[1]} x {size[0]}; "
                f"a series has one image size. {_FIX}",
            )
        if not np.allclose(_floats(ds, "PixelSpacing", 2, name, shown), spacing, rtol=_SPACING_RTOL, atol=0):
            raise _fail(shown, f"{name} and {names[0]} differ in pixel spacing; a series has one. {_FIX}")
    return iop, spacing


def _slice_order(
    headers: list[Dataset], names: list[str], normal: np.ndarray, shown: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order, sorted positions along the normal, sorted ImagePositionPatient), gaps checked."""
    ipp = np.stack([_floats(ds, "ImagePositionPatient", 3, n, shown) for ds, n in zip(headers, names, strict=True)])
    along = ipp @ normal
    order = np.argsort(along, kind="stable")
    pos, pts = along[order], ipp[order]
    gaps = np.diff(pos)
    for i in np.flatnonzero(gaps < _DUPLICATE_MM):
        a, b = names[order[i]], names[order[i + 1]]
        raise _fail(shown, f"{a} and {b} are at the same position ({pos[i]:.2f} mm); remove the duplicate slice.")
    if gaps.size:
        median = float(np.median(gaps))
        tol = max(_GAP_ABS_MM, _GAP_REL * median)
        bad = np.flatnonzero(np.abs(gaps - median) > tol)
        if bad.size:
            k = int(bad[0])
            raise _fail(
                shown,
                f"the slice spacing is not constant: {gaps[k]:.3f} mm between {names[order[k]]} and "
                f"{names[order[k + 1]]}, {median:.3f} mm elsewhere. A slice is probably missing. {_FIX}",
            )
        step = (pts[-1] - pts[0]) / (len(pts) - 1)
        drift = np.linalg.norm(pts - (pts[0] + np.arange(len(pts))[:, None] * step), axis=1)
        if float(drift.max()) > tol:
            raise _fail(shown, f"the slices do not lie on one straight line (off by {drift.max():.2f} mm). {_FIX}")
    return order, pos, pts


def _affine(iop: np.ndarray, spacing: np.ndarray, pts: np.ndarray, normal: np.ndarray, ds: Dataset) -> np.ndarray:
    """Voxel (column, row, slice) -> RAS+: DICOM's LPS with x and y negated, as dcm2niix and ITK write it.

    The slice axis is the mean step between neighbours, so a constant gantry tilt keeps its true (sheared)
    geometry; without tilt it is the normal times the slice spacing, exactly ITK's.
    """
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * spacing[1]  # along a row: next column; PixelSpacing is (row gap, column gap)
    lps[:3, 1] = iop[3:] * spacing[0]
    if len(pts) > 1:
        lps[:3, 2] = (pts[-1] - pts[0]) / (len(pts) - 1)
    else:
        thickness = ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0
        lps[:3, 2] = normal * float(thickness)
    lps[:3, 3] = pts[0]
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _pixels(files: list[tuple[Path, str]], shape: tuple[int, int], shown: str, max_voxels: int) -> np.ndarray:
    out = np.empty((len(files), *shape), dtype=np.float32)
    mono1 = False
    for z, (path, name) in enumerate(files):
        label = f"{shown}/{name}"
        ds = open_dicom(os.fspath(path), shown=label)
        arr = decode_dicom(label, ds)
        if arr.shape != shape:
            raise _fail(label, f"the pixel data is {arr.shape}, not the {shape} its header declares.")
        out[z] = dicom_values(ds, arr)
        mono1 = mono1 or is_monochrome1(ds)
    if mono1:  # mirrored over the whole series, so every slice keeps the same value scale
        out = mirror(out)
    return _finish(shown, out, True, "dicom", max_voxels, max_voxels).pixels


def read_series_files(files: Sequence[tuple[Path, str]], *, max_voxels: int, shown: str | None = None) -> Series:
    """``files`` are (path to read, name to show); ``shown`` names the whole upload in messages."""
    files = list(files)
    where = shown or (os.fspath(files[0][0].parent) if files else "the series")
    if not files:
        raise _fail(where, "no DICOM files were found. Choose a folder or zip holding one DICOM series.")
    if len(files) > MAX_SERIES_FILES:
        raise _fail(where, f"{len(files)} files; one series has at most {MAX_SERIES_FILES}.")
    names = [name for _, name in files]
    headers = _headers(files, where)
    _check_one_series(headers, names, where)
    iop, spacing = _check_same_grid(headers, names, where)
    rows, cols = int(headers[0].Rows), int(headers[0].Columns)
    _check_plane_size(where, rows, cols, len(files), max_voxels, max_voxels)
    normal = np.cross(iop[:3], iop[3:])
    if not 0.99 < float(np.linalg.norm(normal)) < 1.01:
        raise _fail(where, f"ImageOrientationPatient is not two perpendicular unit vectors. {_FIX}")
    order, pos, pts = _slice_order(headers, names, normal, where)
    ordered = [files[i] for i in order]
    first = headers[int(order[0])]
    return Series(
        pixels=_pixels(ordered, (rows, cols), where, max_voxels),
        affine=_affine(iop, spacing, pts, normal, first),
        modality=str(first.get("Modality") or "other"),
        slice_positions=tuple(float(p) for p in pos),
        sop_instance_uids=tuple(instance_uid(headers[i]) for i in order),
        series_instance_uid=str(first.get("SeriesInstanceUID", "")) or None,
    )
