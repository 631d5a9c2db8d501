"""Giving freed memory back to the operating system after a large prompt.

glibc keeps freed heap pages in its arenas, so a process that once decoded many
boxes would keep that peak for good. ``malloc_trim`` returns them; it costs a few
milliseconds, so it runs only after prompts big enough to have grown the heap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)
TRIM_AFTER_BOXES = 4  # prompts with fewer boxes barely move the heap

_libc = None


def _load_libc():
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            _libc = ctypes.CDLL(name) if name else False
        except OSError:
            _libc = False
        if _libc is not False and not hasattr(_libc, "malloc_trim"):
            _libc = False  # musl and macOS have no malloc_trim
    return _libc


def release_after(n_boxes: int) -> bool:
    """Trim the heap after a prompt of ``n_boxes``; True if it was trimmed."""
    if n_boxes < TRIM_AFTER_BOXES:
        return False
    libc = _load_libc()
    if not libc:
        return False
    libc.malloc_trim(0)
    return True
