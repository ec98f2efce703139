"""What a method is: a small object that may add rows to the batch before the forward, turns the
forward's outputs into named loss terms, and keeps its own state between steps.

One training step, as the engine (or a user's own loop) runs it::

    batch = method.extend(batch)            # e.g. DLB appends the previous batch's images
    batch.inputs = augment(batch.images)    # every row augmented afresh (and mixed, with mixup/CutMix)
    out = Outputs(model(batch.inputs))      # one forward (or one per forward group)
    terms = method.losses(out, batch)       # {"ce": ..., "dlb_kl": ...}
    sum(terms.values()).backward()          # (and the optimiser's step)
    method.update(out, batch)               # e.g. DLB stores this step's logits; CRD updates its memory

Before training the engine calls :meth:`Method.setup` once with the model and the data's shape, so a
method can size auxiliary heads from the real channel counts, ask for feature taps, or refuse a
model it cannot work with. A method never runs backward or steps the optimiser; the engine never
asks which method it runs.

Teachers: a method that distils frozen networks says how many it takes (``teachers_needed``). The
engine builds them (``--teacher``), hands them to :meth:`Method.setup` in ``SetupContext.teachers``,
forwards each once per step on the same augmented rows as the student, without gradient, and gives
their logits and the taps the method asks for (:meth:`Method.teacher_taps`) as ``out.teachers``::

    z_t = out.teachers[0].logits                 # row-aligned with out.logits
    f_t = out.teachers[0].features["layer3"]     # a tap of teacher 0

Several trainable networks (online distillation): a method may add trainable networks besides the
student (:meth:`Method.networks`, each a :class:`NetworkSpec` with a role such as ``peer1``,
``teacher`` or ``branch``; it declares how many in ``networks_added``, which ``selfdistill methods``
shows). The engine builds each one (seeded by role), gives it its own optimiser and schedule
(``optim``/``schedule``, overridable per role under ``roles.<role>``), forwards it once per step on
the same augmented rows, and hands its outputs, *with* gradient, to the method as
``out.others[role]``. A loss term belongs to the network its name starts with (``peer1_ce``,
``teacher_switokd_kl``); every other term belongs to the student. A target taken from another
network must be detached (``.detach()``): the engine runs one backward of the summed terms, and only
detached targets keep one network's loss out of another's gradient. After :meth:`Method.losses` the
engine asks :meth:`Method.paused` which networks skip this step: their terms are detached (still
logged) and their optimisers do not step, though they ran forward in train mode. A method may ask for
several forward/backward rounds per step (:attr:`Method.rounds`, e.g. DML's sequential variant); the
rows and their augmentation stay the same, and the logged terms are the mean over the rounds.

Teacher-free methods that look only at one network's own outputs (``replicable = True``: CE, DLB,
label smoothing, ...) apply to every trainable network when combined with an online method: the stack
runs one copy per extra network, its terms prefixed with the role (``peer1_dlb_kl``), each copy with its
own state. Only the student's copy extends the batch (DLB's replayed rows are the same images for
every network; each copy distils its own network's stored logits).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn as nn

from ..data.mixing import Mix
from ..distributed import Dist


@dataclass
class Batch:
    """The rows of one training step.

    ``images`` are un-augmented rows (uint8 in the engine), ``labels`` the hard targets, ``indices``
    each row's position in the training set (-1 when unknown). ``parts`` names contiguous row ranges:
    ``"new"`` is what the loader gave; methods append their own (``"dlb_replay"``). Parts listed in
    ``own_forward`` run through the model in a forward call of their own (batch-norm statistics per
    part); parts in ``no_grad`` are forwarded without gradient; parts in ``unsupervised`` get no
    hard-label loss. ``mix`` describes mixup/CutMix per row, when on. ``inputs`` holds the augmented
    float rows once the engine has made them.
    """

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    parts: dict[str, slice]
    own_forward: tuple[str, ...] = ()
    no_grad: tuple[str, ...] = ()
    unsupervised: tuple[str, ...] = ()
    mix: Mix | None = None
    inputs: torch.Tensor | None = None

    @classmethod
    def new(cls, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None = None) -> Batch:
        if indices is None:
            indices = torch.full((len(labels),), -1, dtype=torch.long, device=labels.device)
        return cls(images, labels, indices, {"new": slice(0, len(labels))})

    def __len__(self) -> int:
        return len(self.labels)

    def append(self, part: str, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor,
               own_forward: bool = False, grad: bool = True, supervised: bool = True,
               mix: Mix | None = None) -> Batch:
        """A new batch with ``images`` added as rows named ``part`` after the existing ones. When the
        batch is mixed, the new rows take ``mix`` (or stay unmixed if it is None)."""
        if part in self.parts:
            raise ValueError(f"batch already has a part named {part!r}")
        start = len(self)
        merged = None
        if self.mix is not None:
            merged = self.mix.cat(mix or Mix.identity(images, labels, self.mix.boxes is not None))
        return dataclasses.replace(
            self, images=torch.cat([self.images, images]), labels=torch.cat([self.labels, labels]),
            indices=torch.cat([self.indices, indices]), parts={**self.parts, part: slice(start, start + len(labels))},
            own_forward=self.own_forward + ((part,) if own_forward else ()),
            no_grad=self.no_grad + (() if grad else (part,)),
            unsupervised=self.unsupervised + (() if supervised else (part,)), mix=merged)

    def split(self, part: str, into: tuple[str, str], at: int, **flags: bool) -> Batch:
        """Cut ``part`` in two at row ``at`` (relative to the part); ``flags`` (own_forward, grad,
        supervised) apply to the second piece."""
        rows = self.parts[part]
        parts = {k: v for k, v in self.parts.items() if k != part}
        parts[into[0]] = slice(rows.start, rows.start + at)
        parts[into[1]] = slice(rows.start + at, rows.stop)
        second = into[1]
        return dataclasses.replace(
            self, parts=parts, own_forward=self.own_forward + ((second,) if flags.get("own_forward") else ()),
            no_grad=self.no_grad + (() if flags.get("grad", True) else (second,)),
            unsupervised=self.unsupervised + (() if flags.get("supervised", True) else (second,)))

    def forward_splits(self) -> list[tuple[int, bool]] | None:
        """(rows, with gradient) of the consecutive forward calls, or None for a single forward."""
        if not self.own_forward and not self.no_grad:
            return None
        splits: list[tuple[int, bool]] = []
        shared = 0
        for name, rows in sorted(self.parts.items(), key=lambda item: item[1].start):
            size = rows.stop - rows.start
            if name in self.own_forward or name in self.no_grad:
                if shared:
                    splits.append((shared, True))
                splits.append((size, name not in self.no_grad))
                shared = 0
            else:
                shared += size
        return splits + ([(shared, True)] if shared else [])

    def supervised_rows(self) -> slice | torch.Tensor:
        """The rows that get the hard-label loss: a slice when they are all of them, else indices."""
        if not self.unsupervised:
            return slice(None)
        keep = [torch.arange(r.start, r.stop, device=self.labels.device)
                for name, r in sorted(self.parts.items(), key=lambda item: item[1].start)
                if name not in self.unsupervised]
        return torch.cat(keep) if keep else torch.zeros(0, dtype=torch.long, device=self.labels.device)

    def loss_targets(self, num_classes: int) -> torch.Tensor:
        """What a hard-label loss takes: the labels, or the mixed target distributions when mixing."""
        return self.labels if self.mix is None else self.targets(num_classes)

    def targets(self, num_classes: int) -> torch.Tensor:
        """Per-row target distributions: one-hot labels, or the mixed labels when mixing is on."""
        onehot = torch.nn.functional.one_hot(self.labels, num_classes).float()
        if self.mix is None:
            return onehot
        partner = torch.nn.functional.one_hot(self.mix.partner_labels, num_classes).float()
        lam = self.mix.lam[:, None]
        return lam * onehot + (1 - lam) * partner


ROLE_PATTERN = re.compile(r"[a-z][a-z0-9]*")  # a role: lower-case letters and digits, e.g. peer1, teacher, branch
STUDENT = "student"


@dataclass(frozen=True)
class NetworkSpec:
    """A trainable network a method adds to the run besides the student.

    ``role`` names it everywhere (``roles.<role>`` options, ``<role>.pt``, ``<role>_test_top1``, terms
    ``<role>_...``); ``model`` is its architecture's name in the model zoo, recorded with its weights so
    that ``<role>.pt`` can be a ``--teacher`` later. ``module`` is a ready network (SOKD's branch, made
    from the frozen teacher); its ``state_dict`` must load into ``build_model(model, ...)``. Without
    it the engine builds ``model`` for the data like the student, seeded by role.
    """

    role: str
    model: str
    module: nn.Module | None = None


@dataclass
class Outputs:
    """What the forward produced: logits for every row, plus any tapped features by name. ``others``
    holds the other networks' outputs on the same rows by role: frozen teachers (``teacher``, or
    ``teacher1``, ``teacher2``, ... when there are several) carry no gradient; the method's trainable
    networks (``peer1``, ``teacher``, ``branch``, ...) do, so a target taken from them must be detached."""

    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    others: dict[str, Outputs] = field(default_factory=dict)
    trainable: tuple[str, ...] = ()  # the roles in ``others`` that are trainable networks (online methods)

    @property
    def teachers(self) -> list[Outputs]:
        """The frozen teachers' outputs, in the order the teachers were given (an online method's trainable
        ``teacher`` is not one of them)."""
        return [out for role, out in self.others.items() if role.startswith("teacher") and role not in self.trainable]


@dataclass
class SetupContext:
    """What a method may know before training: the model and the shape of the data."""

    model: nn.Module
    model_name: str
    num_classes: int
    input_shape: tuple[int, int, int]  # C, H, W as the model sees it
    train_labels: torch.Tensor  # the (possibly noisy) training labels, on the training device
    epochs: int
    device: torch.device
    dist: Dist = field(default_factory=Dist)
    mixing: bool = False
    teachers: list[nn.Module] = field(default_factory=list)  # frozen, in eval mode, on ``device``
    teacher_names: list[str] = field(default_factory=list)  # their architectures' names
    networks: dict[str, nn.Module] = field(default_factory=dict)  # the method's trainable networks by role


def term_owner(term: str, roles: tuple[str, ...] | list[str]) -> str:
    """The role whose network a loss term trains: the longest role that prefixes ``<role>_``, else the student."""
    owners = [role for role in roles if term.startswith(f"{role}_")]
    return max(owners, key=len) if owners else STUDENT


@dataclass
class NoOptions:
    """For methods without options."""

    def check(self) -> None:
        pass


class Method:
    """Base class; a method overrides what it needs. See the module docstring for the step."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    term_names: ClassVar[tuple[str, ...]] = ()
    provides_task_loss: ClassVar[bool] = False  # True: replaces the default hard-label cross-entropy
    supports_mixing: ClassVar[bool] = True  # False: refuses mixup/CutMix (the method's targets need clean rows)
    min_batch_size: ClassVar[int] = 1
    uses_total_epochs: ClassVar[bool] = False  # True: what it does depends on train.epochs (no extension on resume)
    teachers_needed: ClassVar[tuple[int, int | None]] = (0, 0)  # fewest and most frozen teachers (None: any)
    networks_added: ClassVar[tuple[int, int | None]] = (0, 0)  # fewest and most networks networks() adds (None: any)
    replicable: ClassVar[bool] = False  # True: reads only its own network's outputs; runs once per trainable network
    stat_names: ClassVar[tuple[str, ...]] = ()  # per-step statistics (not losses) logged as epoch means

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()
        self.options.check()

    def networks(self, ctx: SetupContext) -> list[NetworkSpec]:
        """The trainable networks this method adds besides the student (online distillation), asked once
        before :meth:`setup` (``ctx.networks`` is still empty); raise ``UserError`` if they cannot be made."""
        return []

    def setup(self, ctx: SetupContext) -> None:
        """Called once before training; raise ``UserError`` if the model or data cannot work."""

    @property
    def rounds(self) -> int:
        """Forward/backward rounds per step (1; DML's sequential variant: one per peer)."""
        return 1

    def paused(self, round: int) -> frozenset[str]:
        """Roles whose networks do not step after this round (asked after :meth:`losses`)."""
        return frozenset()

    def stats(self) -> dict[str, torch.Tensor]:
        """This step's statistics named in ``stat_names`` (0-d tensors; asked after :meth:`losses`)."""
        return {}

    @property
    def taps(self) -> tuple[str, ...]:
        """Feature taps (module paths) this method reads from :class:`Outputs`."""
        return ()

    def teacher_taps(self) -> list[tuple[str, ...]]:
        """Feature taps on each teacher, by teacher position (known after :meth:`setup`)."""
        return []

    def modules(self) -> dict[str, nn.Module]:
        """Training-only trainable modules (auxiliary heads); never part of the saved model."""
        return {}

    def batches(self, labels: torch.Tensor, batch_size: int, generator: torch.Generator, drop_last: bool,
                rank: int, world_size: int) -> list[torch.Tensor] | None:
        """This rank's index batches for an epoch, for methods with their own sampler; None otherwise."""
        return None

    def start_epoch(self, epoch: int) -> None:
        """Called before each training epoch (0-based)."""

    def notes(self, epochs: int) -> list[str]:
        """What the start line should say about this method in a run of ``epochs`` epochs: a setting that
        the run's length makes act otherwise than its name suggests (a warm-up longer than the run)."""
        return []

    def extend(self, batch: Batch) -> Batch:
        return batch

    def losses(self, out: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        """Named loss terms of this step (of this round, with :attr:`rounds` > 1); see the module docstring."""
        raise NotImplementedError

    def update(self, out: Outputs, batch: Batch) -> None:
        """Called with the same step's outputs after :meth:`losses` and after the backward pass, so it may
        change tensors in place that the step's graph saved."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
