"""The cross-entropy baseline: the hard-label loss every other method adds its terms to."""

from __future__ import annotations

import torch

from ..losses import cross_entropy
from .base import Batch, Method, Outputs


class CrossEntropy(Method):
    """Mean cross-entropy over the supervised rows of the batch, including rows that methods appended
    (DLB's official code averages the hard-label loss over both halves); against the mixed targets
    when mixup/CutMix is on."""

    name = "ce"
    summary = "cross-entropy baseline on hard labels"
    term_names = ("ce",)
    replicable = True
    provides_task_loss = True

    def losses(self, out: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        rows = batch.supervised_rows()
        return {"ce": cross_entropy(out.logits[rows], batch.loss_targets(out.logits.shape[1])[rows])}
