"""Volumes as first-class data: adding one from an upload, finding it, and reading it back from blobs.

A volume's stored copy: a NIfTI file is one blob; a DICOM series is one
de-identified file per slice, each stored as its own blob and pointed at by
its slice row. One blob per slice rather than a zip: the 2-D tools open a
slice as the single DICOM file it is, identical files dedupe in the blob
store, and DICOM-SEG export gets the exact de-identified datasets back with
no archive to unpack. Every volume has one ``Image`` row per slice, so the 2-D
tools, the annotation queue and the embedding cache work on slices unchanged:
a slice displays (and so encodes) exactly as ``Volume.slice_image(z)`` shows
it, which for NIfTI is what its per-slice row always showed.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from medsam_core.dicom_series import (
    MAX_SERIES_FILES,
    deidentified_copies,
    zip_files,
)
from medsam_core.digests import file_sha256
from medsam_core.errors import InvalidImageError
from medsam_core.imageio import DEFAULT_MAX_PIXELS
from medsam_core.volume import DEFAULT_MAX_VOXELS, Volume, read_volume, series_volume
from medsam_core.windows import window_bounds
from portal.store.blobs import BlobStore
from portal.store.errors import StoreError
from portal.store.models import Image, Project, User
from portal.store.models import Volume as VolumeRow
from portal.store.services.audit import record
from portal.store.services.images import dicom_name, safe_filename
from portal.store.services.projects import get_project, not_found
from portal.store.settings import Settings


@dataclass(frozen=True)
class AddedVolume:
    """What an upload did: the volume, its slice rows (Z order), and whether the project held it already."""

    volume: VolumeRow
    slices: list[Image]
    new: bool


def max_voxels(settings: Settings) -> int:
    """The voxel limit scales with the per-slice pixel limit, as the 2-D reader's volume limit does."""
    return DEFAULT_MAX_VOXELS * settings.max_image_pixels // DEFAULT_MAX_PIXELS


def _named_error(exc: InvalidImageError, names: dict[Path, str]) -> InvalidImageError:
    """The readers name the files they opened, our temporary copies; people know them by their own names."""
    text = str(exc)
    for path, name in sorted(names.items(), key=lambda kv: -len(str(kv[0]))):
        text = text.replace(str(path), name).replace(path.name, name)
    return InvalidImageError(text)


def add_volume(
    db: Session,
    blobs: BlobStore,
    settings: Settings,
    actor: User,
    project_id: int,
    files: Sequence[Path],
    names: Sequence[str] | None = None,
    window: str | None = None,
) -> AddedVolume:
    """Store one NIfTI file, or one DICOM series (its files, or one zip of them), as a volume; the same
    content again is found, not added (``new`` False). ``names``: what the uploader called each file.

    Everything is read and checked before anything is stored, so a refused
    upload writes nothing; then blobs, then rows (a crash leaves orphan blobs
    for ``medsam db gc``, never a dangling row).
    """
    project = get_project(db, actor, project_id)
    if window is not None:
        window_bounds(window)  # an unknown window name fails here, before any file is read
    files = [Path(f) for f in files]
    shown = list(names) if names is not None else [f.name for f in files]
    if len(shown) != len(files):
        raise ValueError("one name per file")
    if not files:
        raise StoreError("no files: upload one NIfTI file, or the DICOM files (or a zip) of one series")
    if len(files) > MAX_SERIES_FILES:
        raise StoreError(f"{len(files)} files in one upload; a series may have at most {MAX_SERIES_FILES}")
    kinds = {_kind(f) for f in files}
    if len(files) > 1 and kinds != {"dicom"}:
        raise StoreError(
            "upload one NIfTI file, one zip of a DICOM series, or the DICOM files of one series: not a mixture"
        )
    if kinds == {"nifti"}:
        return _add_nifti(db, blobs, settings, actor, project, files[0], shown[0], window)
    with tempfile.TemporaryDirectory(prefix="series-", dir=_scratch(settings)) as tmp:
        work = Path(tmp)
        if kinds == {"zip"}:
            (work / "zip").mkdir()
            series = zip_files(files[0], work / "zip", max_voxels=max_voxels(settings))
            upload_name = safe_filename(shown[0])
        else:
            series = list(zip(files, shown, strict=True))
            upload_name = safe_filename(shown[0])
        (work / "stored").mkdir()
        try:
            stored = deidentified_copies(series, work / "stored", keep_identifiers=settings.keep_dicom_identifiers)
            volume = series_volume(stored, max_voxels=max_voxels(settings), shown=upload_name)
            _check(volume)
        except InvalidImageError as exc:
            raise _named_error(exc, {files[0]: upload_name, work: "the series"}) from None
        return _add_series(db, blobs, actor, project, volume, stored, upload_name, window)


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    return "zip" if name.endswith(".zip") else "dicom"


