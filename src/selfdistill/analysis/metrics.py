"""Classification metrics: top-1 and top-5 accuracy, negative log-likelihood, expected calibration
error, per-class accuracy and reliability bins.

:class:`EvalAccumulator` gathers sums over batches (and over distributed ranks, by summing its one
``state`` tensor), so metrics over a whole test set never depend on how it was batched. Every sum
is a count or a float64 sum of per-sample values, so a differently batched pass gives the same
counts exactly and the same float sums up to float64 rounding.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

ECE_BINS = 15
TOP_K = 5


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Percentage of rows whose arg-max is the label."""
    return 100.0 * (logits.argmax(1) == labels).float().mean().item()


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """ECE in percent: sum over equal-width confidence bins of |accuracy - confidence| weighted by the
    fraction of samples in the bin (Guo et al., 2017; bins are (i/M, (i+1)/M])."""
    acc = EvalAccumulator(probs.shape[1], bins, device=probs.device)
    acc.add_probs(probs, labels)
    return acc.ece()


def ece_from_reliability(reliability: dict[str, Any]) -> float:
    """ECE in percent from reliability bins (:meth:`EvalAccumulator.reliability`, possibly pooled over
    runs by adding the lists): sum over bins of |correct - confidence sum| / images."""
    total = sum(reliability["count"])
    gaps = (abs(c - s) for c, s in zip(reliability["correct"], reliability["confidence_sum"]))
    return 100.0 * sum(gaps) / total if total else 0.0


def _sums_by(index: torch.Tensor, values: torch.Tensor, size: int) -> torch.Tensor:
    """``out[r, j] = sum of values[r, i] over i with index[i] == j`` for each row ``r``, in float64.

    A one-hot product rather than ``bincount(weights=...)``, which has no deterministic CUDA kernel."""
    return values.double() @ F.one_hot(index, size).double()


class EvalAccumulator:
    """Running sums for the metrics of one evaluation, all in the one float64 ``state`` tensor:

    ``[count, top-1 correct, NLL sum, top-k correct,
    per-bin count (bins), per-bin confidence sum (bins), per-bin correct (bins),
    per-class count (classes), per-class correct (classes)]``

    Top-k uses k = min(5, classes). Bins are equal-width confidence bins (i/M, (i+1)/M].
    """

    def __init__(self, num_classes: int, bins: int = ECE_BINS, device: torch.device | str = "cpu") -> None:
        self.num_classes, self.bins, self.k = num_classes, bins, min(TOP_K, num_classes)
        sizes = {"count": 1, "correct": 1, "nll": 1, "topk": 1, "bin_count": bins, "bin_confidence": bins,
                 "bin_correct": bins, "class_count": num_classes, "class_correct": num_classes}
        self._parts: dict[str, slice] = {}
        start = 0
        for name, size in sizes.items():
            self._parts[name] = slice(start, start + size)
            start += size
        self.state = torch.zeros(start, dtype=torch.float64, device=device)

    def _part(self, name: str) -> torch.Tensor:
        """A view of one named part of ``state`` (looked up each time, so replacing ``state`` is safe)."""
        return self.state[self._parts[name]]

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        log_probs = F.log_softmax(logits.float(), dim=1)
        self._part("nll").sub_(log_probs.gather(1, labels[:, None]).double().sum())
        self.add_probs(log_probs.exp(), labels, nll=False)

    def add_probs(self, probs: torch.Tensor, labels: torch.Tensor, nll: bool = True) -> None:
        confidence, prediction = probs.max(1)
        correct = (prediction == labels).double()
        in_topk = (probs.topk(self.k, dim=1).indices == labels[:, None]).any(1).double()
        if nll:
            self._part("nll").sub_(probs.gather(1, labels[:, None]).clamp_min(1e-12).log().double().sum())
        self._part("count").add_(len(labels))
        self._part("correct").add_(correct.sum())
        self._part("topk").add_(in_topk.sum())
        which = (confidence.double() * self.bins).ceil().long().clamp(1, self.bins) - 1
        per_bin = _sums_by(which, torch.stack([torch.ones_like(correct), confidence.double(), correct]), self.bins)
        self._part("bin_count").add_(per_bin[0])
        self._part("bin_confidence").add_(per_bin[1])
        self._part("bin_correct").add_(per_bin[2])
        per_class = _sums_by(labels, torch.stack([torch.ones_like(correct), correct]), self.num_classes)
        self._part("class_count").add_(per_class[0])
        self._part("class_correct").add_(per_class[1])

    @property
    def count(self) -> int:
        return int(self._part("count").item())

    def top1(self) -> float:
        """Top-1 accuracy in percent."""
        return 100.0 * float(self._part("correct") / self._part("count"))

    def top5(self) -> float:
        """Top-k accuracy in percent, k = min(5, number of classes)."""
        return 100.0 * float(self._part("topk") / self._part("count"))

    def nll(self) -> float:
        """Mean negative log-likelihood of the label (nats)."""
        return float(self._part("nll") / self._part("count"))

    def ece(self) -> float:
        """Expected calibration error in percent."""
        # sum over bins of |B| / N * |acc(B) - conf(B)|  ==  sum of |correct(B) - confidence sum(B)| / N
        gaps = (self._part("bin_confidence") - self._part("bin_correct")).abs().sum()
        return 100.0 * float(gaps / self._part("count"))

    def class_counts(self) -> list[int]:
        """Number of evaluated images of each class."""
        return [round(c) for c in self._part("class_count").tolist()]

    def per_class_accuracy(self) -> list[float | None]:
        """Top-1 accuracy in percent of each class; ``None`` for a class with no images."""
        counts, correct = self._part("class_count").tolist(), self._part("class_correct").tolist()
        return [100.0 * right / n if n else None for n, right in zip(counts, correct)]

    def reliability(self) -> dict[str, Any]:
        """The raw reliability bins, as sums so that several runs can be pooled by adding them:
        ``{"bins": M, "count": [M ints], "confidence_sum": [M floats], "correct": [M ints]}``."""
        return {"bins": self.bins,
                "count": [round(c) for c in self._part("bin_count").tolist()],
                "confidence_sum": self._part("bin_confidence").tolist(),
                "correct": [round(c) for c in self._part("bin_correct").tolist()]}


