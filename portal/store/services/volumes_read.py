"""Reading a stored volume back: the decoded ``Volume``, one slice's display pixels, the DICOM datasets.

A small per-process LRU keeps the decoded volumes, keyed by content, so
scrolling, precompute and export do not re-read the files for each slice.
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session

from medsam_core.volume import Volume, read_dicom_series, read_volume
from portal.store.blobs import BlobStore
from portal.store.errors import StoreError
from portal.store.models import Image
from portal.store.models import Volume as VolumeRow
from portal.store.services.volumes import max_voxels, set_geometry, slice_rows
from portal.store.settings import Settings

LOADED_VOLUMES = 2  # decoded volumes kept per process (a BRATS volume is ~36 MB as float32)

_loaded: OrderedDict[str, Volume] = OrderedDict()
_loaded_lock = threading.Lock()


def load_volume(db: Session, blobs: BlobStore, settings: Settings, row: VolumeRow) -> Volume:
    """The ``Volume`` from its stored blobs; a migrated row's geometry is filled in on the way.

    Decoded volumes are kept in a small per-process LRU keyed by content, so
    scrolling, precompute and export do not re-read the files for each slice.
    """
    key = f"{row.source_format}:{row.sha256}"
    with _loaded_lock:
        volume = _loaded.get(key)
        if volume is not None:
            _loaded.move_to_end(key)
    if volume is None:
        volume = _read_stored(db, blobs, settings, row)
        with _loaded_lock:
            _loaded[key] = volume
            while len(_loaded) > LOADED_VOLUMES:
                _loaded.popitem(last=False)
    if row.affine is None:
        set_geometry(row, volume)
    return volume


def _read_stored(db: Session, blobs: BlobStore, settings: Settings, row: VolumeRow) -> Volume:
    folder = _folder(settings, row)
    if row.source_format == "nifti" and row.blob_sha:
        suffix = ".nii.gz" if row.filename.lower().endswith(".gz") else ".nii"
        return read_volume(_fetch(blobs, row.blob_sha, folder / f"volume{suffix}"), max_voxels=max_voxels(settings))
    paths = [_fetch(blobs, s.blob_sha, folder / f"{s.slice_index:05d}.dcm") for s in slice_rows(db, row.id)]
    return read_dicom_series(paths, max_voxels=max_voxels(settings))


def _fetch(blobs: BlobStore, blob: str, target: Path) -> Path:
    """Copy a blob out (streamed, digest-verified) once; a concurrent copy lands atomically."""
    if not target.exists():
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        with blobs.open(blob) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(tmp, target)
    return target


def source_datasets(db: Session, blobs: BlobStore, settings: Settings, row: VolumeRow) -> list:
    """The stored (de-identified) DICOM datasets in Z order: what a DICOM-SEG export references."""
    import pydicom

    if row.source_format != "dicom":
        raise StoreError(f"volume {row.id} is {row.source_format}, not a DICOM series: export NIfTI instead")
    folder = _folder(settings, row)
    return [
        pydicom.dcmread(_fetch(blobs, s.blob_sha, folder / f"{s.slice_index:05d}.dcm")) for s in slice_rows(db, row.id)
    ]


@dataclass
class SliceSource:
    """What showing a volume's slices needs, gathered in one transaction and used outside any (a worker
    encodes for minutes; it must not hold a transaction, or SQLite's lock, meanwhile)."""

    blobs: BlobStore
    settings: Settings
    folder: Path
    slices: list[tuple[str, str | None]]  # (blob, window) per slice, Z order
    volume: Volume | None  # NIfTI: decoded once; DICOM: None, a slice is its own file

    def pixels(self, z: int, window: str | None = None) -> np.ndarray:
        """The uint8 RGB of slice ``z``, exactly as ``images.display_pixels`` gives its row to the 2-D tools
        and the encoder, so a slice has one cache key whichever path encodes it (``window`` None: the row's).

        NIfTI slices come from the decoded volume (read once, not once per
        slice): ``Volume.slice_image`` shows them with the whole volume's
        contrast, as per-slice rows always did. A DICOM slice is its own stored
        file, shown as the single DICOM it is (that slice's percentile contrast
        unless a window is set), which is what its row shows everywhere else.
        """
        if not 0 <= z < len(self.slices):
            raise StoreError(f"slice {z} is out of range: the volume has slices 0 to {len(self.slices) - 1}")
        blob, own = self.slices[z]
        chosen = window or own
        if self.volume is not None:
            return self.volume.slice_image(z).display(window=chosen)
        from medsam_core.imageio import read_image

        path = _fetch(self.blobs, blob, self.folder / f"{z:05d}.dcm")
        return read_image(path, max_pixels=self.settings.max_image_pixels).display(window=chosen)


def slice_source(db: Session, blobs: BlobStore, settings: Settings, row: VolumeRow) -> SliceSource:
    rows = slice_rows(db, row.id)
    volume = load_volume(db, blobs, settings, row) if row.source_format == "nifti" else None
    return SliceSource(blobs, settings, _folder(settings, row), [(s.blob_sha, s.window) for s in rows], volume)


def slice_pixels(
    db: Session, blobs: BlobStore, settings: Settings, row: VolumeRow, image: Image, window: str | None = None
) -> np.ndarray:
    """One slice row's display pixels (``SliceSource.pixels``)."""
    return slice_source(db, blobs, settings, row).pixels(image.slice_index, window)


def _folder(settings: Settings, row: VolumeRow) -> Path:
    folder = settings.data_dir / "volume_files" / row.sha256
    folder.mkdir(parents=True, exist_ok=True)
    return folder
