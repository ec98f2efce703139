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

from ..analysis.metrics import EvalAccumulator, FidelityAccumulator, TeacherDiagnostics
from ..data import Augment, eval_batches
from ..distributed import Dist, all_reduce_sum
from ..losses import ensemble_probs
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


@dataclass
class NetworkEvaluation:
    """One evaluation of the run's trainable networks: each network's metrics by role (the student
    first), the fidelity of every pair ``(a, b)`` with ``b`` after ``a`` in that order (agreement, and
    KL(p_b || p_a)), the ensemble's metrics (mean of the networks' probabilities; with two networks or
    more), and the student's fidelity to the frozen teachers when there are any."""

    networks: dict[str, EvalAccumulator]
    pairs: dict[tuple[str, str], FidelityAccumulator]
    ensemble: EvalAccumulator | None
    teachers: FidelityAccumulator | None


@torch.inference_mode()
def evaluate_networks(models: dict[str, nn.Module], images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                      augment: Augment, batch_size: int, precision: Precision, ctx: Dist = Dist(),
                      teachers: TeacherPredictions | None = None) -> NetworkEvaluation:
    """Top-1, NLL and ECE of every model (in eval mode; ``models`` by role, the student first) over every
    test image exactly once, with the pairs' fidelity and the ensemble; with ``teachers`` (from
    :func:`teacher_predictions` with the same batch size), also the student's fidelity to them."""
    device = images.device
    modes = {role: model.training for role, model in models.items()}
    for model in models.values():
        model.eval()
    roles = list(models)
    accs = {role: EvalAccumulator(num_classes, device=device) for role in roles}
    pairs = {(a, b): FidelityAccumulator(device) for i, a in enumerate(roles) for b in roles[i + 1:]}
    ensemble = EvalAccumulator(num_classes, device=device) if len(roles) > 1 else None
    fidelity = FidelityAccumulator(device) if teachers is not None else None
    start = 0
    for idx in eval_batches(len(labels), batch_size, ctx.rank, ctx.world_size):
        idx = idx.to(device)
        x = precision.inputs(augment.eval(images[idx]))
        with precision.autocast():
            logits = {role: model(x) for role, model in models.items()}
        for role, z in logits.items():
            accs[role].add(z, labels[idx])
        for (a, b), acc in pairs.items():
            acc.add(logits[a], torch.softmax(logits[b].float(), dim=1))
        if ensemble is not None:
            ensemble.add_probs(ensemble_probs(list(logits.values())), labels[idx])
        if fidelity is not None and teachers is not None:
            fidelity.add(logits[roles[0]], teachers.probs[start:start + len(idx)])
        start += len(idx)
    states = [acc.state for acc in (*accs.values(), *pairs.values(), *(a for a in (ensemble, fidelity) if a))]
    for state in states:
        all_reduce_sum(state, ctx)
    for role, model in models.items():
        model.train(modes[role])
    return NetworkEvaluation(accs, pairs, ensemble, fidelity)
