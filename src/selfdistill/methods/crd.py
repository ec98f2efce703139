"""CRD: Contrastive Representation Distillation (Tian, Krishnan & Isola, ICLR 2020).

The student's and the teacher's pooled penultimate features (``fc:input``) are embedded into a shared
unit sphere by two trainable heads, ``v_s = normalize(W_s f_s)`` and ``v_t = normalize(W_t f_t)``
(dimension ``feat_dim``; both heads train with the student). Two memory banks of size N x feat_dim
hold a running embedding of every training image, ``M_s`` of the student's and ``M_t`` of the
teacher's. For a row with training index i, positive j_0 and K negatives j_1..j_K:

    student anchor:  s_k = exp(M_t[j_k] . v_s / T_nce),   P_k = s_k / Z_s
    teacher anchor:  t_k = exp(M_s[j_k] . v_t / T_nce),   P_k = t_k / Z_t
    l(P) = -[ log(P_0 / (P_0 + K/N + eps)) + sum_k log((K/N) / (P_k + K/N + eps)) ]   (mean over rows)
    L = ce_weight * CE + kd_weight * KD(T=4) + beta * (l(student anchor) + l(teacher anchor))

Each Z is mean(s) * N on the first batch and frozen from then on (saved with the method state).
After scoring, with the memory as it was, the rows of the batch's own indices i are moved towards
the new embeddings and renormalised: ``M[i] <- normalize(m M[i] + (1 - m) v)``, m = 0.5. The banks
start uniform in [-s, s], s = 1 / sqrt(feat_dim / 3). Defaults are the official ones (RepDistiller):
K = 16384, T_nce = 0.07, m = 0.5, feat_dim = 128, beta = 0.8, CE weight 1, KD weight 0 (``kd_weight
= 1`` gives CRD+KD), eps = 1e-7.

Sampling (``mode``): "exact" takes the sample itself as positive, "relax" a random image of its
class (possibly itself); either way the negatives are drawn uniformly from images of *other*
classes, using the training labels (the noisy ones when label noise is on), as the official dataset
``CIFAR100InstanceSample`` does. The official code draws them without replacement per row unless K
exceeds that row's pool; ``distinct_negatives = false`` draws with replacement, which needs
O(B K) memory instead of O(B N) (worth it for ImageNet-sized N). Where the data are too small for K
(e.g. tests on a few dozen images), K is clamped to the smallest other-class pool, N - (largest
class size), instead of drawing with replacement as the official code then does. Randomness comes
from a generator on the training device, seeded from the first batch's indices (so from the run's
seed and the rank) and saved with the method state, so a resumed run draws what it would have.
Only rows with a training index (>= 0) enter the contrastive term; DLB's replayed rows carry theirs.
When one step holds the same index twice, the last row's embedding updates the memory (the official
``index_copy_`` leaves that to chance). Scores and the loss are computed in float32. The official code
gathers the K+1 bank rows of every row (B (K+1) feat_dim floats, 537 MB per direction for CIFAR-100
at B = 64); where all B x N dot products with the bank take less memory (N < (K+1) feat_dim / 2, as on
CIFAR), we compute those and pick the K+1 scores out: the same values, summed in another order.

Several processes (torchrun): every rank scores its own rows against its banks, then all ranks
gather every rank's indices and embeddings and apply the same momentum update, so the banks stay
identical on all ranks, as on a single process with the whole batch (the official code is single
process); they start equal because ``setup`` draws them from the global generator, which the engine
seeds alike on every rank. Z is likewise set from the mean over all ranks' first batches. The banks are plain tensors
of the method state, not buffers of the heads: DDP would otherwise broadcast 2 N feat_dim floats from
rank 0 before every step. The price is that each rank's checkpointed state carries its own copy of
the banks (2 N feat_dim x 4 bytes, 51 MB for CIFAR-100).

Before training, ``setup`` checks that the banks fit the device's free memory, and the first step
checks the per-step tensors (the scores as above for both directions, plus 2 B N floats to draw
distinct negatives), since the batch size is only known then (``SetupContext`` does not carry it);
either raises a one-line ``UserError`` naming what to lower.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..distributed import Dist, all_gather_rows, all_reduce_sum
from ..errors import UserError, require
from ..losses import cross_entropy, kd_kl
from .base import Batch, Method, Outputs, SetupContext

FEATURE = "fc:input"
EPS = 1e-7
FLOAT = 4  # bytes


@dataclass
class CRDOptions:
    beta: float = 0.8
    ce_weight: float = 1.0
    kd_weight: float = 0.0
    kd_temperature: float = 4.0
    nce_k: int = 16384
    nce_t: float = 0.07
    momentum: float = 0.5
    feat_dim: int = 128
    mode: str = "exact"
    distinct_negatives: bool = True

    def check(self) -> None:
        for field in ("beta", "ce_weight", "kd_weight"):
            require(getattr(self, field) >= 0, f"method.{field}", getattr(self, field), "a number >= 0")
        require(self.kd_temperature > 0, "method.kd_temperature", self.kd_temperature, "a number > 0")
        require(self.nce_k >= 1, "method.nce_k", self.nce_k, "an integer >= 1")
        require(self.nce_t > 0, "method.nce_t", self.nce_t, "a number > 0")
        require(0 <= self.momentum < 1, "method.momentum", self.momentum, "a number in [0, 1)")
        require(self.feat_dim >= 1, "method.feat_dim", self.feat_dim, "an integer >= 1")
        require(self.mode in ("exact", "relax"), "method.mode", self.mode, "exact, relax")


class Embed(nn.Module):
    """Linear projection followed by L2 normalisation (in float32)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(x.flatten(1)).float(), dim=1)


