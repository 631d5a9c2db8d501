"""Volumes: upload (one NIfTI, a DICOM series as files or a zip), metadata, slice images, queued work
(precompute, propagate), 3-D label maps (read, save from a base revision) and their exports.

Uploads and exports do their file work outside any transaction or in the
thread pool, as the image routes do; the rules live in the store's services
and the queue port.
"""

from __future__ import annotations

import gzip
import io
import tempfile
import zlib
from pathlib import Path

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from PIL import Image as PILImage
from pydantic import ValidationError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from medsam_core.dicom_series import MAX_SERIES_FILES
from medsam_core.volume import Volume, label_map_nifti, labels_onto
from portal.store.errors import StoreError
from portal.store.models import User
from portal.store.models import Volume as VolumeRow
from portal.store.services import volumes, volumes_labels
from portal.store.services.volumes_read import load_volume, slice_source, source_datasets
from portal.store.store import Store
from portal.web.api import PREFIX, AppSettings, Blobs, Db, queue_of, store_of
from portal.web.api.masks import download, mask_npy_bytes
from portal.web.api.uploads import Upload, received_file, received_files
from portal.web.auth import current_user
from portal.web.schemas.common import Deleted
from portal.web.schemas.jobs import JobPublic, PrecomputeIn
from portal.web.schemas.masks import NPY, PNG
from portal.web.schemas.volumes import (
    DICOM,
    NIFTI,
    LabelMapSaved,
    LabelMapState,
    LabelUploadFields,
    PropagateIn,
    UploadedVolumePublic,
    VolumePublic,
)
from workers.queue import JobQueue

router = APIRouter(prefix=PREFIX, tags=["volumes"])
VOLUME_UPLOADS = {".nii", ".nii.gz", ".dcm", ".zip"}
LABEL_UPLOADS = {".npy", ".nii", ".nii.gz"}


def _public(db: Session, user: User, row: VolumeRow, cls: type[VolumePublic] = VolumePublic, **extra) -> VolumePublic:
    states = [
        LabelMapState(
            label=a.label,
            annotation_id=a.id,
            status=a.status.value,
            revision=a.current_revision,
            updated_at=a.updated_at,
        )
        for a in volumes_labels.volume_annotations(db, user, row.id)
    ]
    return cls.of(row, [s.id for s in volumes.slice_rows(db, row.id)], states, **extra)


def _store_volume(store: Store, user: User, pid: int, uploads: list[Upload]) -> VolumePublic:
    """The transaction starts only once every file is in: SQLite's write lock is never held while bytes stream."""
    with store.transaction() as db:
        added = volumes.add_volume(
            db,
            store.blobs,
            store.settings,
            user,
            pid,
            [u.path for u in uploads],
            [u.filename for u in uploads],
            uploads[0].fields.get("window") or None,
        )
        return _public(db, user, added.volume, UploadedVolumePublic, new=added.new)


@router.post("/projects/{pid}/volumes", status_code=201, response_model=UploadedVolumePublic)
async def upload_volume(pid: int, request: Request, user: User = Depends(current_user)) -> VolumePublic:
    """Multipart fields ``file``: one NIfTI (.nii, .nii.gz), one zip of a DICOM series, or the series' DICOM
    files (one field each); optional ``window`` (abdomen, lung, brain, bone) for CT. DICOM is stored
    de-identified. The same content again answers the volume already there, with ``new`` false."""
    async with received_files(request, VOLUME_UPLOADS, MAX_SERIES_FILES) as uploads:
        return await run_in_threadpool(_store_volume, store_of(request), user, pid, uploads)


@router.get("/projects/{pid}/volumes", response_model=list[VolumePublic])
def list_volumes(pid: int, db: Db, user: User = Depends(current_user)) -> list[VolumePublic]:
    return [_public(db, user, row) for row in volumes.list_volumes(db, user, pid)]


@router.get("/volumes/{vid}", response_model=VolumePublic)
def get_volume(vid: int, db: Db, user: User = Depends(current_user)) -> VolumePublic:
    return _public(db, user, volumes.get_volume(db, user, vid))


@router.delete("/volumes/{vid}", response_model=Deleted)
def delete_volume(vid: int, db: Db, user: User = Depends(current_user)) -> Deleted:
    volumes.delete_volume(db, user, vid)
    return Deleted(deleted="volume", id=vid)


