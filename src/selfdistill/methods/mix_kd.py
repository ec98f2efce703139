"""MIX-KD (Choi et al., WACV 2023, "Understanding the Role of Mixup in Knowledge Distillation: An
Empirical Study"): the recommended recipe, partial mixup (PMU) with per-sample standardised logits
("MIXSTD"). Student and teacher see the same mixed rows.

Partial mixup. Each row i of the loader's batch is blended with a random partner (a permutation of
the batch): ``x = lam_i x_i + (1 - lam_i) x_partner``, target ``lam_i onehot(y_i) + (1 - lam_i)
onehot(y_partner)``, ``lam_i ~ Beta(a, a)`` drawn *per row* (a = 1). Then lam is forced to 1 (the row
stays clean) for ``int(unmixed_fraction * B)`` row picks. The official code (``PMU`` in
``helper/loops_mixstd.py``, hchoi71/MIX-KD) mixes two random permutations of the batch, which is the
same as one row and a random partner; it picks the clean rows with ``randint``, i.e. *with
replacement*, so with the default 0.9 only about 1 - e^-0.9 = 59% of rows stay clean and about 41% are
mixed, whereas its README says "0.9 = 10% mixed". ``sampling`` chooses:

* ``official`` (default): picks with replacement, as the code that produced the published numbers.
* ``exact``: exactly ``int(unmixed_fraction * B)`` distinct clean rows, as the README describes.

``unmixed_fraction: 0`` is the paper's full mixup (FMU). The mixing is set as ``batch.mix`` in
:meth:`MIXKD.extend`, so the engine augments each row and its partner and blends them like mixup
(the official code also mixes augmented, normalised images). Randomness comes from torch's global CPU
generator, which the engine reseeds every epoch. The engine's own ``data.mix`` is refused.

Loss, with ``sigma = std over classes`` of each row's logits (Bessel-corrected, ``torch.std``'s
default, no epsilon, *not* detached, as in ``distiller_zoo/MIXSTD.py``):

    L_cls = -(1/B) sum_n ytilde_n . log softmax(z_s / sigma_s)        (weight gamma = 0.1)
    L_kd  = KL(softmax(z_t / sigma_t) || softmax(z_s / sigma_s))       (batchmean, no T^2; alpha = 0.9)

The cross-entropy uses the std-scaled student logits and replaces the usual one. The official
validation also divides by sigma; that leaves accuracy unchanged, but our NLL/ECE are measured on the
raw logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data.mixing import Mix
from ..errors import UserError, require
from .base import Batch, Method, Outputs, SetupContext

SAMPLING = ("official", "exact")


@dataclass
class MIXKDOptions:
    gamma: float = 0.1
    alpha: float = 0.9
    mix_alpha: float = 1.0
    unmixed_fraction: float = 0.9
    sampling: str = "official"

    def check(self) -> None:
        require(self.gamma >= 0, "method.gamma", self.gamma, "a number >= 0")
        require(self.alpha >= 0, "method.alpha", self.alpha, "a number >= 0")
        require(self.mix_alpha > 0, "method.mix_alpha", self.mix_alpha, "a number > 0")
        require(0 <= self.unmixed_fraction <= 1, "method.unmixed_fraction", self.unmixed_fraction,
                "a number in [0, 1]")
        require(self.sampling in SAMPLING, "method.sampling", self.sampling, " or ".join(SAMPLING))


def standardised_log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """log softmax(z / std(z)) per row, std over classes with Bessel's correction (float32)."""
    z = logits.float()
    return F.log_softmax(z / z.std(dim=1, keepdim=True), dim=1)


def partial_mix_lam(n: int, mix_alpha: float, unmixed_fraction: float, sampling: str) -> torch.Tensor:
    """Per-row lam on the CPU: Beta(a, a) draws, set to 1 at ``int(unmixed_fraction * n)`` picks
    (with replacement when ``sampling`` is official, distinct rows when exact)."""
    a = torch.tensor(float(mix_alpha))  # (checked > 0 with the options: no per-step validation, which reads tensors)
    lam = torch.distributions.Beta(a, a, validate_args=False).sample((n,))
    picks = int(n * unmixed_fraction)
    clean = torch.randint(0, n, (picks,)) if sampling == "official" else torch.randperm(n)[:picks]
    lam[clean] = 1.0
    return lam


class MIXKD(Method):
    name = "mix_kd"
    summary = "MIX-KD (WACV 2023): partial mixup, teacher and student logits standardised per sample"
    Options = MIXKDOptions
    term_names = ("mixkd_ce", "mixkd_kl")
    provides_task_loss = True
    teachers_needed = (1, 1)

    def setup(self, ctx: SetupContext) -> None:
        if ctx.mixing:
            raise UserError("data.mix: mix_kd does its own partial mixup; allowed: data.mix.name=none")

    def extend(self, batch: Batch) -> Batch:
        """Mix the loader's rows with random partners among them; other rows stay unmixed."""
        o = self.options
        new = batch.parts["new"]
        n, dev = new.stop - new.start, batch.labels.device
        perm = torch.randperm(n).to(dev, non_blocking=True) + new.start
        mix = Mix.identity(batch.images, batch.labels, cutmix=False)
        partner_images, partner_labels, lam = mix.partner_images.clone(), mix.partner_labels.clone(), mix.lam
        partner_images[new], partner_labels[new] = batch.images[perm], batch.labels[perm]
        lam[new] = partial_mix_lam(n, o.mix_alpha, o.unmixed_fraction, o.sampling).to(dev, non_blocking=True)
        batch.mix = Mix(partner_images, partner_labels, lam)
        return batch

    def losses(self, out: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        log_p_s = standardised_log_softmax(out.logits)
        with torch.no_grad():
            p_t = standardised_log_softmax(out.teachers[0].logits).exp()
        rows = batch.supervised_rows()
        targets = batch.targets(out.logits.shape[1])[rows]
        ce = -(targets * log_p_s[rows]).sum() / len(targets)
        kl = F.kl_div(log_p_s, p_t, reduction="batchmean")
        return {"mixkd_ce": self.options.gamma * ce, "mixkd_kl": self.options.alpha * kl}
