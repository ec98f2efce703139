"""Classification metrics: top-1 accuracy, negative log-likelihood, expected calibration error.

:class:`EvalAccumulator` gathers sums over batches (and over distributed ranks, by summing its
``state`` tensor), so metrics over a whole test set never depend on how it was batched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ECE_BINS = 15


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Percentage of rows whose arg-max is the label."""
    return 100.0 * (logits.argmax(1) == labels).float().mean().item()


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """ECE in percent: sum over equal-width confidence bins of |accuracy - confidence| weighted by the
    fraction of samples in the bin (Guo et al., 2017; bins are (i/M, (i+1)/M])."""
    acc = EvalAccumulator(probs.shape[1], bins, device=probs.device)
    acc.add_probs(probs, labels)
    return acc.ece()


class EvalAccumulator:
    """Running sums for top-1, NLL and ECE: ``state`` = [count, correct, nll sum, per-bin count,
    per-bin confidence sum, per-bin correct]."""

    def __init__(self, num_classes: int, bins: int = ECE_BINS, device: torch.device | str = "cpu") -> None:
        self.bins = bins
        self.state = torch.zeros(3 + 3 * bins, dtype=torch.float64, device=device)

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        log_probs = F.log_softmax(logits.float(), dim=1)
        self.state[2] += F.nll_loss(log_probs, labels, reduction="sum").double()
        self.add_probs(log_probs.exp(), labels, nll=False)

    def add_probs(self, probs: torch.Tensor, labels: torch.Tensor, nll: bool = True) -> None:
        confidence, prediction = probs.max(1)
        correct = (prediction == labels).double()
        if nll:
            self.state[2] -= probs.gather(1, labels[:, None]).clamp_min(1e-12).log().sum().double()
        self.state[0] += len(labels)
        self.state[1] += correct.sum()
        which = (confidence.double() * self.bins).ceil().long().clamp(1, self.bins) - 1
        b = self.bins
        self.state[3:3 + b] += torch.bincount(which, minlength=b).double()
        self.state[3 + b:3 + 2 * b] += torch.bincount(which, weights=confidence.double(), minlength=b)
        self.state[3 + 2 * b:] += torch.bincount(which, weights=correct, minlength=b)

    @property
    def count(self) -> int:
        return int(self.state[0].item())

    def top1(self) -> float:
        return 100.0 * float(self.state[1] / self.state[0])

    def nll(self) -> float:
        return float(self.state[2] / self.state[0])

    def ece(self) -> float:
        b = self.bins
        conf, correct = self.state[3 + b:3 + 2 * b], self.state[3 + 2 * b:]
        # sum over bins of |B| / N * |acc(B) - conf(B)|  ==  sum of |correct(B) - confidence sum(B)| / N
        return 100.0 * float((conf - correct).abs().sum() / self.state[0])
