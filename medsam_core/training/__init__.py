"""Fine-tuning: the MedSAM recipe, plus a decoder-only mode that trains on cached embeddings.

``finetune`` is the one orchestration (CLI and worker alike); ``MODES`` and
``check_mode`` the one rule about which mode may run where. Names load on first
use, so ``medsam --help`` can list the modes without importing torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_WHERE = {
    "Sample": "data",
    "split_by_group": "data",
    "MODES": "modes",
    "Mode": "modes",
    "check_mode": "modes",
    "RunInfo": "run",
    "Sink": "run",
    "finetune": "run",
    "TrainConfig": "trainer",
    "TrainResult": "trainer",
    "Trainer": "trainer",
}
__all__ = [
    "MODES",
    "Mode",
    "RunInfo",
    "Sample",
    "Sink",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "check_mode",
    "finetune",
    "split_by_group",
]
assert sorted(__all__) == sorted(_WHERE)  # one list of names; a literal so linters and mypy see the exports

if TYPE_CHECKING:
    from medsam_core.training.data import Sample, split_by_group
    from medsam_core.training.modes import MODES, Mode, check_mode
    from medsam_core.training.run import RunInfo, Sink, finetune
    from medsam_core.training.trainer import TrainConfig, Trainer, TrainResult


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
