"""Process-group setup for ``torchrun`` and the few collectives the engine needs.

Under ``torchrun --nproc_per_node=N`` the environment carries ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``;
the engine then joins a process group (NCCL on CUDA, gloo on CPU), each rank trains on its own shard
of every epoch, metrics are summed across ranks, and only rank 0 writes to the run directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> Dist:
    """Join the torchrun process group if there is one; a no-op for a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def all_reduce_sum(tensor: torch.Tensor, ctx: Dist) -> torch.Tensor:
    """Sum ``tensor`` over ranks, in place (gloo needs CPU tensors, NCCL CUDA ones: keep it where it is)."""
    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_objects(obj: Any, ctx: Dist) -> list[Any]:
    """Every rank's ``obj``, in rank order (used to checkpoint per-rank method state)."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool, ctx: Dist, device: torch.device) -> bool:
    """True if ``flag`` is true on any rank (so all ranks take the same branch)."""
    if not ctx.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def shutdown(ctx: Dist) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_gather_rows(tensor: torch.Tensor, ctx: Dist) -> torch.Tensor:
    """Concatenate equally shaped tensors from all ranks along dim 0, in rank order."""
    if not ctx.enabled:
        return tensor
    out = [torch.empty_like(tensor) for _ in range(ctx.world_size)]
    dist.all_gather(out, tensor.contiguous())
    return torch.cat(out)