@router.get("/volumes/{vid}/slices/{z}.png", response_class=Response, responses={200: {"content": PNG}})
def slice_png(
    vid: int,
    z: int,
    db: Db,
    blobs: Blobs,
    settings: AppSettings,
    user: User = Depends(current_user),
    window: str | None = Query(None, description="CT window (abdomen, lung, brain, bone); default the volume's"),
) -> Response:
    """The slice exactly as the model sees it (the pixels its embedding is computed from)."""
    rgb = slice_source(db, blobs, settings, volumes.get_volume(db, user, vid)).pixels(z, window)
    buf = io.BytesIO()
    PILImage.fromarray(rgb).save(buf, format="PNG")
    return Response(buf.getvalue(), media_type="image/png")


@router.post("/volumes/{vid}/precompute", status_code=201, response_model=JobPublic)
def precompute(
    vid: int,
    request: Request,
    user: User = Depends(current_user),
    queue: JobQueue = Depends(queue_of),
    body: PrecomputeIn | None = None,
) -> JobPublic:
    """Encode every slice on an inference worker (follow it at /jobs/{id}); cached slices are skipped."""
    version = body.model_version_id if body else None
    return JobPublic.of(queue.submit_precompute_volume(store_of(request), user, vid, version))


@router.post("/volumes/{vid}/propagate", status_code=201, response_model=JobPublic)
def propagate(
    vid: int,
    body: PropagateIn,
    request: Request,
    user: User = Depends(current_user),
    queue: JobQueue = Depends(queue_of),
) -> JobPublic:
    """Propagate a box on a key slice through the z range on an inference worker; the result is saved as
    a new draft revision of the label map (``result.revision``), or the job fails with the conflict if
    someone saved after ``base_revision``. Cancel with DELETE /jobs/{id}."""
    job = queue.submit_propagation(
        store_of(request),
        user,
        vid,
        label=body.label,
        key_slice=body.key_slice,
        box=body.box,
        z_range=tuple(body.z_range) if body.z_range else None,
        scheme=body.scheme,
        model_version_id=body.model_version_id,
        base_revision=body.base_revision,
    )
    return JobPublic.of(job)


@router.get("/volumes/{vid}/labels/{label}.npy", response_class=Response, responses={200: {"content": NPY}})
def label_map_npy(
    vid: int,
    label: str,
    db: Db,
    blobs: Blobs,
    user: User = Depends(current_user),
    revision: int | None = Query(None, ge=1, description="default the latest"),
) -> Response:
    """(Z, H, W) uint8, 1 inside; the revision is in the ``X-Revision`` header."""
    _, row, mask = volumes_labels.read_label_map(db, blobs, user, vid, label, revision)
    response = download(mask_npy_bytes(mask), "application/octet-stream", f"volume_{vid}_{label}_r{row.number}.npy")
    response.headers["X-Revision"] = str(row.number)
    return response


@router.put("/volumes/{vid}/labels/{label}", response_model=LabelMapSaved)
async def save_label_map(vid: int, label: str, request: Request, user: User = Depends(current_user)) -> LabelMapSaved:
    """Multipart: ``file`` (.npy of shape (Z, H, W), or a NIfTI on the volume's grid, lined up through
    its affine), ``base_revision``, optional ``status`` (draft, submitted), ``comment`` and ``value`` (only
    voxels of this value, e.g. one organ of a multi-label map; default every voxel > 0)."""
    async with received_file(request, expect=LABEL_UPLOADS) as upload:
        try:
            fields = LabelUploadFields.model_validate(upload.fields)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from None
        return await run_in_threadpool(_save_label_upload, store_of(request), user, vid, label, upload, fields)


def _save_label_upload(
    store: Store, user: User, vid: int, label: str, upload: Upload, fields: LabelUploadFields
) -> LabelMapSaved:
    with store.transaction() as db:
        row = volumes.get_volume(db, user, vid)
        labels = _read_labels(upload, row, load_volume(db, store.blobs, store.settings, row))
        mask = labels == fields.value if fields.value is not None else labels > 0
        revision = volumes_labels.save_label_map(
            db,
            store.blobs,
            user,
            vid,
            label,
            mask,
            fields.base_revision,
            comment=fields.comment,
            submit=fields.status == "submitted",
        )
        return LabelMapSaved(annotation_id=revision.annotation_id, revision=revision.number, status=fields.status)