def nce_loss(p: torch.Tensor, n_data: int, eps: float = EPS, keep: torch.Tensor | None = None) -> torch.Tensor:
    """The NCE loss of rows of normalised scores ``p`` (B, K+1), positive first, noise Pn = 1/N; with ``keep``
    (B, bool), of the kept rows only (0 when none is kept), without reading the mask on the host."""
    noise = (p.shape[1] - 1) / n_data
    log_pos = torch.log(p[:, 0] / (p[:, 0] + noise + eps))
    log_neg = torch.log(noise / (p[:, 1:] + noise + eps))
    if keep is None:
        return -(log_pos.sum() + log_neg.sum()) / len(p)
    weight = keep.to(p.dtype)
    return -((log_pos * weight).sum() + (log_neg * weight[:, None]).sum()) / weight.sum().clamp_min(1)


def available_memory(device: torch.device) -> int | None:
    """Free bytes on ``device`` (CUDA: free device memory; CPU: MemAvailable), None when unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
    return None


class ContrastSampler:
    """Positive and negative training indices per row, from per-class index tables (vectorised)."""

    def __init__(self, labels: torch.Tensor, k: int, mode: str, distinct: bool) -> None:
        self.labels, self.k, self.mode, self.distinct = labels, k, mode, distinct
        self.order = torch.argsort(labels, stable=True)  # training indices grouped by class
        self.counts = torch.bincount(labels)
        self.starts = torch.cumsum(self.counts, 0) - self.counts

    def __call__(self, idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(len(idx), K+1) indices: the positive in column 0, then K negatives of other classes."""
        y = self.labels[idx]
        count, start = self.counts[y], self.starts[y]
        if self.mode == "exact":
            positive = idx
        else:
            offset = (torch.rand(len(idx), generator=generator, device=idx.device, dtype=torch.float64) * count).long()
            positive = self.order[start + offset]
        if self.distinct:  # K distinct draws per row among the other classes (Gumbel top-k inside multinomial)
            others = (self.labels[None, :] != y[:, None]).float()
            negatives = torch.multinomial(others, self.k, replacement=False, generator=generator)
        else:  # uniform over the sorted order with the row's own class block skipped
            pool = (len(self.labels) - count)[:, None]
            u = torch.rand(len(idx), self.k, generator=generator, device=idx.device, dtype=torch.float64)
            rank = (u * pool).long()
            negatives = self.order[rank + (rank >= start[:, None]) * count[:, None]]
        return torch.cat([positive[:, None], negatives], dim=1)


