"""Label-level transformations of a training set: class-balanced subsets and symmetric label noise."""

from __future__ import annotations

import torch

from ..errors import UserError


def balanced_subset(labels: torch.Tensor, size: int, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of ``size`` samples, as equal a number from every class as possible, drawn at random.

    Every class contributes ``size // num_classes`` samples; the remainder goes one each to the first
    classes. Indices are returned sorted so the subset keeps the dataset's order.
    """
    if size > len(labels):
        raise UserError.bad_value("data.train_subset", size, f"at most the training-set size {len(labels)}")
    if size < num_classes:
        raise UserError.bad_value("data.train_subset", size, f"at least the number of classes ({num_classes})")
    chosen = []
    for cls in range(num_classes):
        members = torch.nonzero(labels == cls).flatten()
        want = size // num_classes + (1 if cls < size % num_classes else 0)
        if len(members) < want:
            raise UserError(f"data.train_subset={size}: class {cls} has only {len(members)} samples, "
                            f"{want} are needed for a balanced subset")
        order = torch.randperm(len(members), generator=generator)
        chosen.append(members[order[:want]])
    return torch.cat(chosen).sort().values


def symmetric_noise(labels: torch.Tensor, rate: float, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """Return a copy of ``labels`` in which exactly ``round(rate * N)`` samples, chosen at random,
    carry a label drawn uniformly from the *other* ``num_classes - 1`` classes."""
    noisy = labels.clone()
    count = round(rate * len(labels))
    if count == 0:
        return noisy
    which = torch.randperm(len(labels), generator=generator)[:count]
    shift = torch.randint(1, num_classes, (count,), generator=generator)
    noisy[which] = (labels[which] + shift) % num_classes
    return noisy
