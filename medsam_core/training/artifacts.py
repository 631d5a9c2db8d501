"""What a training run leaves behind: checkpoint bytes and the loss / validation-Dice figure."""

from __future__ import annotations

import io
from typing import Any

import torch


def checkpoint_bytes(checkpoint: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(checkpoint, buf)
    return buf.getvalue()


def checkpoint_from_bytes(data: bytes) -> dict[str, Any]:
    checkpoint: dict[str, Any] = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    return checkpoint


def best_checkpoint(result_state: dict[str, Any], family: str, epoch: int, val_dice: float) -> dict[str, Any]:
    """A complete model in the layout every loader here (and MedSAM's) accepts."""
    return {"model": result_state, "epoch": epoch, "val_dice": val_dice, "family": family}


def curves_png(history: list[dict[str, Any]], baseline_val_dice: float, title: str = "") -> bytes:
    """Training loss and validation Dice per epoch, like the seed's train_loss.png (plus validation)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=100)
    ax_loss.plot(epochs, [h["train_loss"] for h in history], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="Dice + BCE loss", title="training loss")
    ax_dice.plot([0, *epochs], [baseline_val_dice, *[h["val_dice"] for h in history]], marker="o", color="tab:green")
    ax_dice.axhline(baseline_val_dice, color="grey", linestyle="--", linewidth=1, label="before training")
    ax_dice.set(xlabel="epoch (0 = starting weights)", ylabel="Dice", title="validation Dice")
    ax_dice.legend(loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
