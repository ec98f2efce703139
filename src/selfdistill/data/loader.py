"""Index batches over an in-memory dataset, sharded across distributed ranks.

Training order: one permutation of all training indices per epoch, drawn from a generator that the
caller seeds from (seed, epoch), so a resumed run sees exactly the same order. With ``world_size``
ranks the permutation is cut to a multiple of ``world_size`` (dropping at most ``world_size - 1``
random samples that epoch) and rank ``r`` takes every ``world_size``-th index from ``r``: the ranks
cover disjoint parts of the data and all take the same number of steps.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def train_batches(num_samples: int, batch_size: int, generator: torch.Generator, drop_last: bool = False,
                  rank: int = 0, world_size: int = 1, min_last: int = 2) -> list[torch.Tensor]:
    """This rank's index batches for one epoch (``batch_size`` is per rank).

    A final batch smaller than ``batch_size`` is kept unless ``drop_last``; a final batch of fewer
    than ``min_last`` samples is always dropped (by default a single sample, because batch
    normalisation cannot train on one).
    """
    order = torch.randperm(num_samples, generator=generator)
    order = order[: len(order) - len(order) % world_size][rank::world_size]
    batches = list(order.split(batch_size))
    if batches and (len(batches[-1]) < min_last or (drop_last and len(batches[-1]) < batch_size)):
        batches.pop()
    return batches


def steps_per_epoch(num_samples: int, batch_size: int, drop_last: bool = False, world_size: int = 1) -> int:
    """How many batches :func:`train_batches` yields per epoch."""
    share = (num_samples - num_samples % world_size) // world_size
    full, rest = divmod(share, batch_size)
    return full + (1 if rest >= 2 and not drop_last else 0)


def eval_batches(num_samples: int, batch_size: int, rank: int = 0, world_size: int = 1) -> Iterator[torch.Tensor]:
    """Unshuffled index batches over this rank's contiguous share of the evaluation set."""
    share = torch.arange(num_samples).tensor_split(world_size)[rank]
    yield from share.split(batch_size)
