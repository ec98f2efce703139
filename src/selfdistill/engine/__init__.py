"""The training engine: one loop, optimisers and schedules, evaluation, checkpoints, DDP."""

from .evaluate import evaluate_networks
from .trainer import Trainer, train

__all__ = ["Trainer", "evaluate_networks", "train"]
