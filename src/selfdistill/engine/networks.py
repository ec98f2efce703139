"""The networks of a run, each with a role.

A run trains a set of networks: the ``student`` (``--model``, saved as ``model.pt``) and, around it, the
networks a method needs. Trainable ones (:class:`TrainableNetwork`: the student, and an online method's
peers, online teacher or branch) each carry their own optimiser and learning-rate schedule, their own
DDP wrapper and their own feature taps; frozen ones are teachers (:class:`FrozenNetwork`): placed
like the student (device, ``torch.compile`` when ``train.compile``,
bf16 autocast when ``train.amp``), in eval mode with ``requires_grad_(False)``, with their batch norms
folded into their convolutions (:mod:`~selfdistill.models.fold`: 0.59-0.89x of the forward's time on
this CPU), and forwarded once per step on the student's augmented rows under ``inference_mode``.
A teacher always runs channels_last, on
a CPU too: its inference took 0.82x (resnet20, 1x28x28) and 0.78x (resnet56, 3x32x32) of the NCHW time
here (2-core CPU, batch 64, torch 2.13), and it has no gradients whose layout could matter. Their outputs reach
the method as ``Outputs.others[role]``, as ordinary tensors (cloned out of inference mode, so a loss may
use them like any other tensor; they never carry gradient). They are never saved into the student's
checkpoint; the run records their :class:`~selfdistill.models.teachers.TeacherSource` instead.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from ..config import OptimConfig, ScheduleConfig
from ..distributed import Dist
from ..methods import Outputs
from ..models import FeatureTaps
from ..models.fold import fold_batch_norms
from .optim import LRSchedule, make_optimizer
from .runtime import GroupedForward, Precision


class TrainableNetwork:
    """A network that learns in this run: its module (and, for the student, the method's training-only
    modules, ``extras``), optimiser over the parameters that require gradient, schedule, and the
    forward the step calls (compiled and DDP-wrapped as configured). ``net(inputs, splits)`` gives its
    :class:`Outputs` with gradient."""

    def __init__(self, role: str, arch: str, model: nn.Module, extras: nn.Module, optim: OptimConfig,
                 schedule: ScheduleConfig, epochs: int, steps: int, ctx: Dist, device: torch.device,
                 compile: bool = False, taps: tuple[str, ...] = ()) -> None:
        self.role, self.arch, self.model, self.extras = role, arch, model, extras
        params = [p for p in (*model.parameters(), *extras.parameters()) if p.requires_grad]
        self.optimizer = make_optimizer(params, optim)
        self.schedule = LRSchedule(schedule, optim.lr, epochs, steps)
        self.taps = FeatureTaps(model, list(taps)) if taps else None
        forward: nn.Module = GroupedForward(torch.compile(model) if compile else model, extras)
        if ctx.enabled:
            forward = DistributedDataParallel(forward, device_ids=[device.index] if device.type == "cuda" else None,
                                              gradient_as_bucket_view=True)
        self.forward: nn.Module | None = forward

    def __call__(self, inputs: torch.Tensor, splits: list[tuple[int, bool]] | None) -> Outputs:
        assert self.forward is not None, "the network's forward was released"
        with self.taps.record() if self.taps else contextlib.nullcontext():
            logits = self.forward(inputs, splits)
        return Outputs(logits, dict(self.taps.features) if self.taps else {})

    def train(self) -> None:
        self.model.train()
        self.extras.train()

    def release(self) -> None:
        """Drop the DDP wrapper (its reducer must go before the process group it talks through)."""
        self.forward = None

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "extras": self.extras.state_dict(),
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.extras.load_state_dict(state["extras"])
        self.optimizer.load_state_dict(state["optimizer"])


class FrozenNetwork:
    """A frozen network of the run (a teacher): ``net(inputs)`` gives its :class:`Outputs`."""

    def __init__(self, role: str, net: nn.Module, input_map: nn.Module | None, precision: Precision,
                 device: torch.device, compile: bool = False) -> None:
        self.role, self.precision = role, precision
        self.module = net.to(device, memory_format=torch.channels_last).eval().requires_grad_(False)
        self.input_map = input_map.to(device) if input_map is not None else None
        self.taps: FeatureTaps | None = None
        self.folded: list[str] = []  # the batch norms folded into their convolutions (prepare)
        self._compile = compile
        self._call = self.module  # as saved until prepare(): the probe and the method's setup see it so

    def prepare(self, paths: tuple[str, ...]) -> None:
        """Make it ready for training, once the method is set up (its setup may read the saved weights, as
        SOKD's branch does): fold its batch norms into their convolutions where no tap of ``paths`` (the
        method's ``teacher_taps``) would see the difference (:mod:`~selfdistill.models.fold`), record those
        features in every step, and compile it when ``train.compile``."""
        self.folded = fold_batch_norms(self.module, paths)  # in place: the weights keep their channels_last layout
        self.taps = FeatureTaps(self.module, list(paths)) if paths else None
        self._call = torch.compile(self.module) if self._compile else self.module

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
