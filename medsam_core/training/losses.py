"""MedSAM's loss: soft Dice (sigmoid, squared denominators) plus BCE with logits, 1:1."""

from __future__ import annotations

import torch
import torch.nn.functional as F

SMOOTH = 1e-5


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    prob = torch.sigmoid(logits.float())
    dims = tuple(range(1, prob.ndim))
    inter = (prob * target).sum(dims)
    denom = (prob * prob).sum(dims) + (target * target).sum(dims)
    return (1 - (2 * inter + SMOOTH) / (denom + SMOOTH)).mean()


def medsam_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return dice_loss(logits, target) + F.binary_cross_entropy_with_logits(logits.float(), target)
