"""Label smoothing (Szegedy et al., 2016; Müller, Kornblith & Hinton, 2019) as a baseline.

The hard-label loss is replaced by cross-entropy against ``(1 - eps) * onehot + eps / K`` (the
"uniform" convention of the paper and of PyTorch). The Tf-KD and Self-KD-Lib code put ``eps/(K-1)``
on the other classes instead ("others" convention); ``convention: others`` gives that (it equals
uniform smoothing with ``eps * K / (K - 1)``). Default eps = 0.1. With mixup/CutMix the smoothing
applies to the mixed target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import require
from ..losses import cross_entropy
from .base import Batch, Method, Outputs


@dataclass
class LSOptions:
    epsilon: float = 0.1
    convention: Literal["uniform", "others"] = "uniform"

    def check(self) -> None:
        require(0 <= self.epsilon < 1, "method.epsilon", self.epsilon, "a number in [0, 1)")


class LabelSmoothing(Method):
    name = "ls"
    summary = "label smoothing: cross-entropy against (1 - eps) one-hot + eps uniform"
    Options = LSOptions
    term_names = ("ls_ce",)
    replicable = True
    provides_task_loss = True

    def losses(self, out: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        k = out.logits.shape[1]
        eps = self.options.epsilon * (k / (k - 1) if self.options.convention == "others" else 1.0)
        rows = batch.supervised_rows()
        return {"ls_ce": cross_entropy(out.logits[rows], batch.loss_targets(k)[rows], label_smoothing=eps)}
