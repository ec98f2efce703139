"""Device, seeds, precision and memory format: the settings a run resolves once at start."""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..config import TrainConfig
from ..errors import UserError
from .distributed import Dist


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
        if requested == "cuda":
            return torch.device("cuda", ctx.local_rank if ctx.enabled else torch.cuda.current_device())
    return torch.device(requested)


@dataclass(frozen=True)
class Precision:
    """bf16 autocast and channels_last, each 'auto' meaning on for CUDA only."""

    amp: bool
    channels_last: bool
    device_type: str

    @classmethod
    def resolve(cls, cfg: TrainConfig, device: torch.device) -> "Precision":
        on_cuda = device.type == "cuda"
        amp = on_cuda if cfg.amp == "auto" else bool(cfg.amp)
        channels_last = on_cuda if cfg.channels_last == "auto" else bool(cfg.channels_last)
        if amp and not on_cuda:
            warnings.warn("train.amp=true on a CPU: bf16 autocast is often many times slower than fp32 there")
        return cls(amp, channels_last, device.type)

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=torch.bfloat16)

    def model(self, model: nn.Module) -> nn.Module:
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if (self.channels_last and x.dim() == 4) else x


def configure_torch(cfg: TrainConfig, device: torch.device) -> None:
    """Threads and determinism; these are process-wide."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not cfg.deterministic
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


class GroupedForward(nn.Module):
    """Runs the model once over all rows, or once per group of rows (``splits``), inside one module
    call, so that DistributedDataParallel sees a single forward per backward either way."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, splits: list[int] | None = None) -> torch.Tensor:
        if splits is None:
            return self.model(x)
        return torch.cat([self.model(chunk) for chunk in x.split(splits)])
