"""The one training loop. It knows nothing of which method it runs.

Determinism: every source of randomness is seeded from (seed, purpose, epoch, rank) at the start of
each epoch: the data order, the augmentation generator and torch's global generator (dropout).
Together with the model, optimiser and method state saved after every epoch, this makes a run
resumed from its last checkpoint follow exactly the same path as an uninterrupted one (bit for bit
on a CPU with ``train.deterministic``).

Hot path: data and augmentation stay on the device; per-step statistics are accumulated as device
tensors and read back once per epoch (and every few steps for the progress bar on a terminal), so
the loop adds no host-device synchronisation of its own to a step.
"""

from __future__ import annotations

import contextlib
import json
import resource
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import yaml
from torch.nn.parallel import DistributedDataParallel

from .. import __version__
from ..config import Config, differences, resolve
from ..data import Augment, ImageDataset, load_dataset, train_batches
from ..data.mixing import Mixer, apply_mix
from ..distributed import all_reduce_sum, any_rank, gather_objects, init_distributed, shutdown
from ..errors import TrainingDiverged, UserError
from ..methods import Batch, Outputs, build_method
from ..methods.base import SetupContext
from ..models import FeatureTaps, build_model, count_parameters
from . import rundir
from .evaluate import evaluate
from .optim import LRSchedule, make_optimizer
from .progress import Progress
from .runtime import GroupedForward, Precision, configure_torch, derive_seed, resolve_device

CHECK_EVERY = 25  # steps between checks for a non-finite loss (each check is one device sync)


@dataclass
class EpochResult:
    terms: dict[str, float]
    train_top1: float
    rows: int  # images forwarded on all ranks, replayed/extra rows included
    seconds: float


