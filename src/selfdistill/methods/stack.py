"""Methods compose: a combination such as ``dlb+dsr`` is a list of methods whose loss terms add.

:class:`MethodStack` is what the engine runs. It puts the hard-label cross-entropy first unless a
member replaces it, lets each member extend the batch in turn, and collects every member's named
terms (two members may not produce a term of the same name).
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Batch, Method, Outputs
from .ce import CrossEntropy


class MethodStack(Method):
    def __init__(self, members: list[Method]) -> None:
        if not any(m.provides_task_loss for m in members):
            members = [CrossEntropy(), *members]
        self.members = members
        self.name = "+".join(m.name for m in members if not isinstance(m, CrossEntropy)) or "ce"
        names = [t for m in members for t in m.term_names]
        duplicates = sorted({t for t in names if names.count(t) > 1})
        if duplicates:
            raise ValueError(f"loss term {duplicates[0]!r} is produced by two methods")
        self.term_names = tuple(names)
        self.min_batch_size = max(m.min_batch_size for m in members)

    def start_epoch(self, epoch: int) -> None:
        for m in self.members:
            m.start_epoch(epoch)

    def extend(self, batch: Batch) -> Batch:
        for m in self.members:
            batch = m.extend(batch)
        return batch

    def losses(self, out: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        for m in self.members:
            terms.update(m.losses(out, batch))
        return terms

    def update(self, out: Outputs, batch: Batch) -> None:
        for m in self.members:
            m.update(out, batch)

    def state_dict(self) -> dict[str, Any]:
        return {m.name: m.state_dict() for m in self.members}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for m in self.members:
            m.load_state_dict(state[m.name])
