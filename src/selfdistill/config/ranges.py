"""Range checks of a built :class:`~selfdistill.config.Config` that types alone cannot express (names are
checked by the layers that own them): counts, sizes, probabilities, the optimiser's and the schedule's
settings of every network, and the largest learning rate a schedule reaches."""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

from ..errors import require
from .typed import FLOAT32_MAX

if TYPE_CHECKING:
    from . import Config, OptimConfig, ScheduleConfig

MAX_THREADS = 1024  # torch.set_num_threads(100000) crashes the process
MAX_IMAGE_SIZE = 1024  # a typo in a size must not ask for terabytes of memory
SYNTHETIC_RANGES = (("num_classes", 2, 1000), ("channels", 1, 16), ("size", 1, 256), ("train_size", 1, 1_000_000),
                    ("test_size", 1, 1_000_000))


def validate(config: Config) -> None:
    """Range checks that types alone cannot express (names are checked by the layers that own them)."""
    d, o, s, t = config.data, config.optim, config.schedule, config.train
    require(0 <= t.seed < 2**63, "train.seed", t.seed, "an integer in [0, 2**63)")
    require(t.epochs >= 1, "train.epochs", t.epochs, "an integer >= 1")
    require(d.batch_size >= 1, "data.batch_size", d.batch_size, "an integer >= 1")
    require(d.eval_batch_size >= 1, "data.eval_batch_size", d.eval_batch_size, "an integer >= 1")
    require(0.0 <= d.label_noise < 1.0, "data.label_noise", d.label_noise, "a number in [0, 1)")
    require(d.train_subset is None or d.train_subset >= 1, "data.train_subset", d.train_subset, "null or >= 1")
    require(d.validation_split is None or d.validation_split >= 1, "data.validation_split", d.validation_split,
            "null or >= 1")
    require(d.folder is None or d.dataset == "folder", "data.folder", d.folder,
            "null unless data.dataset is folder (it names the folder of that dataset)")
    require(d.pad_to is None or 1 <= d.pad_to <= MAX_IMAGE_SIZE, "data.pad_to", d.pad_to,
            f"null or a size in pixels up to {MAX_IMAGE_SIZE}")
    require(d.mix.alpha > 0, "data.mix.alpha", d.mix.alpha, "a number > 0")
    require(d.mix.prob is None or 0 <= d.mix.prob <= 1, "data.mix.prob", d.mix.prob, "null or a number in [0, 1]")
    require(8 <= d.image_size <= MAX_IMAGE_SIZE, "data.image_size", d.image_size,
            f"an integer in [8, {MAX_IMAGE_SIZE}]")
    pad = d.augment.crop_padding
    require(pad is None or 0 <= pad <= MAX_IMAGE_SIZE, "data.augment.crop_padding", pad,
            f"null or an integer in [0, {MAX_IMAGE_SIZE}]")
    _check_optim(o, "optim")
    _check_schedule(s, "schedule")
    _check_peak_lr(o, s, "")
    for role in config.roles:
        _check_optim(config.role_optim(role), f"roles.{role}.optim")
        _check_schedule(config.role_schedule(role), f"roles.{role}.schedule")
        _check_peak_lr(config.role_optim(role), config.role_schedule(role), f"roles.{role}.")
    require(t.eval_every >= 1, "train.eval_every", t.eval_every, "an integer >= 1")
    require(t.threads in (None, "auto") or 1 <= t.threads <= MAX_THREADS, "train.threads", t.threads,
            f"auto, null (torch's default) or an integer in [1, {MAX_THREADS}]")
    require(t.status_every >= 0, "train.status_every", t.status_every, "seconds >= 0 (0: no status lines)")
    require(0 < t.dist_timeout <= 7 * 86400, "train.dist_timeout", t.dist_timeout, "seconds in (0, 604800] (a week)")
    dev = t.device
    require(re.fullmatch(r"auto|cpu|cuda(:\d+)?", dev) is not None, "train.device", dev, "auto, cpu, cuda, cuda:N")
    syn = d.synthetic
    for name, low, high in SYNTHETIC_RANGES:
        value = getattr(syn, name)
        require(low <= value <= high, f"data.synthetic.{name}", value, f"an integer in [{low}, {high}]")
    pixels = max(syn.train_size, syn.test_size) * syn.channels * syn.size**2
    require(pixels <= 2**30, "data.synthetic", f"{max(syn.train_size, syn.test_size)} images of "
            f"{syn.channels}x{syn.size}x{syn.size}", "at most 2**30 bytes of images per split")


def _check_optim(o: OptimConfig, where: str) -> None:
    require(o.lr > 0, f"{where}.lr", o.lr, "a number > 0")
    require(0 <= o.momentum < 1, f"{where}.momentum", o.momentum, "a number in [0, 1)")
    require(o.weight_decay >= 0, f"{where}.weight_decay", o.weight_decay, "a number >= 0")
    require(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), f"{where}.betas", o.betas,
            "two numbers in [0, 1)")
    require(not (o.nesterov and o.name == "sgd" and o.momentum == 0), f"{where}.nesterov", o.nesterov,
            f"false when {where}.momentum is 0")


def _check_schedule(s: ScheduleConfig, where: str) -> None:
    require(s.gamma > 0, f"{where}.gamma", s.gamma, "a number > 0")
    require(s.warmup_epochs >= 0, f"{where}.warmup_epochs", s.warmup_epochs, "a number >= 0")
    require(all(m >= 1 for m in s.milestones) and s.milestones == sorted(s.milestones), f"{where}.milestones",
            s.milestones, "increasing epochs >= 1")
    require(s.min_lr >= 0, f"{where}.min_lr", s.min_lr, "a number >= 0")
    # a key of another schedule than the chosen one would be ignored in silence: refused instead
    default = type(s)()  # the defaults of every schedule key
    for key, used_by in (("milestones", "multistep"), ("gamma", "multistep"), ("min_lr", "cosine")):
        value = getattr(s, key)
        require(s.name == used_by or value == getattr(default, key), f"{where}.{key}", value,
                f"{getattr(default, key)!r} under {where}.name={s.name} (only {used_by} uses {key}: add --set "
                f"{where}.name={used_by}, or drop it)")


def _check_peak_lr(o: OptimConfig, s: ScheduleConfig, prefix: str) -> None:
    """The largest learning rate the schedule reaches must fit in float32, as each of its factors does: a
    multistep ``gamma`` > 1 multiplies the rate at every milestone (counted in logarithms: no overflow here)."""
    if s.name != "multistep" or s.gamma <= 1 or not s.milestones:
        return
    log_peak = math.log(o.lr) + len(s.milestones) * math.log(s.gamma)
    require(log_peak <= math.log(FLOAT32_MAX), f"{prefix}schedule.gamma", s.gamma,
            f"a factor that keeps the learning rate within float32 ({prefix}optim.lr={o.lr:g} x gamma^"
            f"{len(s.milestones)} milestones is about 1e{log_peak / math.log(10):.0f}, beyond {FLOAT32_MAX:.4g})")
