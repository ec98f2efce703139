"""Evaluation on the full, unshuffled test set (sharded across ranks, sums reduced)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..data import Augment, eval_batches
from ..distributed import Dist, all_reduce_sum
from ..metrics import EvalAccumulator
from .runtime import Precision


@torch.inference_mode()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int, augment: Augment,
             batch_size: int, precision: Precision, ctx: Dist = Dist()) -> EvalAccumulator:
    """Top-1, NLL and ECE of ``model`` (in eval mode) over every test image exactly once."""
    was_training = model.training
    model.eval()
    acc = EvalAccumulator(num_classes, device=images.device)
    for idx in eval_batches(len(labels), batch_size, ctx.rank, ctx.world_size):
        idx = idx.to(images.device)
        x = precision.inputs(augment.eval(images[idx]))
        with precision.autocast():
            logits = model(x)
        acc.add(logits, labels[idx])
    all_reduce_sum(acc.state, ctx)
    model.train(was_training)
    return acc