def _check(volume: Volume) -> None:
    if volume.num_slices < 2:
        raise InvalidImageError(
            "this holds one slice, not a volume; upload it as an image, or upload every slice of the series"
        )


def _add_nifti(
    db: Session,
    blobs: BlobStore,
    settings: Settings,
    actor: User,
    project: Project,
    path: Path,
    name: str,
    window: str | None,
) -> AddedVolume:
    try:
        volume = read_volume(path, max_voxels=max_voxels(settings))
        _check(volume)
    except InvalidImageError as exc:
        raise _named_error(exc, {path: name}) from None
    sha = file_sha256(path)
    found = _existing(db, project.id, sha)
    if found is not None:
        return found
    filename = safe_filename(name)
    adopted = _adopt_slices(db, project.id, sha)  # rows of a 2-D upload of this file: they become its slices
    blob = blobs.put_file(path)[0] if not adopted else adopted[0].blob_sha
    row = _volume_row(project, actor, volume, filename, sha, blob, window)
    db.add(row)
    db.flush()
    if adopted:
        for image in adopted:
            image.volume_id = row.id
        slices = adopted
    else:
        slices = _slice_rows(db, project, actor, row, [blob] * volume.num_slices, [filename] * volume.num_slices)
    _record(db, actor, row, len(slices))
    return AddedVolume(row, slices, new=True)


def _add_series(
    db: Session,
    blobs: BlobStore,
    actor: User,
    project: Project,
    volume: Volume,
    stored: list[tuple[Path, str]],
    upload_name: str,
    window: str | None,
) -> AddedVolume:
    ordered, uids = _in_z_order(volume, stored)
    digests = [file_sha256(path) for path, _ in ordered]
    sha = hashlib.sha256("\n".join(digests).encode()).hexdigest()
    found = _existing(db, project.id, sha)
    if found is not None:
        return found
    slice_names = [
        safe_filename(name) if project.keep_original_names else dicom_name(path, digest)
        for (path, name), digest in zip(ordered, digests, strict=True)
    ]
    slice_blobs = [blobs.put_file(path)[0] for path, _ in ordered]
    filename = upload_name if project.keep_original_names else _series_name(slice_names[0])
    row = _volume_row(project, actor, volume, filename, sha, None, window)
    row.sop_instance_uids = uids
    db.add(row)
    db.flush()
    slices = _slice_rows(db, project, actor, row, slice_blobs, slice_names)
    _record(db, actor, row, len(slices))
    return AddedVolume(row, slices, new=True)


def _scratch(settings: Settings) -> Path:
    folder = settings.data_dir / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _in_z_order(volume: Volume, stored: list[tuple[Path, str]]) -> tuple[list[tuple[Path, str]], list[str]]:
    """The stored files in the volume's slice order, and each one's SOP instance UID.

    Placed through the geometry (ImagePositionPatient into the volume's voxel
    space), not by UID: real exports leave SOPInstanceUID empty (the shared CT
    series does) and keep it only in the file meta, which is used then.
    """
    import pydicom

    to_voxel = np.linalg.inv(volume.affine)
    placed: dict[int, tuple[Path, str, str]] = {}
    for path, name in stored:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        lps = [float(v) for v in ds.ImagePositionPatient]
        z = int(round(float((to_voxel @ np.array([-lps[0], -lps[1], lps[2], 1.0]))[2])))
        uid = str(ds.get("SOPInstanceUID") or ds.file_meta.get("MediaStorageSOPInstanceUID") or "")
        if z in placed or not 0 <= z < volume.num_slices:
            raise InvalidImageError(f"'{name}' does not fit the series' slice positions; upload each slice once")
        placed[z] = (path, name, uid)
    if len(placed) != volume.num_slices:
        raise InvalidImageError(f"{len(stored)} files were uploaded but the series reads as {volume.num_slices} slices")
    ordered = [placed[z] for z in range(volume.num_slices)]
    return [(path, name) for path, name, _ in ordered], [uid for _, _, uid in ordered]


def _series_name(slice_name: str) -> str:
    """A series' name from its first slice's de-identified one, without the instance part."""
    return re.sub(r"_instance[A-Za-z0-9]*(?=\.dcm$)", "", slice_name)


