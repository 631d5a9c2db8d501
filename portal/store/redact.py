"""Server paths out of messages people read: answers, job errors, UI notices.

Messages come from many layers (the image reader, the blob store, Celery), and some
of them name files on the server. Those paths mean nothing to a user and tell an
attacker about the deployment, so each is cut down to its last component. It lives
in the store because both the web side and the workers (job errors) need it.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

# Top-level folders a server path starts with; "/api/v1/..." routes in messages are left alone.
_ROOTS = ("tmp", "var", "home", "root", "usr", "opt", "srv", "mnt", "data", "work", "private", "run", "app", "etc")


def _path_pattern() -> re.Pattern[str]:
    roots = set(_ROOTS)
    for known in (tempfile.gettempdir(), sys.prefix, str(Path.home()), str(Path.cwd())):
        parts = Path(known).parts
        if len(parts) > 1:
            roots.add(parts[1])
    alternatives = "|".join(sorted((re.escape(r) for r in roots), key=len, reverse=True))
    return re.compile(rf"(?<![\w.:/])/(?:{alternatives})(?:/[^\s'\"<>():,;]+)+")


_PATH = _path_pattern()


def scrub(text: str) -> str:
    """Server paths in a message become their last component: '/srv/x/uploads/tmpab.png' -> 'tmpab.png'."""
    return _PATH.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1], text)
