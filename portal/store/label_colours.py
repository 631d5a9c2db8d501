"""The one place that decides which colour a label class is drawn in.

The project's ``label_classes`` carry a ``color`` per class; a class without
one (or a label that is no longer a class) gets a default from
``medsam_core.outputs.PALETTE``, the palette the demo's and the CLI's files
use, so the overlay, the brush, the live mask and the exported PNGs agree.
"""

from __future__ import annotations

import re
import zlib
from typing import Any

from medsam_core.outputs import PALETTE

HEX = re.compile(r"^#[0-9a-fA-F]{6}$")


def hex_of(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def rgb_of(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def default_colour(index: int) -> str:
    """The colour of the ``index``-th class (0-based) when the project names none."""
    return hex_of(PALETTE[index % len(PALETTE)])


def label_colour(label_classes: list[Any] | None, label: str) -> str:
    """``#rrggbb`` for ``label``: its class's colour, else the default of its position.

    A label that is not (or no longer) a class gets a default picked from its
    name, so it keeps one colour across sessions and exports.
    """
    for index, entry in enumerate(label_classes or []):
        name = entry if isinstance(entry, str) else entry.get("name")
        if name == label:
            colour = None if isinstance(entry, str) else entry.get("color")
            return colour if isinstance(colour, str) and HEX.match(colour) else default_colour(index)
    return default_colour(zlib.crc32(label.encode()))


def label_palette(label_classes: list[Any] | None) -> list[tuple[int, int, int]]:
    """RGB of class 1..K in order: the palette of a label map whose value k is the k-th class."""
    names = [e if isinstance(e, str) else e.get("name", "") for e in label_classes or []]
    return [rgb_of(label_colour(label_classes, name)) for name in names]
