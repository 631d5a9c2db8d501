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


M_ARENA_MAX = -8  # glibc's mallopt parameter number


def limit_arenas(count: int = 2) -> bool:
    """Cap glibc's malloc arenas, as MALLOC_ARENA_MAX would, for a process already running.

    glibc gives each busy thread its own arena (up to 8 per core) and each keeps its
    own high-water mark, so 30 clients decoding at once left hundreds of MB behind.
    """
    libc = _load_libc()
    return bool(libc and hasattr(libc, "mallopt") and libc.mallopt(M_ARENA_MAX, count))


def release_after(n_boxes: int) -> bool:
    """Trim the heap after a prompt of ``n_boxes``; True if it was trimmed."""
    if n_boxes < TRIM_AFTER_BOXES:
        return False
    libc = _load_libc()
    if not libc:
        return False
    libc.malloc_trim(0)
    return True
