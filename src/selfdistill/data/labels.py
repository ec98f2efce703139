"""Label-level transformations of a training set: class-balanced subsets and symmetric label noise."""

from __future__ import annotations

import torch

from ..errors import UserError


def balanced_capacity(labels: torch.Tensor, num_classes: int, keep_per_class: int = 0) -> int:
    """The largest subset :func:`balanced_subset` can draw while leaving ``keep_per_class`` samples of every
    class out of it (0 when some class has no more than that)."""
    counts = (torch.bincount(labels, minlength=num_classes) - keep_per_class).tolist()
    per_class = min(counts)
    if per_class < 0:
        return 0
    # the remainder goes to the first classes, so those before the first class at the minimum give one more
    return per_class * num_classes + counts.index(per_class)


def balanced_subset(labels: torch.Tensor, size: int, num_classes: int, generator: torch.Generator,
                    field: str = "data.train_subset", keep_per_class: int = 0,
                    null_means: str = "the whole set") -> torch.Tensor:
    """Indices of ``size`` samples, as equal a number from every class as possible, drawn at random.

    Every class contributes ``size // num_classes`` samples; the remainder goes one each to the first
    classes. Indices are returned sorted so the subset keeps the dataset's order. ``size`` must give
    every class at least one sample, leave ``keep_per_class`` samples of every class out, and be
    smaller than ``len(labels)`` (the whole set is asked for with null); otherwise a ``UserError``
    names ``field``, the value and the range the labels allow.
    """
    _check_size(labels, size, num_classes, field, keep_per_class, null_means)
    chosen = []
    for cls in range(num_classes):
        members = torch.nonzero(labels == cls).flatten()
        want = size // num_classes + (1 if cls < size % num_classes else 0)
        order = torch.randperm(len(members), generator=generator)
        chosen.append(members[order[:want]])
    return torch.cat(chosen).sort().values


def _check_size(labels: torch.Tensor, size: int, num_classes: int, field: str, keep_per_class: int,
                null_means: str) -> None:
    """Refuse a subset size outside what the labels allow (see :func:`balanced_subset`)."""
    limit = min(len(labels) - 1, balanced_capacity(labels, num_classes, keep_per_class))
    if num_classes <= size <= limit:
        return
    n = len(labels)
    if limit < num_classes:
        counts = torch.bincount(labels, minlength=num_classes)
        cls = int(counts.argmin())
        allowed = (f"null for {null_means} (class {cls} has only {int(counts[cls])} of the {n} training images, "
                   "too few for a class-balanced subset)")
    else:
        rest = " that leaves at least one image per class for training" if keep_per_class else ", smaller than all"
        allowed = (f"an integer from {num_classes} (one image per class) to {limit} (a class-balanced subset of the "
                   f"{n} training images{rest}), or null for {null_means}")
    raise UserError.bad_value(field, size, allowed)


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
