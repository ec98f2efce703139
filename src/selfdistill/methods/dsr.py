"""DSR, LightSKD's Distillation with Shape-wise Regularization (Wang, Han & Guo, arXiv 2305.09183).

Each sample's logits are sorted, which discards which class is which and keeps only the *shape* of
the confidence profile; the current batch's sorted, softened logits are pulled towards those of the
previous batch (detached, made with the parameters before the last update), row i to row i:

    L_dsr = beta * T^2 * KL(softmax(sort(z_prev) / T) || softmax(sort(z_now) / T))   (batchmean)

T = 4 and beta = 1 as in the official code. As there, the term is skipped on the first batch of
every epoch (the official code re-initialises its cache each epoch; ``carry_across_epochs: true``
keeps it instead). The official loader drops the last partial batch so consecutive batches have
equal size; we pair the first min(B_prev, B_now) rows instead. Only the loader's new rows take
part (with DLB, its replayed rows are left out). Gradient flows through the sorted values.
The official code stores the cache only when DRG is on too (a bug that leaves DSR-alone distilling
from random numbers); here DSR always updates its cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import require
from ..losses import kd_kl
from .base import Batch, Method, Outputs


@dataclass
class DSROptions:
    temperature: float = 4.0
    beta: float = 1.0
    carry_across_epochs: bool = False

    def check(self) -> None:
        require(self.temperature > 0, "method.temperature", self.temperature, "a number > 0")
        require(self.beta >= 0, "method.beta", self.beta, "a number >= 0")


def sorted_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 KL between the softened, sorted rows (row i with row i, over the shorter length)."""
    n = min(len(student), len(teacher))
    return kd_kl(student[:n].sort(dim=1).values, teacher[:n].sort(dim=1).values, temperature)


class DSR(Method):
    name = "dsr"
    summary = "LightSKD's shape-wise regularisation: sorted logits pulled to the last batch's (2023)"
    Options = DSROptions
    term_names = ("dsr_kl",)

    def __init__(self, options: DSROptions | None = None) -> None:
        super().__init__(options)
        self.previous: torch.Tensor | None = None

    def start_epoch(self, epoch: int) -> None:
        if not self.options.carry_across_epochs:
            self.previous = None

    def losses(self, out: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        if self.previous is None:
            return {"dsr_kl": out.logits.new_zeros((), dtype=torch.float32)}
        now = out.logits[batch.parts["new"]]
        return {"dsr_kl": self.options.beta * sorted_kl(now, self.previous, self.options.temperature)}

    def update(self, out: Outputs, batch: Batch) -> None:
        self.previous = out.logits[batch.parts["new"]].detach().float()

    def state_dict(self) -> dict[str, Any]:
        return {"previous": None if self.previous is None else self.previous.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.previous = state["previous"]
