"""DLB: Self-Distillation from the Last Mini-Batch (Shen et al., CVPR 2022).

Each step trains on the loader's new batch plus the *previous* step's images, augmented afresh. The
previous images are distilled towards the logits the network gave them one step earlier (made with
the parameters before the last update, in train mode), at temperature T:

    L = CE([z_new ; z_replay], [y_new ; y_prev])  +  alpha * T^2 * KL(softmax(z_prev / T) || softmax(z_replay / T))

with the KL averaged over the replayed rows (batchmean) and z_prev detached. The very first step has
no previous batch and is cross-entropy only. This follows the official code (``dlb.py``,
Meta-knowledge-Lab/DLB): every image is used twice per epoch (once new, once replayed), the
optimiser takes ceil(N / B) steps per epoch, and the cache is carried across epoch boundaries, so the
first step of an epoch distils the last (often partial) batch of the one before.

Choices, each an option:

* ``forwards``: 1 (default) runs new and replayed rows through one forward, so batch normalisation
  sees them together; 2 runs them as two forward calls like the official code (BN statistics per
  half). The loss is the same; only BN batching differs.
* ``carry_across_epochs``: true (official) or false (empty cache at each epoch start, as some
  re-implementations do).
* ``alpha_warmup_epochs``: ramp alpha linearly over the first epochs (factor min((epoch + 1) / w, 1));
  0, the default and the paper's setting, disables it. Downstream users of DLB asked for this.

With mixup or CutMix, a replayed row is the *same mixed image* as one step earlier: the same two
source images, the same lam and CutMix box, each source re-augmented. Its stored logits were made
on that mixed image, so the consistency target stays meaningful, and it keeps its mixed hard-label
target. (The alternative, mixing the new rows and replaying the replayed rows unmixed, would distil
the logits of a mixed image into an unmixed one.) Only the new rows draw fresh mixing.

Defaults T = 3 and alpha = 1 are the published settings as quoted by third parties (the official
script has no defaults). Train accuracy is measured on the new rows only, as in the official code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..data.mixing import Mix
from ..errors import require
from ..losses import kd_kl
from .base import Batch, Method, Outputs

REPLAY = "dlb_replay"


@dataclass
class DLBOptions:
    temperature: float = 3.0
    alpha: float = 1.0
    forwards: int = 1
    carry_across_epochs: bool = True
    alpha_warmup_epochs: float = 0.0

    def check(self) -> None:
        require(self.temperature > 0, "method.temperature", self.temperature, "a number > 0")
        require(self.alpha >= 0, "method.alpha", self.alpha, "a number >= 0")
        require(self.forwards in (1, 2), "method.forwards", self.forwards, "1 (one forward) or 2 (one per half)")
        require(self.alpha_warmup_epochs >= 0, "method.alpha_warmup_epochs", self.alpha_warmup_epochs, ">= 0")


class DLB(Method):
    name = "dlb"
    summary = "Self-Distillation from the Last Mini-Batch (CVPR 2022): replay the last batch, distil its old logits"
    Options = DLBOptions
    term_names = ("dlb_kl",)
    replicable = True
    min_batch_size = 2

    def __init__(self, options: DLBOptions | None = None) -> None:
        super().__init__(options)
        self.previous: dict[str, torch.Tensor] | None = None  # images, labels, indices, logits of the last new rows
        self.alpha = self.options.alpha

    def start_epoch(self, epoch: int) -> None:
        warmup = self.options.alpha_warmup_epochs
        self.alpha = self.options.alpha * (min((epoch + 1) / warmup, 1.0) if warmup else 1.0)
        if not self.options.carry_across_epochs:
            self.previous = None

    def extend(self, batch: Batch) -> Batch:
        if self.previous is None:
            return batch
        prev = self.previous
        return batch.append(REPLAY, prev["images"], prev["labels"], prev["indices"],
                            own_forward=self.options.forwards == 2, mix=prev.get("mix"))

    def losses(self, out: Outputs, batch: Batch) -> dict[str, torch.Tensor]:
        if REPLAY not in batch.parts:
            return {"dlb_kl": out.logits.new_zeros((), dtype=torch.float32)}
        student = out.logits[batch.parts[REPLAY]]
        return {"dlb_kl": self.alpha * kd_kl(student, self.previous["logits"], self.options.temperature)}

    def update(self, out: Outputs, batch: Batch) -> None:
        new = batch.parts["new"]
        self.previous = {"images": batch.images[new], "labels": batch.labels[new], "indices": batch.indices[new],
                         "logits": out.logits[new].detach().float()}
        if batch.mix is not None:
            self.previous["mix"] = batch.mix.rows(new)

    def state_dict(self) -> dict[str, Any]:
        # clone: the stored rows are views into the step's concatenated batch
        if self.previous is None:
            return {"previous": None}
        previous = {k: v.clone() for k, v in self.previous.items() if k != "mix"}
        if "mix" in self.previous:
            previous["mix"] = {k: (None if v is None else v.clone()) for k, v in vars(self.previous["mix"]).items()}
        return {"previous": previous}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        previous = state["previous"]
        if previous is not None and "mix" in previous:
            previous = {**previous, "mix": Mix(**previous["mix"])}
        self.previous = previous
