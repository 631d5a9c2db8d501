"""Fine-tuning: the MedSAM recipe, plus a decoder-only mode that trains on cached embeddings."""

from medsam_core.training.data import Sample, split_by_group
from medsam_core.training.trainer import TrainConfig, Trainer, TrainResult

__all__ = ["Sample", "TrainConfig", "TrainResult", "Trainer", "split_by_group"]
