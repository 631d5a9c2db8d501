"""Adding and removing images: validated by the core reader before anything is stored."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import unicodedata
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from medsam_core.digests import file_sha256
from medsam_core.errors import InvalidImageError
from medsam_core.imageio import read_image
from portal.store.blobs import BlobStore
from portal.store.models import Image, Role, User, Volume
from portal.store.services.audit import record
from portal.store.services.projects import get_project, not_found
from portal.store.services.users import require_role
from portal.store.settings import Settings

if TYPE_CHECKING:
    from pydicom import Dataset


MAX_STEM_CHARS = 120  # of a stored name; with its suffix well inside the 255-character column
_SUFFIX = re.compile(r"(\.nii\.gz|\.[A-Za-z0-9]{1,8})$", re.IGNORECASE)


def safe_filename(name: str | None, fallback: str = "upload") -> str:
    """A display name that is safe wherever it is shown or logged: clients send paths, NULs and 300 characters.

    Directories (either slash) and control or invisible characters go, leading
    and trailing dots and blanks go (so ``..`` is no name at all), and the stem
    is capped while the suffix the readers rely on is kept.
    """
    text = unicodedata.normalize("NFC", str(name or ""))
    text = "".join(" " if ch.isspace() else ch for ch in text if ch.isspace() or unicodedata.category(ch)[0] != "C")
    text = " ".join(re.split(r"[\\/]", text)[-1].split()).strip(" .")
    match = _SUFFIX.search(text)
    suffix = match.group(0) if match else ""
    stem = text[: len(text) - len(suffix)].strip(" .")[:MAX_STEM_CHARS].rstrip(" .")
    return (stem or fallback) + suffix


def _field(ds: Dataset, keyword: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "", str(ds.get(keyword) or ""))[:16]


def dicom_name(path: Path, content_sha: str) -> str:
    """A DICOM's stored name, from fields de-identification keeps: upload names often carry the patient's name.

    Modality, series and instance number say where a slice belongs without
    saying whose it is; without them the name comes from the stored content.
    """
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        modality, series, instance = (_field(ds, k) for k in ("Modality", "SeriesNumber", "InstanceNumber"))
    except Exception:  # noqa: BLE001 - the file was read and validated already; a name is no reason to refuse
        series = instance = ""
    if not (series or instance):
        return f"dicom_{content_sha[:12]}.dcm"
    parts = [modality or "DICOM", f"series{series}" if series else "", f"instance{instance}" if instance else ""]
    return "_".join(p for p in parts if p) + ".dcm"


def _same_content(project_id: int, sha: str) -> Select[Image]:
    return select(Image).where(Image.project_id == project_id, Image.sha256 == sha).order_by(Image.slice_index)


@dataclass(frozen=True)
class Added:
    """What an upload did: its rows, and whether they are new or the project held the same content already."""

    rows: list[Image]
    new: bool


def add_image(
    db: Session,
    blobs: BlobStore,
    settings: Settings,
    actor: User,
    project_id: int,
    path: str | os.PathLike[str],
    filename: str | None = None,
    window: str | None = None,
) -> list[Image]:
    """Store an upload and return its rows (``add_or_find_image``, for callers that need only the rows)."""
    return add_or_find_image(db, blobs, settings, actor, project_id, path, filename, window).rows


def add_or_find_image(
    db: Session,
    blobs: BlobStore,
    settings: Settings,
    actor: User,
    project_id: int,
    path: str | os.PathLike[str],
    filename: str | None = None,
    window: str | None = None,
) -> Added:
    """Store an upload: one row for a 2-D image, one per slice for a volume; ``new`` False when the project
    already held the same content (those rows come back and nothing is added), so a screen can say so.

    Order matters for never losing or half-writing anything: the file is read
    and validated first (a rejected file writes nothing), then the blob is
    written, then the rows; a crash before the caller commits leaves only an
    orphan blob, which ``medsam db gc`` removes. The content hash is of what is
    stored (the de-identified copy for DICOM), so no digest of identified data
    is kept. DICOM rows are named from de-identified fields unless the project
    keeps original names; other formats keep their (sanitised) names. The
    site-wide ``keep_dicom_identifiers`` governs only the stored file, not the
    name: a name travels further (lists, audit, export manifests), so keeping
    it is a per-project decision.
    """
    path = Path(path)
    project = get_project(db, actor, project_id)
    try:
        image = read_image(path, max_pixels=settings.max_image_pixels)
    except InvalidImageError as exc:  # named by the upload's name: the server's folder means nothing to anyone
        raise InvalidImageError(str(exc).replace(str(path), safe_filename(filename or path.name))) from None
    if window is not None:
        image.display(window=window)  # an unknown window name fails here, before anything is written
    stored = _stored_copy(path, image.source_format, settings.keep_dicom_identifiers)
    try:
        sha = file_sha256(stored)
        existing = list(db.scalars(_same_content(project_id, sha)))
        if existing:
            return Added(existing, new=False)
        if image.source_format == "dicom" and not project.keep_original_names:
            filename = dicom_name(stored, sha)
        else:
            filename = safe_filename(filename or path.name)
        blob_sha, _ = blobs.put_file(stored)
    finally:
        if stored != path:
            stored.unlink(missing_ok=True)
    again = list(db.scalars(_same_content(project_id, sha)))
    if again:  # someone uploaded the same file while the blob was written (visible under READ COMMITTED)
        return Added(again, new=False)
    rows = [
        Image(
            project_id=project_id,
            filename=filename,
            sha256=sha,
            blob_sha=blob_sha,
            width=image.width,
            height=image.height,
            modality=project.modality,
            window=window,
            slice_index=index,
            num_slices=image.num_slices,
            uploaded_by=actor.id,
        )
        for index in range(image.num_slices)
    ]
    db.add_all(rows)
    db.flush()
    record(
        db,
        actor,
        "image.upload",
        "image",
        rows[0].id,
        project_id,
        filename=filename,
        sha256=sha,
        slices=image.num_slices,
        format=image.source_format,
    )
    return Added(rows, new=True)


def _stored_copy(path: Path, source_format: str, keep_identifiers: bool) -> Path:
    if source_format != "dicom" or keep_identifiers:
        return path
    from medsam_core.deidentify import deidentify_dicom_file

    fd, tmp = tempfile.mkstemp(suffix=".dcm")
    os.close(fd)
    try:
        deidentify_dicom_file(path, tmp)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def get_image(db: Session, actor: User, image_id: int) -> Image:
    image = db.get(Image, image_id)
    if image is None:  # what get_project answers for it
        raise not_found(f"image {image_id}")
    get_project(db, actor, image.project_id, what=f"image {image_id}")
    return image


def fetch_image_file(blobs: BlobStore, image: Image, dest_dir: str | os.PathLike[str]) -> Path:
    """Copy the stored file out (streamed, digest-verified) so the core reader can open it."""
    suffix = (
        "".join(Path(image.filename).suffixes[-2:])
        if image.filename.lower().endswith(".nii.gz")
        else Path(image.filename).suffix
    )
    target = Path(dest_dir) / f"{image.blob_sha}{suffix}"
    if not target.exists():
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        with blobs.open(image.blob_sha) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(tmp, target)
    return target


def delete_image(db: Session, actor: User, image_id: int) -> None:
    """Rows go at once (masks, annotations and revisions cascade); blobs at the next gc; the audit event stays."""
    require_role(actor, Role.admin, Role.reviewer, doing="delete images")
    image = get_image(db, actor, image_id)
    siblings = list(db.scalars(select(Image).where(Image.project_id == image.project_id, Image.sha256 == image.sha256)))
    record(
        db,
        actor,
        "image.delete",
        "image",
        image_id,
        image.project_id,
        filename=image.filename,
        sha256=image.sha256,
        slices=len(siblings),
    )
    for row in siblings:  # a volume's slices share one file: patient data goes as a whole
        db.delete(row)
    if image.volume_id is not None:  # and the volume itself, with its 3-D label maps (ON DELETE CASCADE)
        volume = db.get(Volume, image.volume_id)
        if volume is not None:
            db.delete(volume)


def display_pixels(blobs: BlobStore, image: Image, settings: Settings) -> np.ndarray:
    """The uint8 RGB the encoder sees for this row: its slice, in its window."""
    from medsam_core.imageio import read_image as _read

    folder = settings.data_dir / "image_files"
    folder.mkdir(parents=True, exist_ok=True)
    path = fetch_image_file(blobs, image, folder)
    medical = _read(path, max_pixels=settings.max_image_pixels)
    return medical.display(slice_index=image.slice_index if medical.num_slices > 1 else None, window=image.window)


def list_images(db: Session, actor: User, project_id: int) -> list[Image]:
    """Every row of a project (one per slice for volumes), oldest first: the annotation queue's order."""
    get_project(db, actor, project_id)
    return list(db.scalars(select(Image).where(Image.project_id == project_id).order_by(Image.id)))
