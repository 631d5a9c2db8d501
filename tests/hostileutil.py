"""Builders of hostile files for tests/test_hostile.py: each is what an attacker or a broken exporter sends.

Everything is made in memory from the format's own rules (PNG chunks, the npy
header, DICOM via pydicom, NIfTI via nibabel, zip headers patched in place),
so a case lies in exactly one way and the test says which.
"""

from __future__ import annotations

import gzip
import io
import os
import random
import struct
import zipfile
import zlib
from functools import lru_cache

import numpy as np

BOMB_SIDE = 40_000  # 1.6e9 pixels: 16x MEDSAM_MAX_IMAGE_PIXELS, ~200 kB as a 1-bit PNG


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int = 64, height: int = 64, seed: int = 0) -> bytes:
    """A small, valid greyscale PNG; the seed makes its content (and so its hash) distinct."""
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@lru_cache(maxsize=2)
def png_bomb(side: int = BOMB_SIDE) -> bytes:
    """A real 1-bit PNG of side x side pixels, all zero: tiny on disk, gigabytes once decoded."""
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    block = row * 1000
    body = b"".join(packer.compress(block) for _ in range(side // 1000)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=arr.dtype.hasobject)  # the pickled one is the point of its test
    return buf.getvalue()


def npy_pickled() -> bytes:
    return npy(np.array([{"payload": "would run on load"}, None], dtype=object))


def npy_nan() -> bytes:
    arr = np.random.default_rng(1).random((64, 64), dtype=np.float32)
    arr[10:20, 10:20] = np.nan
    return npy(arr)


def npy_lying_shape() -> bytes:
    """The header promises 1000 x 1000 float32 (4 MB); 400 bytes follow."""
    full = npy(np.zeros((1000, 1000), np.float32))
    return full[: len(full) - 4_000_000 + 400]


def random_bytes(n: int = 4096) -> bytes:
    return b"\x00junk" + random.Random(9).randbytes(n)


def dicom(rows: int = 64, cols: int = 64, pixel_bytes: bytes | None = None) -> bytes:
    """An uncompressed 16-bit CT slice; ``pixel_bytes`` lets Rows/Columns lie about the data."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, meta.MediaStorageSOPInstanceUID, "CT"
    ds.PatientName, ds.PatientID = "Hostile^Test", "X1"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixel_bytes if pixel_bytes is not None else np.zeros((rows, cols), np.uint16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def dicom_garbage() -> bytes:
    return b"\x00" * 128 + b"DICM" + random.Random(3).randbytes(2000)


def nifti(shape=(32, 32)) -> bytes:
    import nibabel as nib

    return nib.Nifti1Image(np.ones(shape, np.float32), np.eye(4)).to_bytes()


def nifti_lying() -> bytes:
    """dim[1..2] patched from 32x32 to 4000x4000: the header promises 64 MB; 4 kB of data follow."""
    data = bytearray(nifti())
    data[42:46] = struct.pack("<hh", 4000, 4000)  # dim[1], dim[2] of the 348-byte header
    return bytes(data)


def nifti_gz_truncated() -> bytes:
    whole = gzip.compress(nifti((64, 64)))
    return whole[: len(whole) // 2]


def zip_of(entries: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in entries.items():
            zf.writestr(zipfile.ZipInfo(name, (2024, 1, 1, 0, 0, 0)), data, compress_type=method)
    return buf.getvalue()


def pair(seed: int = 0) -> dict[str, bytes]:
    """One valid image and its 0/255 mask, as a one-class project imports them."""
    from PIL import Image

    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, format="PNG")
    return {f"images/case{seed}.png": png(seed=100 + seed), f"masks/case{seed}.png": buf.getvalue()}


def zip_bad_crc() -> bytes:
    """A stored entry with one byte flipped inside its data: the CRC no longer matches."""
    data = bytearray(zip_of(pair(1)))
    at = data.index(b"IDAT") + 8
    data[at] ^= 0xFF
    return bytes(data)


def _patch_sizes(data: bytes, name: str, compressed: int | None = None, size: int | None = None) -> bytes:
    """Rewrite one entry's sizes in both its local header and its central directory record."""
    out, encoded = bytearray(data), name.encode()
    for sig, comp_at, size_at in ((b"PK\x03\x04", 18, 22), (b"PK\x01\x02", 20, 24)):
        start = 0
        while (start := out.find(sig, start)) != -1:
            name_at = start + (30 if sig == b"PK\x03\x04" else 46)
            if out[name_at : name_at + len(encoded)] == encoded:
                if compressed is not None:
                    out[start + comp_at : start + comp_at + 4] = struct.pack("<I", compressed)
                if size is not None:
                    out[start + size_at : start + size_at + 4] = struct.pack("<I", size)
            start += 4
    return bytes(out)


def zip_lying_sizes() -> bytes:
    """A stored 4 kB image entry whose headers claim 20 MB (under the bomb cap): reading runs off the archive."""
    entries = pair(2)
    return _patch_sizes(zip_of(entries), next(iter(entries)), compressed=20_000_000, size=20_000_000)


def zip_bomb(expanded_mb: int, declared: int | None = None) -> bytes:
    """One highly compressible entry; ``declared`` makes its headers understate what it expands to."""
    data = zip_of({**pair(3), "images/zeros.npy": b"\x00" * (expanded_mb << 20)}, zipfile.ZIP_DEFLATED)
    return data if declared is None else _patch_sizes(data, "images/zeros.npy", size=declared)


def zip_png_bomb_mask() -> bytes:
    entries = pair(4)
    entries["masks/case4.png"] = png_bomb()
    return zip_of(entries)


def zip_symlink() -> bytes:
    """images/case5.png is a symbolic link to /etc/passwd (unix mode 0o120777 in the external attributes)."""
    buf = io.BytesIO()
    entries = pair(5)
    with zipfile.ZipFile(buf, "w") as zf:
        link = zipfile.ZipInfo("images/case5.png", (2024, 1, 1, 0, 0, 0))
        link.create_system, link.external_attr = 3, (0o120777 << 16)
        zf.writestr(link, "/etc/passwd")
        zf.writestr("masks/case5.png", entries["masks/case5.png"])
    return buf.getvalue()


def zip_slip(name: str) -> bytes:
    """A valid pair plus one entry whose name climbs out of (or ignores) the extraction folder."""
    return zip_of({**pair(6), name: png(seed=7)})


def zip_many(count: int) -> bytes:
    return zip_of({**pair(8), **{f"notes/{n}.txt": b"" for n in range(count)}})


def zip_masks_only() -> bytes:
    return zip_of({k: v for k, v in pair(9).items() if k.startswith("masks/")})


class Marker:
    """Unpickling this runs ``touch <path>``; weights-only loading must refuse it first."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def evil_checkpoint(marker: str) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save({"model": {"weight": torch.zeros(2)}, "hook": Marker(marker)}, buf)
    return buf.getvalue()


def multipart(filename: bytes, payload: bytes, fields: dict[str, str] | None = None) -> tuple[bytes, str]:
    """A multipart body with the file name's bytes exactly as given (httpx would escape them)."""
    boundary = b"hostile-boundary-7f3a"
    parts = [
        b"--"
        + boundary
        + b'\r\nContent-Disposition: form-data; name="'
        + k.encode()
        + b'"\r\n\r\n'
        + v.encode()
        + b"\r\n"
        for k, v in (fields or {}).items()
    ]
    parts.append(
        b"--"
        + boundary
        + b'\r\nContent-Disposition: form-data; name="file"; filename="'
        + filename
        + b'"\r\nContent-Type: application/octet-stream\r\n\r\n'
        + payload
        + b"\r\n"
    )
    return b"".join(parts) + b"--" + boundary + b"--\r\n", f"multipart/form-data; boundary={boundary.decode()}"


def chunked(body: bytes, size: int = 64 * 1024):
    """Yield the body in pieces: httpx sends a generator with Transfer-Encoding: chunked, no Content-Length."""
    for at in range(0, len(body), size):
        yield body[at : at + size]