def gather_rows(ctx: Dist, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every rank's rows of each tensor, in rank order; ranks may hold different numbers of rows."""
    if not ctx.enabled:
        return tensors
    counts = all_gather_rows(torch.tensor([len(tensors[0])], device=tensors[0].device), ctx).tolist()
    most = max(counts)
    out = []
    for t in tensors:
        padded = torch.cat([t, t.new_zeros(most - len(t), *t.shape[1:])])
        chunks = all_gather_rows(padded, ctx).split(most)
        out.append(torch.cat([chunk[:n] for chunk, n in zip(chunks, counts)]))
    return tuple(out)


def momentum_update(memory: torch.Tensor, idx: torch.Tensor, v: torch.Tensor, momentum: float,
                    keep: torch.Tensor | None = None) -> None:
    """``memory[i] <- normalize(m memory[i] + (1 - m) v)`` in place, for the rows ``idx`` only (those ``keep``
    marks, when given; the last row wins where an index repeats). Shapes stay fixed, so the host never
    waits for the device: every row writes its index's winner, repeats write the same values."""
    rows = torch.arange(len(idx), device=idx.device)
    if keep is not None:
        rows = torch.where(keep, rows, -1)
    winner = torch.full((len(memory),), -1, dtype=torch.long, device=idx.device)
    winner = winner.scatter_reduce(0, idx, rows, "amax")[idx]  # per row: the last kept row with its index
    old = memory[idx]
    mixed = F.normalize(momentum * old + (1 - momentum) * v[winner.clamp_min(0)].to(memory.dtype), dim=1)
    memory[idx] = torch.where((winner >= 0)[:, None], mixed, old)


def dense_scoring(n: int, k: int, dim: int) -> bool:
    """Whether all N dot products per row (B x N floats, and as many for their gradient) take less memory
    than gathering the K+1 bank rows per row (B x (K+1) x dim floats)."""
    return 2 * n <= (k + 1) * dim


def contrast_scores(memory: torch.Tensor, contrast: torch.Tensor, v: torch.Tensor, t: float,
                    dense: bool) -> torch.Tensor:
    """exp(memory[contrast[b, j]] . v[b] / t), (B, K+1), in float32: either from the gathered bank rows
    (the official bmm) or picked from all of v's dot products with the bank (same values, less memory
    when N < (K+1) dim / 2, e.g. CIFAR with K = 16384)."""
    with torch.autocast(v.device.type, enabled=False):
        v = v.float()
        if dense:
            dots = (v @ memory.T).gather(1, contrast)
        else:
            dots = torch.bmm(memory[contrast], v[:, :, None]).squeeze(2)
    return torch.exp(dots / t)


def _fc_width(model: nn.Module, what: str) -> int:
    fc = getattr(model, "fc", None)
    if not isinstance(fc, nn.Linear):
        raise UserError(f"method.name=crd: the {what} has no linear classifier fc whose input could serve as the "
                        "penultimate feature; use a model with one (cnn, resnet*, vgg*, wrn*, densenet*, mlp)")
    return fc.in_features


class CRD(Method):
    name = "crd"
    summary = "Contrastive Representation Distillation (ICLR 2020): NCE between student and teacher embeddings"
    Options = CRDOptions
    term_names = ("crd_ce", "crd_kd", "crd_nce")
    provides_task_loss = True
    supports_mixing = False
    teachers_needed = (1, 1)

    def setup(self, ctx: SetupContext) -> None:
        o = self.options
        if len(ctx.teachers) != 1:
            raise UserError(f"method.name=crd distils exactly one teacher, got {len(ctx.teachers)}")
        labels = ctx.train_labels.to(ctx.device).long()
        n = len(labels)
        pool = n - int(torch.bincount(labels).max())
        if pool < 1:
            raise UserError("method.name=crd needs training images of at least two classes (its negatives come "
                            "from other classes)")
        self.n, self.k, self.device, self.dist = n, min(o.nce_k, pool), ctx.device, ctx.dist
        self._require_memory(2 * n * o.feat_dim * FLOAT, f"its two memory banks (2 x {n} x {o.feat_dim} floats)",
                             "method.feat_dim")
        self.embed_s = Embed(_fc_width(ctx.model, "student"), o.feat_dim).to(ctx.device)
        self.embed_t = Embed(_fc_width(ctx.teachers[0], "teacher"), o.feat_dim).to(ctx.device)
        self.sampler = ContrastSampler(labels, self.k, o.mode, o.distinct_negatives)
        bound = 1 / math.sqrt(o.feat_dim / 3)
        self.memory_s = (torch.rand(n, o.feat_dim, device=ctx.device) * 2 - 1) * bound
        self.memory_t = (torch.rand(n, o.feat_dim, device=ctx.device) * 2 - 1) * bound
        self.z: torch.Tensor | None = None  # (Z for the student anchor, Z for the teacher anchor)
        self.generator: torch.Generator | None = None
        self.pending: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.step_checked = False

    def _require_memory(self, need: int, what: str, lower: str) -> None:
        free = available_memory(self.device)
        if free is not None and need > free:
            raise UserError(f"method.name=crd needs {need / 2**30:.2f} GiB on {self.device} for {what}, but only "
                            f"{free / 2**30:.2f} GiB is available; lower {lower}")

    @property
    def taps(self) -> tuple[str, ...]:
        return (FEATURE,)

    def teacher_taps(self) -> list[tuple[str, ...]]:
        return [(FEATURE,)]

    def modules(self) -> dict[str, nn.Module]:
        return {"embed_s": self.embed_s, "embed_t": self.embed_t}

    def _first_step(self, rows: int, idx: torch.Tensor) -> None:
        o = self.options
        k, dim, n = self.k + 1, o.feat_dim, self.n
        if dense_scoring(n, self.k, dim):
            need, what = 4 * rows * n * FLOAT, f"2 x {rows} rows x {n} dot products and their gradients"
        else:
            need, what = 2 * rows * k * dim * FLOAT, f"2 x {rows} rows x {k} x {dim} floats of gathered bank rows"
        if o.distinct_negatives:
            need, what = need + 2 * rows * n * FLOAT, f"{what}, plus {rows} x {n} x 2 floats to draw distinct negatives"
        self._require_memory(need, f"the scores of one step ({what})",
                             f"method.nce_k (now {self.k}) or data.batch_size")
        self.step_checked = True
        if self.generator is None:
            self.generator = torch.Generator(self.device)
            self.generator.manual_seed(hash(tuple(idx.tolist())) & (2**63 - 1))

    def _set_z(self, s_anchor: torch.Tensor, t_anchor: torch.Tensor, keep: torch.Tensor) -> None:
        """Z = mean(score) * N per direction, over the kept rows of every rank's first batch (scores of the
        other rows zeroed). Reads the device once, in the run's first step."""
        with torch.no_grad():
            totals = torch.stack([s_anchor.sum(), t_anchor.sum(), keep.sum() * s_anchor.new_tensor(s_anchor.shape[1])])
            all_reduce_sum(totals, self.dist)
            if totals[2] > 0:
                self.z = totals[:2] / totals[2] * self.n

    def _scores(self, idx: torch.Tensor, v_s: torch.Tensor, v_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """exp(bank row . anchor / T_nce) over each row's positive and negatives, with the memory as it is:
        the student anchor against the teacher's bank, the teacher anchor against the student's."""
        if len(idx) == 0:
            empty = v_s.new_zeros(0, self.k + 1)
            return empty, empty
        contrast = self.sampler(idx, self.generator)
        t, dense = self.options.nce_t, dense_scoring(self.n, self.k, self.options.feat_dim)
        return (contrast_scores(self.memory_t, contrast, v_s, t, dense),
                contrast_scores(self.memory_s, contrast, v_t, t, dense))

    def losses(self, out: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        o = self.options
        teacher = out.teachers[0]
        sup = batch.supervised_rows()
        terms = {"crd_ce": o.ce_weight * cross_entropy(out.logits[sup], batch.loss_targets(out.logits.shape[1])[sup])}
        kd = kd_kl(out.logits, teacher.logits.detach().clone(), o.kd_temperature) if o.kd_weight else None
        terms["crd_kd"] = o.kd_weight * kd if kd is not None else out.logits.new_zeros((), dtype=torch.float32)

        # rows without a training index (-1, plug-in use) are scored against row 0 and then masked out:
        # fixed shapes, so the step never waits for the device to say how many rows have one
        keep = batch.indices >= 0
        idx = batch.indices.clamp_min(0)
        v_s = self.embed_s(out.features[FEATURE])
        v_t = self.embed_t(teacher.features[FEATURE].detach().clone())  # clone: leave inference mode
        if not self.step_checked:
            self._first_step(len(idx), idx)
        s_anchor, t_anchor = self._scores(idx, v_s, v_t)
        if self.z is None:
            self._set_z(s_anchor * keep[:, None], t_anchor * keep[:, None], keep)
        if len(idx) == 0 or self.z is None:
            nce = 0.0 * (v_s.sum() + v_t.sum())  # keeps both heads in the graph
        else:
            nce = nce_loss(s_anchor / self.z[0], self.n, keep=keep) + nce_loss(t_anchor / self.z[1], self.n, keep=keep)
        terms["crd_nce"] = o.beta * nce
        self.pending = (idx, keep.to(torch.uint8), v_s.detach(), v_t.detach())  # uint8: gloo gathers it
        return terms

    def update(self, out: Outputs, batch: Batch) -> None:
        """The momentum update of the positives' memory rows, after this step's scores were taken."""
        if self.pending is None:
            return
        idx, keep, v_s, v_t = gather_rows(self.dist, *self.pending)
        self.pending = None
        if len(idx):
            momentum_update(self.memory_s, idx, v_s, self.options.momentum, keep.bool())
            momentum_update(self.memory_t, idx, v_t, self.options.momentum, keep.bool())

    def state_dict(self) -> dict[str, Any]:
        return {"memory_s": self.memory_s.clone(), "memory_t": self.memory_t.clone(),
                "z": None if self.z is None else self.z.clone(),
                "generator": None if self.generator is None else self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.memory_s.copy_(state["memory_s"])
        self.memory_t.copy_(state["memory_t"])
        self.z = None if state["z"] is None else state["z"].to(self.device)
        self.generator = None
        if state["generator"] is not None:
            self.generator = torch.Generator(self.device)
            self.generator.set_state(state["generator"].cpu())
