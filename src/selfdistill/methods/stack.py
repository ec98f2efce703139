"""Methods compose: a combination such as ``dlb+dsr`` is a list of methods whose loss terms add.

:class:`MethodStack` is what the engine runs. It puts the hard-label cross-entropy first unless a
member replaces it, lets each member extend the batch in turn, and collects every member's named
terms. It refuses, before training, combinations that cannot work: two members that produce a term
of the same name, two that each replace the cross-entropy, two that each bring their own sampler,
and members that cannot take mixup/CutMix when it is on.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..errors import UserError
from .base import Batch, Method, Outputs, SetupContext
from .ce import CrossEntropy


def _has_sampler(method: Method) -> bool:
    return type(method).batches is not Method.batches


class MethodStack(Method):
    def __init__(self, members: list[Method], name: str | None = None) -> None:
        if not any(m.provides_task_loss for m in members):
            members = [CrossEntropy(), *members]
        self.members = members
        self.name = name or "+".join(m.name for m in members if not isinstance(m, CrossEntropy)) or "ce"
        replacing = [m.name for m in members if m.provides_task_loss]
        samplers = [m.name for m in members if _has_sampler(m)]
        if len(replacing) > 1:
            raise UserError(f"method.name={self.name!r}: {' and '.join(replacing)} each replace the cross-entropy "
                            "loss; combine at most one of them")
        if len(samplers) > 1:
            raise UserError(f"method.name={self.name!r}: {' and '.join(samplers)} each need their own batch "
                            "sampler; combine at most one of them")
        names = [t for m in members for t in m.term_names]
        duplicates = sorted({t for t in names if names.count(t) > 1})
        if duplicates:
            raise UserError(f"method.name={self.name!r}: loss term {duplicates[0]!r} is produced twice")
        self.term_names = tuple(names)
        self.min_batch_size = max(m.min_batch_size for m in members)
        self.uses_total_epochs = any(m.uses_total_epochs for m in members)
        fewest = max(m.teachers_needed[0] for m in members)
        limits = [m.teachers_needed[1] for m in members if m.teachers_needed[1] is not None and
                  m.teachers_needed != (0, 0)]
        most = min(limits) if limits else (None if any(m.teachers_needed[1] is None for m in members) else 0)
        if most is not None and fewest > most:
            raise UserError(f"method.name={self.name!r}: its members disagree on the number of teachers "
                            f"(at least {fewest}, at most {most})")
        self.teachers_needed = (fewest, most)

    def setup(self, ctx: SetupContext) -> None:
        if ctx.mixing:
            refusing = [m.name for m in self.members if not m.supports_mixing]
            if refusing:
                raise UserError(f"data.mix: {', '.join(refusing)} cannot be combined with mixup/CutMix (its targets "
                                "need unmixed rows); set data.mix.name=none")
        for m in self.members:
            m.setup(ctx)

    @property
    def taps(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(t for m in self.members for t in m.taps))

    def teacher_taps(self) -> list[tuple[str, ...]]:
        per_member = [m.teacher_taps() for m in self.members]
        count = max(map(len, per_member), default=0)
        return [tuple(dict.fromkeys(t for taps in per_member if k < len(taps) for t in taps[k])) for k in range(count)]

    def modules(self) -> dict[str, nn.Module]:
        return {m.name: nn.ModuleDict(m.modules()) for m in self.members if m.modules()}

    def batches(self, labels: torch.Tensor, batch_size: int, generator: torch.Generator, drop_last: bool,
                rank: int, world_size: int) -> list[torch.Tensor] | None:
        for m in self.members:
            if _has_sampler(m):
                return m.batches(labels, batch_size, generator, drop_last, rank, world_size)
        return None

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
