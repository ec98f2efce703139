"""Teacher-free NKD (Yang et al., "Rethinking Knowledge Distillation via Cross-Entropy", arXiv
2208.10139): the student's own, batch-centred target probability stands in for a teacher's.

With p = softmax(z) and p_t the probability of the label (T = 1):

    w = sg(p_t + 1 - mean over the batch of p_t)
    L_tf = -mean(w * log p_t)          (added to the usual cross-entropy, weight 1)

This is the arXiv version's ``tf_nkd`` in the official mmcls code (yzd-v/cls_KD, e.g. at de48db4 and
8a16562, in the classification distiller); the ICCV 2023 successor (USKD) adds non-target terms and
a weak head and is not this method. With soft labels (mixup/CutMix) the official code applies the
term to the two largest label entries v, with w = sg(p_k + v - mean(p_k)) and w = 0 where v = 0;
so do we.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import require
from .base import Batch, Method, Outputs


@dataclass
class TfNKDOptions:
    weight: float = 1.0

    def check(self) -> None:
        require(self.weight >= 0, "method.weight", self.weight, "a number >= 0")


def tf_nkd_term(logits: torch.Tensor, classes: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """-mean(w * log p_k) for class k of each row, w = sg(p_k + v - mean(p_k)), 0 where v = 0."""
    log_p = F.log_softmax(logits.float(), dim=1).gather(1, classes[:, None]).squeeze(1)
    p = log_p.exp()
    weight = (p + values - p.mean()).detach() * (values > 0)
    return -(weight * log_p).mean()


class TfNKD(Method):
    name = "tf_nkd"
    summary = "teacher-free NKD: own batch-centred target probability reweights the target term (2022)"
    Options = TfNKDOptions
    term_names = ("tf_nkd",)
    replicable = True

    def losses(self, out: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        rows = batch.supervised_rows()
        logits = out.logits[rows]
        if batch.mix is None:
            labels = batch.labels[rows]
            term = tf_nkd_term(logits, labels, torch.ones(len(labels), device=logits.device))
        else:
            values, classes = batch.targets(logits.shape[1])[rows].sort(dim=1, descending=True)
            term = tf_nkd_term(logits, classes[:, 0], values[:, 0]) + tf_nkd_term(logits, classes[:, 1], values[:, 1])
        return {"tf_nkd": self.options.weight * term}
