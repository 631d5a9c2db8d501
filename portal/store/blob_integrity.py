"""What makes a content-addressed blob trustworthy: valid names, hashing while copying, verified reads.

Split from ``portal.store.blobs`` (which is about where and how blobs are written) so
the integrity rules can be read, and tested, on their own.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Callable
from typing import Any, BinaryIO

DIGEST_RE = re.compile(r"[0-9a-f]{64}")


class BlobNotFoundError(LookupError):
    """A lookup error rather than an OSError: callers treat it as 'no such key'."""

    def __init__(self, digest: str, url: str = "") -> None:
        where = f" in {url}" if url else ""
        super().__init__(f"blob {digest} not found{where}")
        self.digest = digest


class BlobCorruptError(IOError):
    """The bytes under a digest's name no longer hash to it: disk rot, or a hand edit."""

    def __init__(self, digest: str, actual: str) -> None:
        super().__init__(f"blob {digest} is corrupt: its stored bytes hash to {actual}")
        self.digest = digest
        self.actual = actual


class BlobStoreUnavailableError(OSError):
    """One error type for /readyz, whatever the backend raised underneath."""


def check_digest(digest: object) -> str:
    """Digests become paths, so only exact lowercase SHA-256 hex may reach the filesystem."""
    if not isinstance(digest, str) or not DIGEST_RE.fullmatch(digest):
        shown = repr(digest)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        raise ValueError(f"not a SHA-256 hex digest (64 lowercase hex characters): {shown}")
    return digest


def copy_hashing(stream: BinaryIO, write: Callable[[bytes], Any], chunk_size: int) -> tuple[str, int]:
    """Hash while copying so a stream is read exactly once and never held whole."""
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    hasher = hashlib.sha256()
    size = 0
    while True:
        chunk = stream.read(chunk_size)
        if not chunk:
            break
        hasher.update(chunk)
        write(chunk)
        size += len(chunk)
    return hasher.hexdigest(), size


class VerifyingReader(io.RawIOBase):
    """Hashes what passes through so a streamed read still ends in a verdict at EOF."""

    def __init__(self, inner: BinaryIO, digest: str) -> None:
        super().__init__()
        self._inner = inner
        self._digest = digest
        self._hasher = hashlib.sha256()
        self._verified = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:  # a writable buffer that takes slice assignment
        data = self._inner.read(len(buffer))
        n = len(data)
        if n:
            buffer[:n] = data
            self._hasher.update(data)
        elif not self._verified:
            self._verified = True
            actual = self._hasher.hexdigest()
            if actual != self._digest:
                raise BlobCorruptError(self._digest, actual)
        return n

    def close(self) -> None:
        if not self.closed:
            try:
                self._inner.close()
            finally:
                super().close()
