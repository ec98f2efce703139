"""Process-group setup for ``torchrun`` and the few collectives the engine needs.

Under ``torchrun --nproc_per_node=N`` the environment carries ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``;
the engine then joins a process group (NCCL on CUDA, gloo on CPU), each rank trains on its own shard
of every epoch, metrics are summed across ranks, and only rank 0 writes to the run directory.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .errors import OutputError, PeerFailure, SelfdistillError, TrainingDiverged, UserError, one_line


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


def launched_rank() -> int:
    """This process's rank as the launcher set it (0 when not launched by torchrun or ``--nproc``)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def init_distributed(device_type: str, timeout_s: float = 600.0) -> Dist:
    """Join the torchrun process group if there is one; a no-op for a single process.

    ``timeout_s`` bounds every wait for the other processes (gloo's default is 30 minutes): a process
    that stops or hangs makes the others fail with :class:`PeerFailure` after that long.

    ``torch._dynamo`` is imported first. DistributedDataParallel imports it on first use; imported after
    the group exists, it keeps ten references to the group (torch 2.13), so ``destroy_process_group``
    leaves gloo's threads running into interpreter exit: the likely cause of a rank aborted there now and
    then ("terminate called without an active exception"; twice in CI, never reproduced on demand)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch._dynamo  # noqa: F401  (before the group: see above)

    if not dist.is_initialized():
        try:
            dist.init_process_group("nccl" if device_type == "cuda" else "gloo",
                                    timeout=datetime.timedelta(seconds=timeout_s))
        except (RuntimeError, ValueError) as exc:
            raise PeerFailure(f"could not join the other {world - 1} process(es) within {timeout_s:g} s "
                              f"({one_line(exc)[:300]})") from None
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


PEER_MARKERS = ("gloo", "nccl", "timed out", "connection closed", "connection reset", "pair closure",
                "processgroup", "c10d", "broken pipe")


def as_peer_failure(exc: BaseException, ctx: Dist, timeout_s: float) -> PeerFailure | None:
    """A :class:`PeerFailure` describing ``exc`` if it is a failed collective of a distributed run."""
    if not ctx.enabled or not isinstance(exc, RuntimeError):
        return None
    text = one_line(exc)
    if not isinstance(exc, getattr(dist, "DistError", ())) and not any(m in text.lower() for m in PEER_MARKERS):
        return None
    why = (f"another process did not answer within train.dist_timeout={timeout_s:g} s (it stopped or hangs)"
           if "timed out" in text.lower() or "timeout" in text.lower() else "another process failed or was stopped")
    return PeerFailure(f"rank {ctx.rank}: {why} ({text[:200]})")


ERROR_CLASSES = {cls.__name__: cls for cls in (UserError, TrainingDiverged, OutputError, PeerFailure)}


def agree_on_failure(failure: SelfdistillError | None, ctx: Dist) -> SelfdistillError | None:
    """Every rank learns whether any rank failed (a collective all ranks must reach): returns the first
    failing rank's error, rebuilt on each rank, so all ranks stop with the same message and exit code."""
    if not ctx.enabled:
        return failure
    mine = None if failure is None else (type(failure).__name__, str(failure))
    everyone = gather_objects(mine, ctx)
    for rank, reported in enumerate(everyone):
        if reported is not None:
            name, message = reported
            if failure is not None and rank == ctx.rank:
                return failure
            return ERROR_CLASSES.get(name, PeerFailure)(message if rank == 0 else f"rank {rank}: {message}")
    return None


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


def leave_together(ctx: Dist) -> None:
    """A finished run's processes wait for each other before tearing the process group down, so that no rank
    destroys its end of the group while rank 0 still writes the final outputs."""
    if ctx.enabled and dist.is_initialized():
        dist.barrier()


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
