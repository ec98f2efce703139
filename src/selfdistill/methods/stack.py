"""Methods compose: a combination such as ``dlb+dsr`` is a list of methods whose loss terms add.

:class:`MethodStack` is what the engine runs. It puts the hard-label cross-entropy first unless a
member replaces it, lets each member extend the batch in turn, and collects every member's named
terms. It refuses, before training, combinations that cannot work: two members that produce a term
of the same name, two that each replace the cross-entropy, two that each bring their own sampler,
and members that cannot take mixup/CutMix when it is on.

With an online member (one that adds trainable networks, :meth:`Method.networks`), every other member
must be ``replicable``: the stack then runs a copy of it for each added network (its terms prefixed
with the role, its state its own), so ``dml+dlb`` trains every peer with DLB on its own last batch,
and the cross-entropy covers every network. After the members' losses it detaches the terms of the
networks the members pause this step (:meth:`Method.paused`), so that no gradient reaches them.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
import torch.nn as nn

from ..errors import UserError
from .base import Batch, Method, NetworkSpec, Outputs, SetupContext, term_owner
from .ce import CrossEntropy


def _has_sampler(method: Method) -> bool:
    return type(method).batches is not Method.batches


def _is_online(method: Method) -> bool:
    return type(method).networks is not Method.networks


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
        online = [m.name for m in members if _is_online(m)]
        if len(online) > 1:
            raise UserError(f"method.name={self.name!r}: {' and '.join(online)} each train their own networks; "
                            "combine at most one online method")
        stuck = [m.name for m in members if online and not _is_online(m) and not m.replicable]
        if stuck:
            raise UserError(f"method.name={self.name!r}: {stuck[0]} cannot run on each network of {online[0]} (it "
                            "needs its own heads, taps, sampler or teacher); combine it with a single-network method")
        self.roles: tuple[str, ...] = ()  # the trainable networks besides the student, known after networks()
        self.copies: dict[str, list[Method]] = {}  # role -> a copy of each replicable member

    def networks(self, ctx: SetupContext) -> list[NetworkSpec]:
        specs = [spec for m in self.members for spec in m.networks(ctx)]
        self.roles = tuple(spec.role for spec in specs)
        self.copies = {role: [copy.deepcopy(m) for m in self.members if not _is_online(m)] for role in self.roles}
        copied = (f"{role}_{t}" for role, copies in self.copies.items() for m in copies for t in m.term_names)
        self.term_names = (*(t for m in self.members for t in m.term_names), *copied)
        return specs

    def setup(self, ctx: SetupContext) -> None:
        if ctx.mixing:
            refusing = [m.name for m in self.members if not m.supports_mixing]
            if refusing:
                raise UserError(f"data.mix: {', '.join(refusing)} cannot be combined with mixup/CutMix (its targets "
                                "need unmixed rows); set data.mix.name=none")
        for m in self.members:
            m.setup(ctx)
        for role, copies in self.copies.items():
            own = dataclasses.replace(ctx, model=ctx.networks[role], model_name=role)
            for m in copies:
                m.setup(own)

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

    @property
    def rounds(self) -> int:
        return max(m.rounds for m in self.members)

    def paused(self, round: int) -> frozenset[str]:
        return frozenset().union(*(m.paused(round) for m in self.members))

    @property
    def stat_names(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(s for m in self.members for s in m.stat_names)

    def stats(self) -> dict[str, torch.Tensor]:
        return {k: v for m in self.members for k, v in m.stats().items()}

    def _all(self) -> list[Method]:
        return [*self.members, *(m for copies in self.copies.values() for m in copies)]

    def start_epoch(self, epoch: int) -> None:
        for m in self._all():
            m.start_epoch(epoch)

    def notes(self, epochs: int) -> list[str]:
        return [note for m in self.members for note in m.notes(epochs)]

    def extend(self, batch: Batch) -> Batch:
        for m in self.members:
            batch = m.extend(batch)
        return batch

    def losses(self, out: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        for m in self.members:
            terms.update(m.losses(out, batch))
        for role, copies in self.copies.items():
            for m in copies:
                terms.update({f"{role}_{k}": v for k, v in m.losses(out.others[role], batch).items()})
        return terms

    def detach_paused(self, terms: dict[str, torch.Tensor], round: int) -> dict[str, torch.Tensor]:
        """``terms`` with those of the networks paused in this round detached (their values still logged)."""
        paused = self.paused(round)
        if not paused:
            return terms
        return {k: v.detach() if term_owner(k, self.roles) in paused else v for k, v in terms.items()}

    def update(self, out: Outputs, batch: Batch) -> None:
        for m in self.members:
            m.update(out, batch)
        for role, copies in self.copies.items():
            for m in copies:
                m.update(out.others[role], batch)

    def state_dict(self) -> dict[str, Any]:
        state = {m.name: m.state_dict() for m in self.members}
        return state | {f"{role}:{m.name}": m.state_dict() for role, copies in self.copies.items() for m in copies}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for m in self.members:
            m.load_state_dict(state[m.name])
        for role, copies in self.copies.items():
            for m in copies:
                m.load_state_dict(state[f"{role}:{m.name}"])
