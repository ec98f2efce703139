"""What a method is: a small object that may add rows to the batch before the forward, turns the
forward's outputs into named loss terms, and keeps its own state between steps.

One training step, as the engine (or a user's own loop) runs it::

    batch = method.extend(batch)            # e.g. DLB appends the previous batch's images
    batch.inputs = augment(batch.images)    # every row augmented afresh
    out = Outputs(model(batch.inputs))      # one forward (or one per forward group)
    terms = method.losses(out, batch)       # {"ce": ..., "dlb_kl": ...}
    method.update(out, batch)               # e.g. DLB stores this step's logits
    sum(terms.values()).backward()

A method never runs backward or steps the optimiser; the engine never asks which method it runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch


@dataclass
class Batch:
    """The rows of one training step.

    ``images`` are un-augmented rows (uint8 in the engine), ``labels`` the hard targets, ``indices``
    each row's position in the training set (-1 when unknown). ``parts`` names contiguous row ranges:
    ``"new"`` is what the loader gave; methods append their own (``"dlb_replay"``). Parts listed in
    ``own_forward`` are run through the model in a forward call of their own (batch-norm statistics
    per part) instead of together with the rest. ``inputs`` holds the augmented float rows once the
    engine has made them.
    """

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    parts: dict[str, slice]
    own_forward: tuple[str, ...] = ()
    inputs: torch.Tensor | None = None

    @classmethod
    def new(cls, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None = None) -> "Batch":
        if indices is None:
            indices = torch.full((len(labels),), -1, dtype=torch.long, device=labels.device)
        return cls(images, labels, indices, {"new": slice(0, len(labels))})

    def __len__(self) -> int:
        return len(self.labels)

    def append(self, part: str, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor,
               own_forward: bool = False) -> "Batch":
        """A new batch with ``images`` added as rows named ``part`` after the existing ones."""
        if part in self.parts:
            raise ValueError(f"batch already has a part named {part!r}")
        start = len(self)
        return dataclasses.replace(
            self, images=torch.cat([self.images, images]), labels=torch.cat([self.labels, labels]),
            indices=torch.cat([self.indices, indices]), parts={**self.parts, part: slice(start, start + len(labels))},
            own_forward=self.own_forward + ((part,) if own_forward else ()))

    def forward_splits(self) -> list[int] | None:
        """Row counts of the consecutive forward calls, or None for a single forward over all rows."""
        if not self.own_forward:
            return None
        splits: list[int] = []
        shared = 0
        for name, rows in sorted(self.parts.items(), key=lambda item: item[1].start):
            size = rows.stop - rows.start
            if name in self.own_forward:
                splits += [shared, size] if shared else [size]
                shared = 0
            else:
                shared += size
        return splits + ([shared] if shared else [])


@dataclass
class Outputs:
    """What the forward produced: logits for every row, plus any tapped features by name."""

    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)


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
    min_batch_size: ClassVar[int] = 1

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()
        self.options.check()

    def start_epoch(self, epoch: int) -> None:
        """Called before each training epoch (0-based)."""

    def extend(self, batch: Batch) -> Batch:
        return batch

    def losses(self, out: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def update(self, out: Outputs, batch: Batch) -> None:
        """Called after :meth:`losses` with the same step's outputs."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
