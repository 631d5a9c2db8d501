"""The fine-tuning modes and the one rule about where each may run.

The CLI (this machine's device), the service (refuse before queueing) and the
training worker (refuse what reached it anyway) all ask ``check_mode``, so the
list of modes and the GPU rule cannot drift apart; each caller only adds the
remedy that makes sense where its user is.
"""

from __future__ import annotations

from typing import Literal, get_args

from medsam_core.errors import MedsamError

Mode = Literal["decoder", "full"]
MODES: tuple[str, ...] = get_args(Mode)


def unknown_mode_message(mode: object) -> str:
    return f"unknown training mode {mode!r}; choose {' or '.join(MODES)}"


def check_mode(
    mode: str, gpu_available: bool, allow_cpu_full: bool, *, remedy: str = "", error: type[MedsamError] = MedsamError
) -> None:
    """Refuse an unknown mode, and full fine-tuning without a GPU unless the operator insisted.

    Full mode trains the image encoder: about a minute per step on a CPU, so a
    run that would take days is refused up front. ``remedy`` completes the
    sentence "full fine-tuning needs a GPU..."; ``error`` lets the store raise
    its own kind (a ``MedsamError`` subclass, so every caller still catches it).
    """
    if mode not in MODES:
        raise error(unknown_mode_message(mode))
    if mode == "full" and not gpu_available and not allow_cpu_full:
        raise error(f"full fine-tuning needs a GPU{remedy}")


# Simulated corrective clicks per training step, at most (trainer.TrainConfig.click_rounds). Here, beside
# the modes, so the CLI and the API schema read the default without importing torch.
DEFAULT_CLICK_ROUNDS = 0