class FidelityAccumulator:
    """How closely a student follows its teacher (Stanton et al., NeurIPS 2021), as running sums in one
    float64 ``state``: ``[count, top-1 agreements, predictive KL sum]``.

    * top-1 agreement: percent of images where the student's and the teacher's argmax agree;
    * predictive KL: mean over images of KL(p_teacher || p_student) at temperature 1, in nats, where
      p_teacher is the ensemble's mean of probabilities when there are several teachers.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.state = torch.zeros(3, dtype=torch.float64, device=device)

    def add(self, student_logits: torch.Tensor, teacher: torch.Tensor) -> None:
        """``teacher``: the teachers' probabilities for the same rows (:func:`selfdistill.losses.ensemble_probs`)."""
        log_student = F.log_softmax(student_logits.float(), dim=1)
        agree = (log_student.argmax(1) == teacher.argmax(1)).double().sum()
        kl = F.kl_div(log_student, teacher, reduction="sum").double()
        self.state += torch.stack([torch.tensor(float(len(teacher)), dtype=torch.float64, device=self.state.device),
                                   agree, kl])

    def agreement(self) -> float:
        return 100.0 * float(self.state[1] / self.state[0].clamp_min(1))

    def predictive_kl(self) -> float:
        return float(self.state[2] / self.state[0].clamp_min(1))


class TeacherDiagnostics:
    """The teacher's own quality and the dark knowledge in its predictions, over a whole split:
    top-1, NLL and ECE (an :class:`EvalAccumulator` over its probabilities), the mean entropy of its
    predictions, and the mean non-target entropy: the entropy of its distribution over the classes other
    than the true label, renormalised to sum to 1 (in nats; at most log(K - 1)). Label smoothing in the
    teacher's training flattens the non-target distribution's structure (Müller et al. 2019), and the
    similarity information it carries is what the student learns beyond the label (Vats & Crandall)."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.eval = EvalAccumulator(num_classes, device=device)
        self.sums = torch.zeros(2, dtype=torch.float64, device=device)  # [entropy sum, non-target entropy sum]

    def add(self, probs: torch.Tensor, labels: torch.Tensor) -> None:
        self.eval.add_probs(probs, labels)
        plogp = probs * probs.clamp_min(1e-30).log()
        entropy = -plogp.sum(1)
        other = probs.scatter(1, labels[:, None], 0.0)
        q = other / other.sum(1, keepdim=True).clamp_min(1e-30)
        nontarget = -(q * q.clamp_min(1e-30).log()).sum(1)
        self.sums += torch.stack([entropy.double().sum(), nontarget.double().sum()])

    def summary(self) -> dict[str, float]:
        count = max(self.eval.count, 1)
        return {"top1": self.eval.top1(), "nll": self.eval.nll(), "ece": self.eval.ece(),
                "entropy": float(self.sums[0]) / count, "nontarget_entropy": float(self.sums[1]) / count}