def _read_labels(upload: Upload, row: VolumeRow, volume: Volume) -> np.ndarray:
    """The upload as (Z, H, W) label values, refused unless it matches the volume's grid."""
    want = (row.depth, row.height, row.width)
    if upload.path.suffix == ".npy":
        shape = _npy_shape(upload)
        if shape != want:
            raise StoreError(f"'{upload.filename}' has shape {shape}; the volume is (Z, H, W) = {want}")
        arr = np.load(upload.path, allow_pickle=False)
        if arr.dtype.kind not in "biu":
            raise StoreError(f"'{upload.filename}' holds {arr.dtype}; a label map holds whole numbers (0 outside)")
        return arr
    import nibabel as nib

    try:
        image = nib.load(upload.path)
        shape = tuple(int(v) for v in image.shape)
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError, zlib.error) as exc:
        raise StoreError(f"'{upload.filename}' is not a readable NIfTI label map ({type(exc).__name__})") from None
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if shape != (row.width, row.height, row.depth):
        raise StoreError(
            f"'{upload.filename}' has {shape} voxels; the volume has {(row.width, row.height, row.depth)} "
            "(the label map must be on the volume's own grid)"
        )
    return labels_onto(volume, image)


def _npy_shape(upload: Upload) -> tuple[int, ...]:
    fmt = np.lib.format
    try:
        with open(upload.path, "rb") as fh:
            version = fmt.read_magic(fh)
            reader = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = reader(fh)
    except ValueError as exc:
        raise StoreError(f"'{upload.filename}' is not a valid .npy file ({exc})") from None
    if dtype.hasobject:
        raise StoreError(f"'{upload.filename}' holds Python objects, which are never loaded; save a numeric array")
    return tuple(int(v) for v in shape)


@router.get("/volumes/{vid}/export.nii.gz", response_class=Response, responses={200: {"content": NIFTI}})
def export_nifti(
    vid: int,
    db: Db,
    blobs: Blobs,
    settings: AppSettings,
    user: User = Depends(current_user),
    approved_only: bool = Query(False, description="only approved label maps"),
) -> Response:
    """Every label map in one uint8 NIfTI with the volume's shape and affine: 1 for the project's first
    label class, 2 for the second, ... (a later class wins where two overlap)."""
    row = volumes.get_volume(db, user, vid)
    labels, _ = volumes_labels.combined_labels(db, blobs, user, vid, approved_only=approved_only)
    data = gzip.compress(label_map_nifti(labels, load_volume(db, blobs, settings, row)).to_bytes(), 6)
    return download(data, "application/gzip", f"{_stem(row)}_labels.nii.gz")


@router.get("/volumes/{vid}/export.dcm", response_class=Response, responses={200: {"content": DICOM}})
def export_dicom_seg(
    vid: int,
    db: Db,
    blobs: Blobs,
    settings: AppSettings,
    user: User = Depends(current_user),
    approved_only: bool = Query(False, description="only approved label maps"),
) -> Response:
    """A DICOM-SEG of every label map, referencing the stored (de-identified) series: DICOM sources only."""
    from medsam_core.dicom_seg import write_dicom_seg

    row = volumes.get_volume(db, user, vid)
    datasets = source_datasets(db, blobs, settings, row)
    labels, names = volumes_labels.combined_labels(db, blobs, user, vid, approved_only=approved_only)
    if not names:
        raise StoreError(f"volume {vid} has no {'approved ' if approved_only else ''}label map to export yet")
    with tempfile.TemporaryDirectory(dir=settings.data_dir) as tmp:
        data = write_dicom_seg(labels, names, datasets, Path(tmp) / "seg.dcm").read_bytes()
    return download(data, "application/dicom", f"{_stem(row)}_seg.dcm")


def _stem(row: VolumeRow) -> str:
    name = row.filename
    for suffix in (".nii.gz", ".nii", ".dcm", ".zip"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or f"volume_{row.id}"
    return name or f"volume_{row.id}"
