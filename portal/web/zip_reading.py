"""Reading an uploaded zip without trusting it: entry names, sizes, counts and bytes are all checked.

Hostile zips lie in their headers (sizes, CRCs), hide symlinks and ``..`` names,
and expand a thousandfold; every such case becomes a ``StoreError`` (a 400 that
names the entry) before anything is stored, and bytes are counted as they are
written, not as the headers claim.
"""

from __future__ import annotations

import re
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from portal.store.errors import StoreError
from portal.web.api.uploads import sniff_suffix

MAX_ZIP_ENTRIES = 20_000
UNZIP_FACTOR = 4  # a zip may expand to this many times the upload limit, no more (zip bombs)
_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)
# What zipfile raises while READING a damaged or hostile entry, not only when opening the archive.
DAMAGED = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    EOFError,
    NotImplementedError,
    RuntimeError,
    ValueError,
    OSError,
    OverflowError,
)


def name_stem(name: str) -> str:
    """A file name without its suffix; images/x.png and masks/x.npy pair up by it."""
    return re.sub(r"(\.nii\.gz|\.[A-Za-z0-9]+)$", "", name)


def shown(name: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in name)[:120]


def _refuse_entry(info: zipfile.ZipInfo) -> None:
    """Refuse what an archive of images/ and masks/ never needs, before anything is read from it."""
    name = info.filename.replace("\\", "/")
    if name.startswith("/") or re.match(r"[A-Za-z]:", name) or ".." in PurePosixPath(name).parts:
        raise StoreError(
            f"nothing was imported: the zip entry '{shown(info.filename)}' points outside the zip's "
            "own folders (an absolute path or '..'); zip the images/ and masks/ folders themselves"
        )
    if stat.S_ISLNK(info.external_attr >> 16):
        raise StoreError(
            f"nothing was imported: the zip entry '{shown(info.filename)}' is a symbolic link; "
            "a zip of images/ and masks/ holds plain files only (zip without --symlinks)"
        )
    if info.flag_bits & 0x1:
        raise StoreError(
            f"nothing was imported: the zip entry '{shown(info.filename)}' is encrypted; "
            "zip the files again without a password"
        )
    if info.compress_type not in _METHODS:
        raise StoreError(
            f"nothing was imported: the zip entry '{shown(info.filename)}' uses compression method "
            f"{info.compress_type}, which cannot be read here; zip it again with the default (deflate)"
        )


def entries(zf: zipfile.ZipFile, limit_bytes: int) -> tuple[dict, dict]:
    """({stem: image entry}, {(stem, label folder or None): mask entry})."""
    everything = zf.infolist()
    if len(everything) > MAX_ZIP_ENTRIES:
        raise StoreError(f"the zip holds {len(everything)} entries; at most {MAX_ZIP_ENTRIES}")
    for info in everything:
        _refuse_entry(info)
    infos = [i for i in everything if not i.is_dir()]
    if sum(i.file_size for i in infos) > limit_bytes * UNZIP_FACTOR:
        raise StoreError(f"the zip expands to more than {UNZIP_FACTOR}x the upload limit; split it")
    found_images, found_masks = {}, {}
    for info in infos:
        parts = PurePosixPath(info.filename.replace("\\", "/")).parts
        if any(p.startswith(".") or p == "__MACOSX" for p in parts) or info.filename.endswith("manifest.json"):
            continue
        stem = name_stem(parts[-1])
        if len(parts) >= 2 and parts[-2] == "images":
            found_images[stem] = info
        elif len(parts) >= 2 and parts[-2] == "masks":
            found_masks[(stem, None)] = info
        elif len(parts) >= 3 and parts[-3] == "masks":
            found_masks[(stem, parts[-2])] = info
    return found_images, found_masks


def why(exc: BaseException) -> str:
    if isinstance(exc, zlib.error):
        return "its compressed data is corrupt"
    if isinstance(exc, EOFError):
        return "it ends before the data its headers announce"
    if isinstance(exc, NotImplementedError):
        return "it uses a compression method that cannot be read here"
    if isinstance(exc, RuntimeError) and "encrypted" in str(exc):
        return "it is encrypted"
    if isinstance(exc, zipfile.BadZipFile):
        return str(exc).replace("for file", "for")
    return f"its headers are inconsistent ({type(exc).__name__})"


class Budget:
    """Bytes actually written while extracting, against the limit: headers can lie about sizes."""

    def __init__(self, limit: int):
        self.left = limit

    def spend(self, n: int, info: zipfile.ZipInfo, so_far: int) -> None:
        self.left -= n
        if self.left < 0:
            raise StoreError(
                f"nothing was imported: the zip expands to more than {UNZIP_FACTOR}x the upload "
                "limit (a zip bomb, or simply too much); split it"
            )
        if so_far > info.file_size:
            raise StoreError(
                f"nothing was imported: the zip entry '{shown(info.filename)}' holds more data than "
                "its header says; the zip is damaged, make it again"
            )


def _chunks(zf: zipfile.ZipFile, info: zipfile.ZipInfo, zip_name: str):
    """The entry's bytes; whatever zipfile raises on a damaged entry becomes a StoreError (400, not 500)."""
    try:
        with zf.open(info) as src:
            while chunk := src.read(1 << 20):
                yield chunk
    except DAMAGED as exc:
        raise StoreError(
            f"nothing was imported: '{shown(zip_name)}' is damaged and cannot be read "
            f"({shown(info.filename)}: {why(exc)}); make the zip again"
        ) from None


def extract(zf: zipfile.ZipFile, info: zipfile.ZipInfo, folder: Path, name: str, budget: Budget, zip_name: str) -> Path:
    """Written under our own name (never the entry's: no zip slip), suffixed by content for the readers."""
    part = folder / f"{name}.part"
    written = 0
    with open(part, "wb") as dst:
        for chunk in _chunks(zf, info, zip_name):
            written += len(chunk)
            budget.spend(len(chunk), info, written)
            dst.write(chunk)
    with open(part, "rb") as fh:
        suffix = sniff_suffix(fh.read(544)) or ""
    return part.rename(folder / f"{name}{suffix}")
