"""Adding and removing images: validated by the core reader before anything is stored."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np

from sqlalchemy import select

from medsam_core.imageio import read_image
from portal.store.errors import NotFoundError
from portal.store.models import Image, Role, User
from portal.store.services.audit import record
from portal.store.services.projects import get_project
from portal.store.services.users import require_role
from portal.store.store import Store


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def add_image(store: Store, actor: User, project_id: int, path: str | os.PathLike, filename: str | None = None,
              window: str | None = None) -> list[Image]:
    """Store an upload and return its rows: one for a 2-D image, one per slice for a volume.

    Order matters for never losing or half-writing anything: the file is read
    and validated first (a rejected file writes nothing), then the blob is
    written, then the rows; a crash between the last two leaves only an orphan
    blob, which ``medsam db gc`` removes.
    """
    path = Path(path)
    filename = filename or path.name
    with store.transaction() as session:
        project = get_project(session, actor, project_id)
        modality = project.modality
    image = read_image(path, max_pixels=store.settings.max_image_pixels)  # raises InvalidImageError
    if window is not None:
        image.display(window=window)  # an unknown window name fails here, before anything is written
    sha = _file_sha256(path)
    with store.transaction() as session:
        existing = list(session.scalars(select(Image).where(Image.project_id == project_id, Image.sha256 == sha)
                                        .order_by(Image.slice_index)))
        if existing:
            return existing
    stored = _stored_copy(path, image.source_format, store.settings.keep_dicom_identifiers)
    try:
        blob_sha, _ = store.blobs.put_file(stored)
    finally:
        if stored != path:
            stored.unlink(missing_ok=True)
    with store.transaction() as session:
        again = list(session.scalars(select(Image).where(Image.project_id == project_id, Image.sha256 == sha)
                                     .order_by(Image.slice_index)))
        if again:  # someone uploaded the same file meanwhile
            return again
        rows = [
            Image(project_id=project_id, filename=filename, sha256=sha, blob_sha=blob_sha, width=image.width,
                  height=image.height, modality=modality, window=window, slice_index=index,
                  num_slices=image.num_slices, uploaded_by=actor.id)
            for index in range(image.num_slices)
        ]
        session.add_all(rows)
        session.flush()
        record(session, actor, "image.upload", "image", rows[0].id, project_id, filename=filename, sha256=sha,
               slices=image.num_slices, format=image.source_format)
    return rows


def _stored_copy(path: Path, source_format: str, keep_identifiers: bool) -> Path:
    if source_format != "dicom" or keep_identifiers:
        return path
    from medsam_core.deidentify import deidentify_dicom_file

    fd, tmp = tempfile.mkstemp(suffix=".dcm")
    os.close(fd)
    deidentify_dicom_file(path, tmp)
    return Path(tmp)


def get_image(store: Store, actor: User, image_id: int) -> Image:
    with store.transaction() as session:
        image = session.get(Image, image_id)
        if image is None:
            raise NotFoundError(f"image {image_id} does not exist")
        get_project(session, actor, image.project_id)
        return image


def fetch_image_file(store: Store, image: Image, dest_dir: str | os.PathLike) -> Path:
    """Copy the stored file out (streamed, digest-verified) so the core reader can open it."""
    suffix = "".join(Path(image.filename).suffixes[-2:]) if image.filename.lower().endswith(".nii.gz") \
        else Path(image.filename).suffix
    target = Path(dest_dir) / f"{image.blob_sha}{suffix}"
    if not target.exists():
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        with store.blobs.open(image.blob_sha) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(tmp, target)
    return target


def delete_image(store: Store, actor: User, image_id: int) -> None:
    """Rows go at once (masks, annotations and revisions cascade); blobs at the next gc; the audit event stays."""
    require_role(actor, Role.admin, Role.reviewer, doing="delete images")
    with store.transaction() as session:
        image = session.get(Image, image_id)
        if image is None:
            raise NotFoundError(f"image {image_id} does not exist")
        get_project(session, actor, image.project_id)
        siblings = list(session.scalars(select(Image).where(Image.project_id == image.project_id,
                                                            Image.sha256 == image.sha256)))
        record(session, actor, "image.delete", "image", image_id, image.project_id, filename=image.filename,
               sha256=image.sha256, slices=len(siblings))
        for row in siblings:  # a volume's slices share one file: patient data goes as a whole
            session.delete(row)


def display_pixels(store: Store, image: Image) -> np.ndarray:
    """The uint8 RGB the encoder sees for this row: its slice, in its window."""
    from medsam_core.imageio import read_image as _read

    folder = store.settings.data_dir / "image_files"
    folder.mkdir(parents=True, exist_ok=True)
    path = fetch_image_file(store, image, folder)
    medical = _read(path, max_pixels=store.settings.max_image_pixels)
    return medical.display(slice_index=image.slice_index if medical.num_slices > 1 else None, window=image.window)


def list_images(store: Store, actor: User, project_id: int) -> list[Image]:
    """Every row of a project (one per slice for volumes), oldest first: the annotation queue's order."""
    with store.transaction() as session:
        get_project(session, actor, project_id)
        return list(session.scalars(select(Image).where(Image.project_id == project_id)
                                    .order_by(Image.id)))
