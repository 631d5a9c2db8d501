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

from sqlalchemy import select
from sqlalchemy.orm import Session

from medsam_core.digests import file_sha256
from medsam_core.errors import InvalidImageError
from medsam_core.imageio import DEFAULT_MAX_PIXELS
from medsam_core.volume import DEFAULT_MAX_VOXELS, Volume, read_dicom_series, read_volume
from portal.store.blobs import BlobStore
from portal.store.errors import StoreError
from portal.store.models import Image, Project, User
from portal.store.models import Volume as VolumeRow
from portal.store.services.audit import record
from portal.store.services.images import dicom_name, safe_filename
from portal.store.services.projects import get_project, not_found
from portal.store.settings import Settings

MAX_SERIES_FILES = 2000  # slices of one uploaded series; bounds the work of one request


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
    """Store one NIfTI file or the DICOM files of one series as a volume; the same content again is found,
    not added (``new`` False).

    Everything is read and checked before anything is stored, so a refused
    upload writes nothing; then blobs, then rows (a crash leaves orphan blobs
    for ``medsam db gc``, never a dangling row).
    """
    project = get_project(db, actor, project_id)
    files = [Path(f) for f in files]
    shown = dict(zip(files, names or [f.name for f in files], strict=True))
    if not files:
        raise StoreError("no files: upload one NIfTI file, or the DICOM files (or a zip) of one series")
    if len(files) > MAX_SERIES_FILES:
        raise StoreError(f"{len(files)} files in one upload; a series may have at most {MAX_SERIES_FILES}")
    nifti = [f for f in files if f.name.lower().endswith((".nii", ".nii.gz"))]
    if nifti and len(files) > 1:
        raise StoreError("upload one NIfTI file on its own, or the DICOM files of one series: not a mixture")
    if nifti:
        return _add_nifti(db, blobs, settings, actor, project, files[0], shown[files[0]], window)
    return _add_series(db, blobs, settings, actor, project, files, shown, window)


def _check(volume: Volume, window: str | None) -> None:
    if volume.num_slices < 2:
        raise InvalidImageError(
            "this holds one slice, not a volume; upload it as an image, or upload every slice of the series"
        )
    if window is not None:
        volume.slice_image(0).display(window=window)  # an unknown window name fails here, before any write


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
        _check(volume, window)
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
    settings: Settings,
    actor: User,
    project: Project,
    files: list[Path],
    shown: dict[Path, str],
    window: str | None,
) -> AddedVolume:
    with tempfile.TemporaryDirectory(prefix="series-", dir=_scratch(settings)) as tmp:
        stored = _deidentified(files, shown, Path(tmp), settings.keep_dicom_identifiers)
        names = {copy: shown[original] for original, copy in stored.items()}
        try:
            volume = read_dicom_series(list(stored.values()), max_voxels=max_voxels(settings))
            _check(volume, window)
        except InvalidImageError as exc:
            raise _named_error(exc, names) from None
        ordered = _in_z_order(volume, list(stored.values()), names)
        digests = [file_sha256(p) for p in ordered]
        sha = hashlib.sha256("\n".join(digests).encode()).hexdigest()
        found = _existing(db, project.id, sha)
        if found is not None:
            return found
        slice_names = [
            shown_name if project.keep_original_names else dicom_name(path, digest)
            for path, digest, shown_name in zip(ordered, digests, (names[p] for p in ordered), strict=True)
        ]
        slice_blobs = [blobs.put_file(p)[0] for p in ordered]
    filename = _series_name(slice_names[0]) if not project.keep_original_names else safe_filename(shown[files[0]])
    row = _volume_row(project, actor, volume, filename, sha, None, window)
    db.add(row)
    db.flush()
    slices = _slice_rows(db, project, actor, row, slice_blobs, slice_names)
    _record(db, actor, row, len(slices))
    return AddedVolume(row, slices, new=True)


def _scratch(settings: Settings) -> Path:
    folder = settings.data_dir / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _deidentified(files: list[Path], shown: dict[Path, str], folder: Path, keep: bool) -> dict[Path, Path]:
    """Each file's stored copy (de-identified unless the site keeps identifiers), read as DICOM on the way."""
    from medsam_core.deidentify import deidentify_dicom_file

    out = {}
    for n, path in enumerate(files):
        target = folder / f"{n:05d}.dcm"
        try:
            deidentify_dicom_file(path, target, keep_identifiers=keep)
        except InvalidImageError as exc:
            raise InvalidImageError(
                f"'{shown[path]}' is not a readable DICOM file ({_named_error(exc, {path: shown[path]})}); "
                "a series upload holds the DICOM files of one series only"
            ) from None
        out[path] = target
    return out


def _in_z_order(volume: Volume, paths: list[Path], names: dict[Path, str]) -> list[Path]:
    """The stored files in the volume's slice order, matched by their (de-identified) SOP instance UIDs."""
    import pydicom

    by_uid: dict[str, Path] = {}
    for path in paths:
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).get("SOPInstanceUID", ""))
        if uid in by_uid:
            raise InvalidImageError(
                f"'{names[by_uid[uid]]}' and '{names[path]}' are the same slice (one SOP instance UID); "
                "upload each slice once"
            )
        by_uid[uid] = path
    uids = volume.sop_instance_uids or ()
    if len(uids) != len(paths) or set(uids) != set(by_uid):
        raise InvalidImageError(f"{len(paths)} files were uploaded but the series reads as {len(uids)} slices")
    return [by_uid[uid] for uid in uids]


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
