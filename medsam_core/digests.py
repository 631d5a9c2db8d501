"""Content digests of files, without importing torch: the store hashes uploads, the engine checkpoints."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    """Read in 1 MiB blocks, so a multi-gigabyte volume or checkpoint is never held whole."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