def _existing(db: Session, project_id: int, sha: str) -> AddedVolume | None:
    row = db.scalar(select(VolumeRow).where(VolumeRow.project_id == project_id, VolumeRow.sha256 == sha))
    return None if row is None else AddedVolume(row, slice_rows(db, row.id), new=False)


def _adopt_slices(db: Session, project_id: int, sha: str) -> list[Image]:
    return list(
        db.scalars(
            select(Image)
            .where(Image.project_id == project_id, Image.sha256 == sha, Image.volume_id.is_(None))
            .order_by(Image.slice_index)
        )
    )


def _volume_row(
    project: Project, actor: User, volume: Volume, filename: str, sha: str, blob: str | None, window: str | None
) -> VolumeRow:
    depth, height, width = volume.shape
    row = VolumeRow(
        project_id=project.id,
        filename=filename,
        sha256=sha,
        blob_sha=blob,
        source_format=volume.source_format,
        modality=volume.modality if volume.modality != "other" else project.modality,
        window=window,
        depth=depth,
        height=height,
        width=width,
        uploaded_by=actor.id,
    )
    set_geometry(row, volume)
    return row


def set_geometry(row: VolumeRow, volume: Volume) -> None:
    row.affine = [[float(v) for v in r] for r in volume.affine]
    row.spacing = [float(v) for v in volume.spacing]
    row.orientation = "".join(volume.orientation)
    row.slice_positions = None if volume.slice_positions is None else [float(v) for v in volume.slice_positions]
    row.sop_instance_uids = None if volume.sop_instance_uids is None else list(volume.sop_instance_uids)
    row.series_instance_uid = volume.series_instance_uid


def _slice_rows(
    db: Session, project: Project, actor: User, row: VolumeRow, blobs: list[str], names: list[str]
) -> list[Image]:
    rows = [
        Image(
            project_id=project.id,
            filename=name,
            sha256=row.sha256,
            blob_sha=blob,
            width=row.width,
            height=row.height,
            modality=project.modality,
            window=row.window,
            slice_index=z,
            num_slices=row.depth,
            uploaded_by=actor.id,
            volume_id=row.id,
        )
        for z, (blob, name) in enumerate(zip(blobs, names, strict=True))
    ]
    db.add_all(rows)
    db.flush()
    return rows


def _record(db: Session, actor: User, row: VolumeRow, slices: int) -> None:
    record(
        db,
        actor,
        "volume.upload",
        "volume",
        row.id,
        row.project_id,
        filename=row.filename,
        sha256=row.sha256,
        slices=slices,
        format=row.source_format,
    )


def get_volume(db: Session, actor: User | None, volume_id: int) -> VolumeRow:
    """The row, if ``actor`` may see its project (``None``: a trusted caller, a worker)."""
    row = db.get(VolumeRow, volume_id)
    if actor is None:
        if row is None:
            raise not_found(f"volume {volume_id}", trusted=True)
        return row
    if row is None:  # what get_project answers for it
        raise not_found(f"volume {volume_id}")
    get_project(db, actor, row.project_id, what=f"volume {volume_id}")
    return row


def list_volumes(db: Session, actor: User, project_id: int) -> list[VolumeRow]:
    get_project(db, actor, project_id)
    return list(db.scalars(select(VolumeRow).where(VolumeRow.project_id == project_id).order_by(VolumeRow.id)))


def slice_rows(db: Session, volume_id: int) -> list[Image]:
    return list(db.scalars(select(Image).where(Image.volume_id == volume_id).order_by(Image.slice_index)))


def slice_row(db: Session, volume: VolumeRow, z: int) -> Image:
    if not 0 <= z < volume.depth:
        raise StoreError(f"slice {z} is out of range: volume {volume.id} has slices 0 to {volume.depth - 1}")
    row = db.scalar(select(Image).where(Image.volume_id == volume.id, Image.slice_index == z))
    if row is None:
        raise not_found(f"slice {z} of volume {volume.id}", trusted=True)
    return row


def delete_volume(db: Session, actor: User, volume_id: int) -> None:
    """Its slices, their masks and annotations, and its 3-D label maps cascade; blobs go at the next gc."""
    from portal.store.models import Role
    from portal.store.services.users import require_role

    require_role(actor, Role.admin, Role.reviewer, doing="delete volumes")
    row = get_volume(db, actor, volume_id)
    record(db, actor, "volume.delete", "volume", volume_id, row.project_id, filename=row.filename, sha256=row.sha256)
    db.delete(row)
