"""The export and import routes; the work is in ``portal.web.transfer``, which the UI calls too."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from portal.store.models import User
from portal.web.api import PREFIX, store_of
from portal.web.api.uploads import received_file
from portal.web.auth import current_user
from portal.web.schemas.images import ImportReportPublic
from portal.web.schemas.masks import ZIP
from portal.web.transfer import build_export, scratch_dir
from portal.web.transfer import import_zip as import_zip_file

router = APIRouter(prefix=PREFIX, tags=["export"])


@router.get("/projects/{pid}/export", response_class=FileResponse, responses={200: {"content": ZIP}})
def export(
    pid: int,
    request: Request,
    user: User = Depends(current_user),
    format: Literal["npy", "png", "seed", "nifti", "dicom-seg", "nnunet"] = Query(
        "npy",
        description="npy, png: 2-D masks with their images; seed: MedSAM's imgs/ + gts/ (slices of volumes "
        "included); nifti: one label map per volume on its source grid; dicom-seg: one DICOM-SEG per DICOM "
        "series; nnunet: nnU-Net v2's imagesTr/, labelsTr/ and dataset.json for a project of volumes",
    ),
    approved_only: bool = Query(False, description="only approved annotations (the seed and nnunet formats' use)"),
    size: int = Query(1024, ge=64, le=4096, description="seed format: output side in pixels"),
):
    folder = Path(tempfile.mkdtemp(prefix="export-", dir=_scratch(request)))
    try:
        path = build_export(store_of(request), user, pid, format, approved_only, size, folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return FileResponse(
        path,
        media_type="application/zip",
        filename=path.name,
        background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True),
    )


def _scratch(request: Request) -> Path:
    return scratch_dir(request.app.state.settings)


@router.post("/projects/{pid}/import", status_code=201, response_model=ImportReportPublic)
async def import_zip(pid: int, request: Request, user: User = Depends(current_user)) -> dict:
    """Streams and checks the zip before any transaction; ``import_zip_file`` then writes it in one."""
    store = store_of(request)
    async with received_file(request, expect={".zip"}) as upload:
        folder = Path(tempfile.mkdtemp(prefix="import-", dir=_scratch(request)))
        try:
            return await run_in_threadpool(import_zip_file, store, user, pid, upload.path, folder, upload.filename)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
