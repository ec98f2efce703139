"""The networks of a run besides the student, each with a role.

A run trains a set of networks: the ``student`` (``--model``; the trainer's own model, optimiser and
schedule) and, around it, the networks a method needs. Today these are frozen teachers
(:class:`FrozenNetwork`): placed like the student (device, ``torch.compile`` when ``train.compile``,
bf16 autocast when ``train.amp``), in eval mode with ``requires_grad_(False)``, and forwarded once per
step on the student's augmented rows under ``inference_mode``. A teacher always runs channels_last, on
a CPU too: its inference took 0.82x (resnet20, 1x28x28) and 0.78x (resnet56, 3x32x32) of the NCHW time
here (2-core CPU, batch 64, torch 2.13), and it has no gradients whose layout could matter. Their outputs reach
the method as ``Outputs.others[role]``, as ordinary tensors (cloned out of inference mode, so a loss may
use them like any other tensor; they never carry gradient). They are never saved into the student's
checkpoint; the run records their :class:`~selfdistill.teachers.TeacherSource` instead.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from ..methods import Outputs
from ..models import FeatureTaps
from .runtime import Precision


class FrozenNetwork:
    """A frozen network of the run (a teacher): ``net(inputs)`` gives its :class:`Outputs`."""

    def __init__(self, role: str, net: nn.Module, input_map: nn.Module | None, precision: Precision,
                 device: torch.device, compile: bool = False) -> None:
        self.role, self.precision = role, precision
        self.module = net.to(device, memory_format=torch.channels_last).eval().requires_grad_(False)
        self.input_map = input_map.to(device) if input_map is not None else None
        self.taps: FeatureTaps | None = None
        self._call = torch.compile(self.module) if compile else self.module

    def tap(self, paths: tuple[str, ...]) -> None:
        """Record these features in every training step (the method's ``teacher_taps``)."""
        self.taps = FeatureTaps(self.module, list(paths)) if paths else None

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits for evaluation (inside the caller's inference mode)."""
        x = self.input_map(inputs) if self.input_map is not None else inputs
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.precision.autocast():
            return self._call(x)

    def __call__(self, inputs: torch.Tensor) -> Outputs:
        with torch.inference_mode():
            with self.taps.record() if self.taps else contextlib.nullcontext():
                logits = self.logits(inputs)
            features = dict(self.taps.features) if self.taps else {}
        return Outputs(logits.clone(), {path: f.clone() for path, f in features.items()})
