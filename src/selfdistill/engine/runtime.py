"""Device, seeds, precision and memory format: the settings a run resolves once at start."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ..config import TrainConfig
from ..cpus import WAIT_POLICY, auto_threads, machine_busy, waits_passively
from ..distributed import Dist
from ..errors import UserError
from ..models import faster_in_channels_last_on_cpu


def derive_seed(*keys: object) -> int:
    """A 63-bit seed from any keys, e.g. ``derive_seed(seed, "augment", epoch, rank)``."""
    digest = hashlib.sha256("/".join(map(str, keys)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def resolve_device(requested: str, ctx: Dist) -> torch.device:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError.bad_value("train.device", requested, "cpu or auto (no CUDA device is available)")
        device = torch.device(requested)
        if device.index is None:
            device = torch.device("cuda", ctx.local_rank if ctx.enabled else torch.cuda.current_device())
        count = torch.cuda.device_count()
        if device.index >= count:
            why = f"process {ctx.local_rank} of this machine" if ctx.enabled and requested == "cuda" else requested
            raise UserError.bad_value("train.device", requested, f"cuda:0 to cuda:{count - 1} (there are {count} "
                                      f"GPUs here; {why} would need cuda:{device.index})")
        torch.cuda.set_device(device)  # NCCL collectives use the current device
        return device
    return torch.device(requested)


@dataclass(frozen=True)
class Precision:
    """bf16 autocast ('auto': on for CUDA only) and the memory layout ('auto': channels_last on CUDA, and on a
    CPU for the architectures measured faster there, :data:`~selfdistill.models.CPU_CHANNELS_LAST`).

    The layout is a decision, not an accident of strides: the models are converted to it and every batch
    (plain, mixed, replayed, a teacher's) is made contiguous in it before the forward
    (:meth:`inputs`)."""

    amp: bool
    channels_last: bool
    device_type: str

    @classmethod
    def resolve(cls, cfg: TrainConfig, device: torch.device, model: str = "") -> Precision:
        """``model``: the student's architecture, whose measured CPU layout ``auto`` takes."""
        on_cuda = device.type == "cuda"
        amp = on_cuda if cfg.amp == "auto" else bool(cfg.amp)
        auto_layout = on_cuda or faster_in_channels_last_on_cpu(model)
        channels_last = auto_layout if cfg.channels_last == "auto" else bool(cfg.channels_last)
        if amp and not on_cuda:
            warnings.warn("train.amp=true on a CPU: bf16 autocast is often many times slower than fp32 there",
                          stacklevel=2)
        return cls(amp, channels_last, device.type)

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=torch.bfloat16)

    def model(self, model: nn.Module) -> nn.Module:
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Images in the run's memory format (the batched crop yields a channels-last layout, which
        would otherwise leak into activations and gradients)."""
        if x.dim() != 4:
            return x
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def keep_freed_memory() -> None:
    """Let the C allocator keep freed memory for the next step instead of returning it to the system.

    glibc maps every block above a threshold afresh and unmaps it when freed; the threshold moves with
    whatever the process happened to allocate before (reading a dataset in 1 MiB chunks leaves it at
    1 MiB), and a training step then page-faults all its activations in again: 2.7 million faults and
    ~10 s of system time over five epochs of the small CNN on this CPU, against 0.1 million. Fixing the
    thresholds (map only blocks of 32 MiB and more; trim the heap only past 256 MiB free) makes the
    speed independent of that history. A no-op where the C library is not glibc.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_MMAP_THRESHOLD, 32 << 20)
    mallopt(M_TRIM_THRESHOLD, 256 << 20)


def describe_threads(threads: int | None, how: str | None) -> str:
    """The start line's mention of ``threads`` (None: not on a CPU, nothing to say), with ``how`` auto chose and,
    when other work holds the CPUs, how busy the machine is; where OpenMP's threads spin (the wait policy was
    not set before torch loaded), with the way out."""
    if not threads:
        return ""
    said = [f"auto: {how}"] if how else []
    busy = machine_busy(threads) if threads > 1 else None
    if busy and waits_passively():
        said.append(f"machine {busy}; idle threads sleep ({WAIT_POLICY}=PASSIVE)")
    elif busy:
        said.append(f"machine {busy}; {threads} spinning threads may train slower than one: set "
                    f"{WAIT_POLICY}=PASSIVE before torch loads, or --threads 1")
    return f", {threads} thread{'s' * (threads > 1)}" + (f" ({'; '.join(said)})" if said else "")


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that a timer reads what was computed; a no-op on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def configure_torch(cfg: TrainConfig, device: torch.device) -> str | None:
    """Threads, determinism and the C allocator; these are process-wide. Returns how ``train.threads: auto``
    chose the count (None where the count was given, or None left torch's default)."""
    keep_freed_memory()
    threads, how = auto_threads() if cfg.threads == "auto" else (cfg.threads, None)
    if threads:
        torch.set_num_threads(threads)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not cfg.deterministic
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return how


class GroupedForward(nn.Module):
    """Runs the model once over all rows, or once per group of rows (``splits``: rows and whether
    with gradient), inside one module call, so that DistributedDataParallel sees a single forward per
    backward either way. It also holds the methods' training-only modules, so DDP averages their
    gradients too."""

    def __init__(self, model: nn.Module, extras: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.extras = extras

    def forward(self, x: torch.Tensor, splits: list[tuple[int, bool]] | None = None) -> torch.Tensor:
        if splits is None:
            return self.model(x)
        outputs = []
        for chunk, (_, grad) in zip(x.split([size for size, _ in splits]), splits):
            with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
                outputs.append(self.model(chunk))
        return torch.cat(outputs)


def to_device(obj: Any, device: torch.device | str) -> Any:
    """``obj`` with every tensor in it (through dicts, lists and tuples) moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj
