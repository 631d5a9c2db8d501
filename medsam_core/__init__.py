"""Pure ML engine: model families, medical image I/O, cached encode/decode, metrics.

Imports no web, database or queue code and reads no settings: callers pass
plain values (cache folder, size budget, device) down.
"""

from medsam_core.errors import (
    CheckpointError,
    InvalidImageError,
    MedsamError,
    PromptError,
    UnknownModelError,
)

__all__ = ["CheckpointError", "InvalidImageError", "MedsamError", "PromptError", "UnknownModelError"]