class Trainer:
    """Build everything a run needs from a :class:`Config`, then :meth:`fit`."""

    def __init__(self, config: Config, out: str | Path | None = None, resume: bool = False,
                 dataset: ImageDataset | None = None) -> None:
        self.config, self.out = config, Path(out) if out is not None else None
        cfg = config
        self.ctx = init_distributed("cuda" if cfg.train.device.startswith("cuda") or
                                    (cfg.train.device == "auto" and torch.cuda.is_available()) else "cpu")
        self.device = resolve_device(cfg.train.device, self.ctx)
        configure_torch(cfg.train, self.device)
        self.precision = Precision.resolve(cfg.train, self.device)
        self.checkpoint = self._load_resume_state(resume)

        if cfg.data.batch_size % self.ctx.world_size:
            raise UserError.bad_value("data.batch_size", cfg.data.batch_size,
                                      f"a multiple of the number of processes ({self.ctx.world_size})")
        self.batch_size = cfg.data.batch_size // self.ctx.world_size
        self.data = (dataset or load_dataset(cfg.data, cfg.train.seed)).to(self.device)
        d = self.data
        size = max(d.image_size, cfg.data.pad_to or 0)
        aug = cfg.data.augment
        self.augment = Augment(d.mean, d.std,
                               d.augment.crop_padding if aug.crop_padding is None else aug.crop_padding,
                               d.augment.flip if aug.flip is None else aug.flip,
                               d.augment.resized_crop if aug.resized_crop is None else aug.resized_crop,
                               cfg.data.pad_to)

        mix = cfg.data.mix
        self.mixer = Mixer(mix.name, mix.alpha, mix.probability(), size) if mix.name != "none" else None

        torch.manual_seed(derive_seed(cfg.train.seed, "init"))
        model = build_model(cfg.model.name, d.num_classes, d.in_channels, size)
        self.model = self.precision.model(model).to(self.device)
        self.method = build_method(cfg.method)
        self.method.setup(SetupContext(self.model, cfg.model.name, d.num_classes, (d.in_channels, size, size),
                                       d.train_labels, cfg.train.epochs, self.device, self.ctx, self.mixer is not None))
        self.extras = self.precision.model(nn.ModuleDict(self.method.modules())).to(self.device)
        self.taps = FeatureTaps(self.model, list(self.method.taps)) if self.method.taps else None
        self.train_labels_cpu = d.train_labels.cpu()
        self.steps = len(self._epoch_batches(0))
        if self.steps == 0:
            raise UserError(f"data.batch_size={cfg.data.batch_size} leaves no training step per epoch with "
                            f"{len(d.train_labels)} training images")
        self.optimizer = make_optimizer(list(self.model.parameters()) + list(self.extras.parameters()), cfg.optim)
        self.schedule = LRSchedule(cfg.schedule, cfg.optim.lr, cfg.train.epochs, self.steps)
        forward: nn.Module = GroupedForward(torch.compile(self.model) if cfg.train.compile else self.model,
                                            self.extras)
        if self.ctx.enabled:
            # 1x1 kernels' gradients may carry arbitrary strides on their size-1 dimensions: contiguous, yet
            # not stride-identical to DDP's bucket, which then warns on every step although nothing is wrong.
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            forward = DistributedDataParallel(forward, device_ids=[self.device.index] if self.device.type == "cuda"
                                              else None, gradient_as_bucket_view=True)
        self.forward = forward
        self.progress = Progress(cfg.train.progress, self.ctx.is_main)
        self.history: list[dict[str, Any]] = []
        self.test_images: int | None = None  # images covered by the last evaluation, summed over ranks
        self.start_epoch, self.images_seen, self.train_seconds, self.previous_wall = 0, 0, 0.0, 0.0
        if self.checkpoint is not None:
            self._restore(self.checkpoint)

    # ------------------------------------------------------------------ resume
    def _load_resume_state(self, resume: bool) -> dict[str, Any] | None:
        if self.out is None:
            return None
        if not resume:
            if self.ctx.is_main:
                rundir.prepare_new_run(self.out)
            return None
        saved = self.out / "config.yaml"
        if not saved.is_file():
            raise UserError(f"--resume: nothing to resume in {self.out} (no config.yaml)")
        diff = differences(resolve([yaml.safe_load(saved.read_text())]), self.config)
        if diff:
            raise UserError(f"--resume: the config differs from the saved run in {diff[0]}")
        state = rundir.load_checkpoint(self.out)
        if state is not None and len(state["method"]) != self.ctx.world_size:
            raise UserError(f"--resume: the run was saved by {len(state['method'])} process(es), "
                            f"now {self.ctx.world_size}; resume with the same number")
        return state

    def _restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.extras.load_state_dict(state["extras"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.method.load_state_dict(_to_device(state["method"][self.ctx.rank], self.device))
        self.history = list(state["history"])
        self.start_epoch = state["epoch"]
        self.images_seen, self.train_seconds = state["images_seen"], state["train_seconds"]
        self.previous_wall = state["wall_seconds"]

    # ------------------------------------------------------------------ one epoch
    def _epoch_batches(self, epoch: int) -> list[torch.Tensor]:
        """This rank's index batches: the method's sampler if it has one, else a shuffled pass."""
        cfg = self.config
        order = torch.Generator().manual_seed(derive_seed(cfg.train.seed, "order", epoch))
        args = (self.batch_size, order, cfg.data.drop_last, self.ctx.rank, self.ctx.world_size)
        batches = self.method.batches(self.train_labels_cpu, *args)
        return batches if batches is not None else train_batches(len(self.train_labels_cpu), *args)

    def _inputs(self, batch: Batch, generator: torch.Generator) -> torch.Tensor:
        """Augment every row afresh; mix rows with their (augmented) partners when mixing is on."""
        inputs = self.augment(batch.images, generator)
        if batch.mix is not None:
            inputs = apply_mix(inputs, self.augment(batch.mix.partner_images, generator), batch.mix)
        return self.precision.inputs(inputs)

    def train_epoch(self, epoch: int) -> EpochResult:
        cfg, d, dev = self.config, self.data, self.device
        torch.manual_seed(derive_seed(cfg.train.seed, "torch", epoch, self.ctx.rank))
        aug_gen = torch.Generator(device=dev).manual_seed(derive_seed(cfg.train.seed, "augment", epoch, self.ctx.rank))
        batches = self._epoch_batches(epoch)
        self.method.start_epoch(epoch)
        self.model.train()
        self.extras.train()
        names = self.method.term_names
        term_sums = torch.zeros(len(names), device=dev)
        correct = torch.zeros((), device=dev)
        finite = torch.ones((), dtype=torch.bool, device=dev)
        rows = new_rows = 0
        self.progress.start_epoch(epoch, cfg.train.epochs, len(batches))
        _sync(dev)
        start = time.perf_counter()
        for step, idx in enumerate(batches):
            self.schedule.apply(self.optimizer, epoch, step)
            idx = idx.to(dev, non_blocking=True)
            batch = Batch.new(d.train_images[idx], d.train_labels[idx], idx)
            if self.mixer is not None:
                batch.mix = self.mixer.draw(batch.images, batch.labels, aug_gen)
            batch = self.method.extend(batch)
            batch.inputs = self._inputs(batch, aug_gen)
            with self.precision.autocast():
                with self.taps.record() if self.taps else contextlib.nullcontext():
                    logits = self.forward(batch.inputs, batch.forward_splits())
                out = Outputs(logits, dict(self.taps.features) if self.taps else {})
                terms = self.method.losses(out, batch)
            self.method.update(out, batch)
            loss = torch.stack(list(terms.values())).sum()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()

            with torch.no_grad():
                term_sums += torch.stack([t.detach().float() for t in terms.values()])
                new = batch.parts["new"]
                correct += (out.logits[new].argmax(1) == batch.labels[new]).sum()
                finite &= torch.isfinite(loss.detach())
            rows += len(batch)
            new_rows += new.stop - new.start
            if (step + 1) % CHECK_EVERY == 0 or step + 1 == len(batches):
                if not self.ctx.enabled and not bool(finite):
                    raise TrainingDiverged(f"the loss became non-finite in epoch {epoch + 1} near step {step + 1}")
                if self.progress.wants_stats:
                    self.progress.update(step + 1, {"loss": float(term_sums.sum() / (step + 1)),
                                                    "acc": 100.0 * float(correct) / max(new_rows, 1)})
        _sync(dev)
        seconds = time.perf_counter() - start
        if any_rank(not bool(finite), self.ctx, dev):
            raise TrainingDiverged(f"the loss became non-finite in epoch {epoch + 1}")
        totals = all_reduce_sum(torch.cat([term_sums, correct[None],
                                           torch.tensor([float(new_rows), float(rows), float(len(batches))],
                                                        device=dev)]), self.ctx)
        k = len(names)
        steps_all = float(totals[k + 3])
        return EpochResult({n: float(totals[i]) / steps_all for i, n in enumerate(names)},
                           100.0 * float(totals[k]) / float(totals[k + 1]), int(totals[k + 2]), seconds)

    # ------------------------------------------------------------------ the run
    def fit(self) -> dict[str, Any]:
        cfg = self.config
        wall_start = time.perf_counter()
        finished = self.out / "metrics.json" if self.out is not None else None
        if self.start_epoch >= cfg.train.epochs and finished is not None and finished.is_file():
            shutdown(self.ctx)
            return json.loads(finished.read_text())  # resuming a run that had already completed
        if self.out is not None and self.ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            if not (self.out / "config.yaml").exists():
                rundir.atomic_write_text(self.out / "config.yaml", cfg.to_yaml())
        try:
            for epoch in range(self.start_epoch, cfg.train.epochs):
                result = self.train_epoch(epoch)
                self.images_seen += result.rows
                self.train_seconds += result.seconds
                row = self._row(epoch, result)
                self.history.append(row)
                self.progress.end_epoch(row, self.method.term_names, cfg.train.epochs)
                self._save(epoch + 1, wall_start)
            return self._finish(wall_start)
        except TrainingDiverged as exc:
            done = len(self.history)
            kept = (f"the checkpoint of epoch {done} in {self.out} is kept" if done and self.out is not None
                    else "no epoch had completed, so there is no checkpoint")
            raise TrainingDiverged(f"{exc}; {kept}") from None
        finally:
            shutdown(self.ctx)

    def _row(self, epoch: int, result: EpochResult) -> dict[str, Any]:
        cfg, d = self.config, self.data
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": self.schedule.lr(epoch, 0), **result.terms,
                               "train_top1": result.train_top1, "test_top1": None, "test_nll": None,
                               "test_ece": None, "images_per_s": result.rows / max(result.seconds, 1e-9),
                               "seconds": result.seconds, "images_seen": self.images_seen}
        if (epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == cfg.train.epochs:
            acc = evaluate(self.model, d.test_images, d.test_labels, d.num_classes, self.augment,
                           cfg.data.eval_batch_size, self.precision, self.ctx)
            row.update(test_top1=acc.top1(), test_nll=acc.nll(), test_ece=acc.ece())
            self.test_images = acc.count
        return row

    def _save(self, epochs_done: int, wall_start: float) -> None:
        method_states = gather_objects(_to_device(self.method.state_dict(), "cpu"), self.ctx)
        if self.out is None or not self.ctx.is_main:
            return
        rundir.write_log(self.out / "log.csv", self.history)
        rundir.atomic_torch_save(self.out / rundir.CHECKPOINT, {
            "version": rundir.CHECKPOINT_VERSION, "epoch": epochs_done, "config": self.config.to_dict(),
            "model": self.model.state_dict(), "extras": self.extras.state_dict(),
            "optimizer": self.optimizer.state_dict(), "method": method_states,
            "history": self.history, "images_seen": self.images_seen, "train_seconds": self.train_seconds,
            "wall_seconds": self.previous_wall + time.perf_counter() - wall_start})

    def _finish(self, wall_start: float) -> dict[str, Any]:
        cfg, final = self.config, self.history[-1]
        evaluated = [r for r in self.history if r["test_top1"] is not None]
        best = max(evaluated, key=lambda r: r["test_top1"])
        metrics = {
            "method": self.method.name, "dataset": cfg.data.dataset, "model": cfg.model.name,
            "seed": cfg.train.seed, "epochs": cfg.train.epochs,
            "test_top1": final["test_top1"], "test_nll": final["test_nll"], "test_ece": final["test_ece"],
            "train_top1": final["train_top1"], "train_images_seen": self.images_seen,
            "test_images": self.test_images,
            "wall_s": self.previous_wall + time.perf_counter() - wall_start,
            "train_s": self.train_seconds, "images_per_s": self.images_seen / max(self.train_seconds, 1e-9),
            "steps_per_epoch": self.steps, "batch_size": cfg.data.batch_size, "label_noise": cfg.data.label_noise,
            "train_subset": cfg.data.train_subset, "parameters": count_parameters(self.model),
            "extra_parameters": count_parameters(self.extras), "peak_memory_mb": peak_memory_mb(self.device),
            "world_size": self.ctx.world_size, "device": str(self.device),
            "best_epoch_selected_on_test": best["epoch"], "best_test_top1_selected_on_test": best["test_top1"],
            "code": code_version(),
        }
        if self.out is not None and self.ctx.is_main:
            rundir.write_json(self.out / "metrics.json", metrics)
            rundir.atomic_torch_save(self.out / "model.pt", self.model.state_dict())
        return metrics


def code_version() -> str:
    """The package version, plus the git commit when running from a checkout (for reproducibility)."""
    try:
        commit = subprocess.run(["git", "-C", str(Path(__file__).parent), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: allocated on the GPU, or resident set size on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _to_device(obj: Any, device: torch.device | str) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def train(config: Config, out: str | Path | None = None, resume: bool = False) -> dict[str, Any]:
    """Train as ``config`` says; write the run directory to ``out`` (if given); return the metrics."""
    return Trainer(config, out, resume).fit()


__all__ = ["Trainer", "train"]
