"""Content-addressed blob store over a local folder or S3/MinIO.

Uploads, embeddings, masks and checkpoints are shared by the web process and
every worker, possibly on other machines, so they live behind one URL
(``MEDSAM_STORAGE_URL``). Naming a blob by the SHA-256 of its bytes makes a
write idempotent (a redelivered task stores nothing new), dedupes identical
uploads, and lets every read prove it got what was written.

Both backends go through one fsspec filesystem; the only differences are how
a write is made atomic and that S3 has no folders to create:

* local: bytes go to ``<root>/.tmp/`` (same filesystem as the blobs), are
  fsynced, then renamed onto the final name, so a reader never sees half a blob.
* S3: an object appears only when its single PUT or its multipart upload
  completes, which is atomic by itself. The key is the digest, which is only
  known once the whole stream was read, so a stream is spooled to a local
  temporary file first (disk, not memory) and then uploaded.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

import fsspec

from portal.store.blob_integrity import (
    DIGEST_RE,
    BlobCorruptError,
    BlobNotFoundError,
    BlobStoreUnavailableError,
    VerifyingReader,
    check_digest,
    copy_hashing,
)

__all__ = [
    "BlobCorruptError",
    "BlobInfo",
    "BlobNotFoundError",
    "BlobStore",
    "BlobStoreUnavailableError",
    "open_blob_store",
]

CHUNK_SIZE = 1 << 20
TMP_DIR = ".tmp"
# S3 allows at most 10,000 parts and at least 5 MiB each (but the last).
# 16 MiB parts with 4 in flight bound an upload's memory to about 64 MiB.
S3_PART_SIZE = 16 << 20
S3_MAX_PARTS = 9_000
S3_UPLOAD_CONCURRENCY = 4
# A /readyz probe must answer quickly when MinIO is down, not after botocore's
# default 60 s connect timeout and its retries.
S3_DEFAULT_CONFIG = {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 3}}

_SHARD_RE = re.compile(r"[0-9a-f]{2}")
ACCEPTED_URLS = "a plain folder path, file:///absolute/path, or s3://bucket[/prefix]"


@dataclass(frozen=True)
class BlobInfo:
    digest: str
    size: int
    modified: datetime


def _fsync_dir(path: str) -> None:
    """A rename is durable only once its folder is synced; best effort where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _as_utc(info: dict[str, Any]) -> datetime:
    """Local info carries an mtime float, s3fs a LastModified datetime; callers get one kind."""
    if "LastModified" in info:
        value: str | datetime = info["LastModified"]
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)
    return datetime.fromtimestamp(float(info["mtime"]), tz=timezone.utc)


class BlobStore:
    """Blobs are named by their SHA-256 hex digest, so writes are idempotent and dedupe for free."""

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, url: str, *, local: bool) -> None:
        self.fs = fs
        self.url = url
        self._root = root.rstrip("/")
        self._local = local
        self._tmp = f"{self._root}/{TMP_DIR}"

    def __repr__(self) -> str:
        return f"BlobStore({self.url!r})"

    def blob_path(self, digest: str) -> str:
        """Exposed for gc and for tests that must reach the stored object directly."""
        d = check_digest(digest)
        return f"{self._root}/{d[:2]}/{d[2:4]}/{d}"

    # -- writing -----------------------------------------------------------

    def put_bytes(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        if self.exists(digest):
            return digest
        if self._local:
            self._put_local(io.BytesIO(data), CHUNK_SIZE)
        else:
            # The digest is known up front, so one PUT straight to the final key.
            self.fs.pipe_file(self.blob_path(digest), bytes(data))
        return digest

    def put_stream(self, stream: BinaryIO, chunk_size: int = CHUNK_SIZE) -> tuple[str, int]:
        if self._local:
            return self._put_local(stream, chunk_size)
        return self._put_s3(stream, chunk_size)

    def put_file(self, path: str | os.PathLike[str]) -> tuple[str, int]:
        # Copied through put_stream rather than uploaded by path: the hash then
        # covers exactly the bytes stored, even if the source changes meanwhile.
        with open(path, "rb") as f:
            return self.put_stream(f)

    def _put_local(self, stream: BinaryIO, chunk_size: int) -> tuple[str, int]:
        self.fs.makedirs(self._tmp, exist_ok=True)
        tmp = f"{self._tmp}/{uuid.uuid4().hex}.part"
        try:
            with self.fs.open(tmp, "wb") as out:
                digest, size = copy_hashing(stream, out.write, chunk_size)
                out.flush()
                os.fsync(out.fileno())
            final = self.blob_path(digest)
            if not self.fs.exists(final):
                parent = self.fs._parent(final)
                self.fs.makedirs(parent, exist_ok=True)
                self.fs.mv(tmp, final)
                _fsync_dir(parent)
            return digest, size
        finally:
            try:
                self.fs.rm_file(tmp)
            except FileNotFoundError:
                pass

    def _put_s3(self, stream: BinaryIO, chunk_size: int) -> tuple[str, int]:
        fd, spool = tempfile.mkstemp(prefix="medsam-blob-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out:
                digest, size = copy_hashing(stream, out.write, chunk_size)
            final = self.blob_path(digest)
            if not self.fs.exists(final):
                part = max(S3_PART_SIZE, -(-size // S3_MAX_PARTS))
                # s3fs does one PUT below two parts, else a multipart upload that
                # it aborts on error; either way the key appears whole or not at all.
                self.fs.put_file(spool, final, chunksize=part, max_concurrency=S3_UPLOAD_CONCURRENCY)
            return digest, size
        finally:
            try:
                os.unlink(spool)
            except FileNotFoundError:
                pass

    # -- reading -----------------------------------------------------------

    def get_bytes(self, digest: str) -> bytes:
        path = self.blob_path(digest)
        try:
            data: bytes = self.fs.cat_file(path)
        except FileNotFoundError:
            raise BlobNotFoundError(digest, self.url) from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise BlobCorruptError(digest, actual)
        return data

    def open(self, digest: str) -> BinaryIO:
        """Not seekable: the verdict needs every byte read once, in order."""
        path = self.blob_path(digest)
        try:
            inner = self.fs.open(path, "rb")
        except FileNotFoundError:
            raise BlobNotFoundError(digest, self.url) from None
        return io.BufferedReader(VerifyingReader(inner, digest), buffer_size=CHUNK_SIZE)

    def exists(self, digest: str) -> bool:
        return bool(self.fs.isfile(self.blob_path(digest)))

    def size(self, digest: str) -> int:
        path = self.blob_path(digest)
        try:
            info = self.fs.info(path)
        except FileNotFoundError:
            raise BlobNotFoundError(digest, self.url) from None
        if info.get("type") != "file":
            raise BlobNotFoundError(digest, self.url)
        return int(info["size"])

    def delete(self, digest: str) -> bool:
        path = self.blob_path(digest)
        if not self._local and not self.fs.isfile(path):
            # S3 answers a DELETE of a missing key with success, so ask first.
            return False
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            return False
        return True

    def iter_blobs(self) -> Iterator[BlobInfo]:
        """Lists one top-level shard at a time so memory stays bounded on big stores."""
        try:
            shards = self.fs.ls(self._root, detail=False)
        except FileNotFoundError:
            return
        for shard in sorted(shards):
            if not _SHARD_RE.fullmatch(shard.rstrip("/").rsplit("/", 1)[-1]):
                continue  # .tmp and anything else that is not a blob shard
            found = self.fs.find(shard, detail=True)
            for path in sorted(found):
                name = path.rsplit("/", 1)[-1]
                if not DIGEST_RE.fullmatch(name) or path != self.blob_path(name):
                    continue
                info = found[path]
                yield BlobInfo(digest=name, size=int(info["size"]), modified=_as_utc(info))

    def sweep_temporary(self, older_than: datetime) -> int:
        """Remove write leftovers of killed processes (only those older than a grace time)."""
        try:
            found = self.fs.find(self._tmp, detail=True)
        except FileNotFoundError:
            return 0
        removed = 0
        for path, info in found.items():
            if _as_utc(info) < older_than:
                self.fs.rm_file(path)
                removed += 1
        return removed

    # -- health ------------------------------------------------------------

    def check(self) -> None:
        """Write, read back and remove a probe: listing alone would pass a read-only store."""
        probe = f"{self._tmp}/check-{uuid.uuid4().hex}"
        try:
            if self._local:
                self.fs.makedirs(self._tmp, exist_ok=True)
            self.fs.pipe_file(probe, b"ok")
            if self.fs.cat_file(probe) != b"ok":
                raise OSError("probe read back different bytes")
            self.fs.rm_file(probe)
        except Exception as exc:  # botocore errors are not all OSErrors
            raise BlobStoreUnavailableError(
                f"blob store {self.url} is not usable: {type(exc).__name__}: {exc}"
            ) from exc


def _local_store(path: str, url: str) -> BlobStore:
    root = os.path.abspath(os.path.expanduser(path))
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as exc:
        raise BlobStoreUnavailableError(f"cannot create blob folder {root}: {exc}") from exc
    fs = fsspec.filesystem("file")
    return BlobStore(fs, root, Path(root).as_uri(), local=True)


def open_blob_store(
    url: str,
    *,
    s3_endpoint_url: str | None = None,
    s3_options: dict[str, Any] | None = None,
) -> BlobStore:
    """Turn ``MEDSAM_STORAGE_URL`` into a store.

    ``s3_endpoint_url`` points at MinIO or moto and is ignored for a local
    folder, so one settings file can switch backends by its URL alone.
    ``s3_options`` go to s3fs (``key``, ``secret``, ``config_kwargs``, ...);
    without them credentials come from the usual AWS variables and files.
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"empty blob store URL; expected {ACCEPTED_URLS}")
    url = url.strip()
    if "://" not in url:
        return _local_store(url, url)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if parts.query or parts.fragment:
        raise ValueError(f"blob store URL {url!r} must not have a query or fragment; expected {ACCEPTED_URLS}")
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file URL {url!r} names a host; expected {ACCEPTED_URLS}")
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise ValueError(f"file URL {url!r} needs an absolute path; expected {ACCEPTED_URLS}")
        return _local_store(path, url)
    if scheme == "s3":
        bucket = parts.netloc
        if not bucket or "@" in bucket or ":" in bucket:
            raise ValueError(f"S3 URL {url!r} needs a bucket name; expected {ACCEPTED_URLS}")
        prefix = "/".join(p for p in parts.path.split("/") if p)
        if any(p in (".", "..") for p in prefix.split("/")):
            raise ValueError(f"S3 URL {url!r} has '.' or '..' in its prefix")
        options: dict[str, Any] = dict(s3_options or {})
        options["config_kwargs"] = {**S3_DEFAULT_CONFIG, **options.get("config_kwargs", {})}
        if s3_endpoint_url:
            options["endpoint_url"] = s3_endpoint_url
        # Another process may add blobs at any time: a cached listing would hide them.
        options["use_listings_cache"] = False
        fs = fsspec.filesystem("s3", **options)
        root = f"{bucket}/{prefix}" if prefix else bucket
        return BlobStore(fs, root, f"s3://{root}", local=False)
    raise ValueError(f"unsupported blob store URL {url!r}; expected {ACCEPTED_URLS}")
