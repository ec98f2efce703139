"""Optimisers and learning-rate schedules.

The learning rate is a pure function of (epoch, step within epoch), set before every step, so a
resumed run needs no scheduler state. Schedules:

* ``multistep``: ``lr * gamma ** (number of milestones <= epoch)``, with 0-based epochs, i.e. a
  milestone m applies from the (m+1)-th epoch on, as ``MultiStepLR`` stepped once per epoch does;
* ``cosine``: from ``lr`` to ``min_lr`` along a half cosine, updated every step;
* ``constant``.

An optional linear warm-up over ``warmup_epochs`` (fractional allowed) multiplies any of them,
rising per step from 1/warm-up-steps to 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..config import OptimConfig, ScheduleConfig


def step_kernels(device: torch.device) -> dict[str, bool]:
    """How the optimiser updates all parameters at once: one fused kernel per step on CUDA, else torch's
    multi-tensor (``foreach``) ops, a few calls per step instead of a few per parameter. On a CPU the
    foreach step gives bit-identical weights to the per-parameter loop (``tests/test_engine.py``)."""
    return {"fused": True} if device.type == "cuda" else {"foreach": True}


def make_optimizer(params: list[nn.Parameter], cfg: OptimConfig,
                   device: torch.device | None = None) -> torch.optim.Optimizer:
    """SGD or AdamW over ``params`` as ``cfg`` says, stepping them together (:func:`step_kernels`) on
    ``device`` (by default the parameters')."""
    device = device or (params[0].device if params else torch.device("cpu"))
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay, **step_kernels(device))
    return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
                             **step_kernels(device))


class LRSchedule:
    def __init__(self, cfg: ScheduleConfig, base_lr: float, epochs: int, steps_per_epoch: int) -> None:
        self.cfg, self.base_lr, self.epochs, self.steps = cfg, base_lr, epochs, max(steps_per_epoch, 1)

    def lr(self, epoch: int, step: int) -> float:
        cfg = self.cfg
        t = epoch + step / self.steps  # progress in epochs
        if cfg.name == "multistep":
            lr = self.base_lr * cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
        elif cfg.name == "cosine":
            lr = cfg.min_lr + (self.base_lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * t / self.epochs))
        else:
            lr = self.base_lr
        warm_steps = cfg.warmup_epochs * self.steps
        done = epoch * self.steps + step + 1
        if warm_steps > 0 and done < warm_steps:
            lr *= done / warm_steps
        return lr

    def apply(self, optimizer: torch.optim.Optimizer, epoch: int, step: int) -> float:
        lr = self.lr(epoch, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr
