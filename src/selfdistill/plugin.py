"""DLB inside your own PyTorch loop, without the engine.

    dlb = DLBHelper(augment=augment, temperature=3.0, alpha=1.0)
    for images, labels in loader:                     # un-augmented images
        inputs, targets = dlb.prepare(images, labels) # [new ; last batch], each augmented afresh
        logits = model(inputs)
        loss = F.cross_entropy(logits, targets) + dlb.loss(logits)
        optimizer.zero_grad(); loss.backward(); optimizer.step()

``prepare`` appends the previous step's images and labels to the batch and augments every row;
``loss`` returns alpha * T^2 * KL(previous logits || current logits on the replayed rows) (zero on
the first step) and remembers this step's logits of the new rows for the next step. It is the same
:class:`~selfdistill.methods.DLB` object the engine runs.

Pass ``augment`` (a function from a batch of images to a batch of augmented images) so the replayed
images are re-augmented, as in the paper; without it the replayed rows are the very same tensors as
one step earlier.
"""

from __future__ import annotations

from typing import Callable

import torch

from .methods import Batch, Outputs
from .methods.dlb import DLB, DLBOptions


class DLBHelper:
    def __init__(self, augment: Callable[[torch.Tensor], torch.Tensor] | None = None, temperature: float = 3.0,
                 alpha: float = 1.0) -> None:
        self.method = DLB(DLBOptions(temperature=temperature, alpha=alpha))
        self.augment = augment
        self._batch: Batch | None = None

    def prepare(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Model inputs and hard targets for this step: the new rows first, then the replayed ones."""
        self._batch = self.method.extend(Batch.new(images, labels))
        inputs = self._batch.images if self.augment is None else self.augment(self._batch.images)
        return inputs, self._batch.labels

    def loss(self, logits: torch.Tensor) -> torch.Tensor:
        """The DLB term for the logits of the inputs that :meth:`prepare` returned."""
        if self._batch is None:
            raise RuntimeError("call prepare() before loss() in every step")
        out = Outputs(logits)
        term = self.method.losses(out, self._batch)["dlb_kl"]
        self.method.update(out, self._batch)
        self._batch = None
        return term
