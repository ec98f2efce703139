"""DML: Deep Mutual Learning (Zhang, Xiang, Hospedales & Lu, CVPR 2018).

A cohort of K networks, all trained from scratch, with no pretrained teacher. Each one fits the
labels and mimics the predictions of the others:

    L_i = CE(z_i, y) + 1/(K-1) * sum_{j != i} KL(sg(p_j) || p_i)

with p = softmax(z). The cohort is the student plus ``peers`` (their architectures; by default one peer
of the student's own architecture), trained as ``peer1``, ``peer2``, ... with their own optimisers.
Terms: ``dml_kl`` for the student and ``peer<k>_dml_kl`` for peer k (the stack adds every network's
cross-entropy, ``ce`` and ``peer<k>_ce``). The mimicry covers every row of the batch.

Choices, each an option:

* ``reduction``: ``mean`` (default) divides the sum over the other peers by K-1, as the paper's
  equation for K networks does; ``sum`` adds them, as the official TensorFlow code
  (YingZhangDUT/Deep-Mutual-Learning, ``train_models.py``) does. Identical for K = 2.
* ``temperature`` T: the KL between softmax(z/T) distributions, times T^2 (Hinton's scaling, so the
  gradient's size does not shrink with T). The paper and the official code use T = 1, the default,
  where this is exactly their term.
* ``sequential``: false (default) updates every network from one forward pass, the common form of
  PyTorch re-implementations. True is the paper's Algorithm 1: within a step the networks are updated
  one after another (student, peer1, ...), each on predictions recomputed on the same batch after the
  previous update; the engine runs K rounds and only the r-th network steps in round r (every network
  still runs forward in train mode each round, so batch-norm statistics move K times per step). The
  official code is sequential too, by our reading: it runs one session call per network, and each
  call re-evaluates the whole graph, so each network steps on predictions made with the others'
  latest weights, though also on a freshly dequeued batch of its own.

* ``kl``: which KL. ``exact`` (default) is the paper's KL(p_j || p_i), from ``log_softmax``: exact and
  finite for any logits. ``official`` is what the official code's ``kl_loss_compute`` computes,
  ``mean_rows sum_c p_j * log(1e-8 + p_j / (p_i + 1e-8))`` (``losses.official_dml_kl``), for
  reproducing the TF code's numbers. Its epsilons change the value by about 1e-8 only while the
  probabilities are moderate: they bound each log ratio within about ±ln(1e8) = ±18.4, so with
  confident peers the two differ greatly. For 256 rows of 100 classes with both networks' logits
  20 x N(0, 1) (``torch.manual_seed(0)``), the official term is 17.5 and the exact KL 49.5, and the
  exact gradient on the logits is 4.5 times the official one (ratio of norms). With a temperature,
  ``official`` takes softmax(z/T) and multiplies by T^2, as ``exact`` does; at T = 1 it is the TF term.

Both forms detach the targets: only each network's own optimiser updates it in the official code,
which is the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import UserError, require
from ..losses import kd_kl, official_dml_kl
from ..models import check_model_name
from .base import STUDENT, Batch, Method, NetworkSpec, Outputs, SetupContext


@dataclass
class DMLOptions:
    peers: list[str] | None = None  # architectures of the cohort besides the student; None: one like the student
    temperature: float = 1.0
    reduction: Literal["mean", "sum"] = "mean"
    sequential: bool = False
    kl: Literal["exact", "official"] = "exact"

    def check(self) -> None:
        if self.peers is not None:
            if not self.peers:
                raise UserError("method.peers=[] is not allowed: a cohort needs at least 2 networks (the student "
                                "and one peer); leave it unset for one peer of the student's architecture")
            for k, arch in enumerate(self.peers):
                check_model_name(arch, f"method.peers[{k}]")
        require(self.temperature > 0, "method.temperature", self.temperature, "a number > 0")


class DML(Method):
    name = "dml"
    summary = "Deep Mutual Learning (CVPR 2018): a cohort trained from scratch, each mimicking the others"
    Options = DMLOptions
    networks_added = (1, None)  # the peers: one by default, one per entry of method.peers

    def __init__(self, options: DMLOptions | None = None) -> None:
        super().__init__(options)
        count = 1 if self.options.peers is None else len(self.options.peers)
        self.cohort = (STUDENT, *(f"peer{k + 1}" for k in range(count)))
        self.term_names = ("dml_kl", *(f"{role}_dml_kl" for role in self.cohort[1:]))

    def networks(self, ctx: SetupContext) -> list[NetworkSpec]:
        archs = self.options.peers if self.options.peers is not None else [ctx.model_name]
        return [NetworkSpec(role, arch) for role, arch in zip(self.cohort[1:], archs)]

    @property
    def rounds(self) -> int:
        return len(self.cohort) if self.options.sequential else 1

    def paused(self, round: int) -> frozenset[str]:
        if not self.options.sequential:
            return frozenset()
        return frozenset(self.cohort) - {self.cohort[round]}

    def losses(self, out: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        o = self.options
        logits = [out.logits, *(out.others[role].logits for role in self.cohort[1:])]
        scale = 1.0 / (len(logits) - 1) if o.reduction == "mean" else 1.0
        kl = kd_kl if o.kl == "exact" else official_dml_kl
        terms = {}
        for i, (term, z_i) in enumerate(zip(self.term_names, logits)):
            terms[term] = scale * sum(kl(z_i, z_j, o.temperature) for j, z_j in enumerate(logits) if j != i)
        return terms
