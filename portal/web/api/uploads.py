"""Receiving uploads: size-limited while they stream in, and named by their content.

The limit (``MEDSAM_MAX_UPLOAD_MB``) is enforced on the bytes as they arrive,
so an oversized body is refused before it fills a disk, and a declared
Content-Length over the limit is refused before a byte is read. The file's
type comes from its first bytes, never from the name a client sent, because
the stored copy is later opened by the suffix we give it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import HTTPException, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from medsam_core.errors import MedsamError
from portal.store.services.images import safe_filename

# Room for the multipart boundaries and part headers around the file itself.
ENVELOPE_BYTES = 64 * 1024
SUPPORTED = "PNG, JPEG, BMP, TIFF, npy, DICOM, NIfTI (.nii, .nii.gz)"


@dataclass
class Upload:
    path: Path  # a temporary file, suffixed by content; removed when the context ends
    filename: str  # the client's name, with the suffix corrected to match the content
    size: int
    fields: dict[str, str] = field(default_factory=dict)


def sniff_suffix(head: bytes) -> str | None:
    """The suffix the core reader needs for these first 544 bytes; None: not a format we read."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    if head.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if head.startswith(b"BM"):
        return ".bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return ".tif"
    if head.startswith(b"\x93NUMPY"):
        return ".npy"
    if head[128:132] == b"DICM":
        return ".dcm"
    if head[344:348] == b"n+1\x00" or head[4:8] == b"n+2\x00":
        return ".nii"
    if head.startswith(b"\x1f\x8b"):
        return ".nii.gz"  # the reader checks that the gzip holds a NIfTI header
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return ".zip"
    return None


_ALIASES = {".tif": (".tif", ".tiff"), ".jpg": (".jpg", ".jpeg")}
_KNOWN = (".nii.gz", ".tiff", ".jpeg", ".tif", ".jpg", ".png", ".bmp", ".npy", ".dcm", ".nii", ".zip")


def _named(filename: str, suffix: str) -> str:
    """Keep the client's (sanitised, capped) name when its suffix tells the truth; otherwise put the true one
    on its stem."""
    base = safe_filename(filename)
    if base.lower().endswith(_ALIASES.get(suffix, (suffix,))):
        return base
    stem = next((base[: -len(k)] for k in _KNOWN if base.lower().endswith(k)), base)
    return (stem or "upload") + suffix


async def _parse(request: Request, limit: int, max_files: int = 1):
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + ENVELOPE_BYTES:
        raise HTTPException(
            413, f"the upload is {int(declared) / 1e6:.1f} MB; the limit is {limit / 1e6:.0f} MB (MEDSAM_MAX_UPLOAD_MB)"
        )
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise HTTPException(400, "send the file as multipart/form-data in a field named 'file'")

    async def limited():
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit + ENVELOPE_BYTES:
                raise HTTPException(413, f"the upload exceeds the limit of {limit / 1e6:.0f} MB (MEDSAM_MAX_UPLOAD_MB)")
            yield chunk

    try:
        return await MultiPartParser(request.headers, limited(), max_files=max_files, max_fields=20).parse()
    except MultiPartException as exc:
        raise HTTPException(400, f"malformed multipart body: {exc.message}") from None


def _spill(source: UploadFile, folder: Path, expect: set[str] | None) -> tuple[Path, str]:
    source.file.seek(0)
    head = source.file.read(544)
    suffix = sniff_suffix(head)
    if suffix is None or (expect is not None and suffix not in expect):
        wanted = ", ".join(sorted(expect)) if expect else SUPPORTED
        raise HTTPException(400, f"'{source.filename}' is not a supported file (its content is none of: {wanted})")
    if expect is None and suffix == ".zip":
        raise HTTPException(
            400,
            f"'{source.filename}' is a zip; upload images one by one here, or use the "
            "project's import route for a zip of images/ and masks/",
        )
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=suffix, dir=folder)
    with os.fdopen(fd, "wb") as out:
        source.file.seek(0)
        shutil.copyfileobj(source.file, out, 1 << 20)
    return Path(tmp), _named(source.filename or "upload", suffix)


class received_file:
    """``async with received_file(request, expect={".zip"}) as upload:`` -- the file, then removed."""

    def __init__(self, request: Request, expect: set[str] | None = None, limit_mb: int | None = None):
        self.request, self.expect, self.limit_mb = request, expect, limit_mb
        self.upload: Upload | None = None

    async def __aenter__(self) -> Upload:
        settings = self.request.app.state.settings
        limit = (self.limit_mb or settings.max_upload_mb) * 1024 * 1024
        form = await _parse(self.request, limit)
        try:
            source = form.get("file")
            if not isinstance(source, UploadFile):
                raise HTTPException(400, "no file: send it in a multipart field named 'file'")
            if source.size is not None and source.size > limit:
                raise HTTPException(
                    413,
                    f"the file is {source.size / 1e6:.1f} MB; the limit is {limit / 1e6:.0f} MB (MEDSAM_MAX_UPLOAD_MB)",
                )
            if not source.size:
                raise HTTPException(400, f"'{source.filename}' is empty (0 bytes)")
            path, name = await run_in_threadpool(_spill, source, settings.data_dir / "uploads", self.expect)
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
            self.upload = Upload(path=path, filename=name, size=source.size, fields=fields)
            return self.upload
        finally:
            await form.close()

    async def __aexit__(self, exc_type, exc, tb) -> None:
        if self.upload is None:
            return
        self.upload.path.unlink(missing_ok=True)
        if isinstance(exc, MedsamError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
            # The readers name the file they opened, our temporary copy; the user knows it by their own name.
            exc.args = (
                exc.args[0]
                .replace(str(self.upload.path), self.upload.filename)
                .replace(self.upload.path.name, self.upload.filename),
            )


class received_files:
    """``async with received_files(request, expect, max_files) as uploads:`` -- every part named ``file``
    (a DICOM series is several files in one request), each checked as ``received_file`` checks one, the
    limit applying to the request as a whole; all removed when the context ends."""

    def __init__(self, request: Request, expect: set[str], max_files: int):
        self.request, self.expect, self.max_files = request, expect, max_files
        self.uploads: list[Upload] = []

    async def __aenter__(self) -> list[Upload]:
        settings = self.request.app.state.settings
        limit = settings.max_upload_mb * 1024 * 1024
        form = await _parse(self.request, limit, self.max_files)
        try:
            sources = [s for s in form.getlist("file") if isinstance(s, UploadFile)]
            if not sources:
                raise HTTPException(400, "no file: send the files in multipart fields named 'file'")
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
            for source in sources:
                if not source.size:
                    raise HTTPException(400, f"'{source.filename}' is empty (0 bytes)")
                path, name = await run_in_threadpool(_spill, source, settings.data_dir / "uploads", self.expect)
                self.uploads.append(Upload(path=path, filename=name, size=source.size, fields=fields))
            return self.uploads
        except BaseException:
            self._remove()
            raise
        finally:
            await form.close()

    def _remove(self) -> None:
        for upload in self.uploads:
            upload.path.unlink(missing_ok=True)

    async def __aexit__(self, exc_type, exc, tb) -> None:
        self._remove()
