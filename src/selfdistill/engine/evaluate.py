"""Evaluation on the full, unshuffled test set (sharded across ranks, sums reduced).

With teachers, the teachers' predictive distribution on this rank's rows is computed once
(:func:`teacher_predictions`: the teachers are frozen, so it never changes) and every evaluation then
measures the student's fidelity to it as well.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..data import Augment, eval_batches
from ..distributed import Dist, all_reduce_sum
from ..losses import ensemble_probs
from ..metrics import EvalAccumulator, FidelityAccumulator, TeacherDiagnostics
from .runtime import Precision


@dataclass
class TeacherPredictions:
    """The teachers' probabilities for this rank's evaluation rows (in evaluation order), and their
    diagnostics over the whole split."""

    probs: torch.Tensor
    diagnostics: dict[str, float]
    per_teacher_top1: list[float]


@torch.inference_mode()
def teacher_predictions(teachers: list[Callable[[torch.Tensor], torch.Tensor]], images: torch.Tensor,
                        labels: torch.Tensor, num_classes: int, augment: Augment, batch_size: int,
                        precision: Precision, ctx: Dist = Dist()) -> TeacherPredictions:
    """Run each teacher (a function from inputs to logits, in eval mode) over every test image once."""
    diagnostics = TeacherDiagnostics(num_classes, device=images.device)
    members = [EvalAccumulator(num_classes, device=images.device) for _ in teachers]
    chunks = []
    for idx in eval_batches(len(labels), batch_size, ctx.rank, ctx.world_size):
        idx = idx.to(images.device)
        x = precision.inputs(augment.eval(images[idx]))
        logits = [teacher(x) for teacher in teachers]
        for acc, z in zip(members, logits):
            acc.add(z, labels[idx])
        probs = ensemble_probs(logits)
        diagnostics.add(probs, labels[idx])
        chunks.append(probs)
    for state in (diagnostics.eval.state, diagnostics.sums, *(acc.state for acc in members)):
        all_reduce_sum(state, ctx)
    empty = torch.zeros(0, num_classes, device=images.device)
    return TeacherPredictions(torch.cat(chunks) if chunks else empty, diagnostics.summary(),
                              [acc.top1() for acc in members])


@torch.inference_mode()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int, augment: Augment,
             batch_size: int, precision: Precision, ctx: Dist = Dist(),
             teachers: TeacherPredictions | None = None) -> tuple[EvalAccumulator, FidelityAccumulator | None]:
    """Top-1, NLL and ECE of ``model`` (in eval mode) over every test image exactly once; with
    ``teachers`` (from :func:`teacher_predictions` with the same batch size), also its fidelity."""
    was_training = model.training
    model.eval()
    acc = EvalAccumulator(num_classes, device=images.device)
    fidelity = FidelityAccumulator(images.device) if teachers is not None else None
    start = 0
    for idx in eval_batches(len(labels), batch_size, ctx.rank, ctx.world_size):
        idx = idx.to(images.device)
        x = precision.inputs(augment.eval(images[idx]))
        with precision.autocast():
            logits = model(x)
        acc.add(logits, labels[idx])
        if fidelity is not None and teachers is not None:
            fidelity.add(logits, teachers.probs[start:start + len(idx)])
        start += len(idx)
    all_reduce_sum(acc.state, ctx)
    if fidelity is not None:
        all_reduce_sum(fidelity.state, ctx)
    model.train(was_training)
    return acc, fidelity
