"""The one training loop. It knows nothing of which method it runs.

Determinism: every source of randomness is seeded from (seed, purpose, epoch, rank) at the start of
each epoch: the data order, the augmentation generator and torch's global generator (dropout).
Together with the model, optimiser and method state saved after every epoch, this makes a run
resumed from its last checkpoint follow exactly the same path as an uninterrupted one (bit for bit
on a CPU with ``train.deterministic`` and the same ``train.threads``).

Nothing lost: the run directory is locked for the run's life (:class:`~.rundir.RunDir`); the final
checkpoint holds the final metrics, and the final outputs are written after it with ``metrics.json``
last, so a run is finished exactly when ``metrics.json`` exists, and ``--resume`` rebuilds any final
output that is missing or outdated. On resume the checkpoint's config is the saved config, and the
device kind, precision and thread count must be the ones it was trained with. An attempt that fails
before the first checkpoint removes what it wrote (a resumed one keeps the ``config.yaml`` it
resumed), so a command can simply run again; a diverged run is marked so that a rerun with other
settings moves it aside.

Hot path: data and augmentation stay on the device; per-step statistics are accumulated as device
tensors and read back once per epoch (and every few steps for the progress bar or a status line),
so the loop adds no host-device synchronisation of its own to a step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import resource
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .. import __version__
from ..config import Config, differences, read_yaml_file, resolve
from ..data import Augment, ImageDataset, load_dataset, train_batches
from ..data.mixing import Mixer, apply_mix
from ..distributed import (
    agree_on_failure,
    all_reduce_sum,
    any_rank,
    as_peer_failure,
    gather_objects,
    init_distributed,
    leave_together,
    shutdown,
)
from ..errors import OutputError, PeerFailure, SelfdistillError, TrainingDiverged, UserError, one_line
from ..methods import Batch, Outputs, build_method
from ..methods.base import ROLE_PATTERN, STUDENT, NetworkSpec, SetupContext
from ..modelcard import ModelCard, weights_sha256, write_model_card
from ..models import build_model, count_parameters
from ..teachers import DataShape, TeacherSpec, check_unchanged, load_teacher, teacher_roles
from . import rundir, tensorboard
from .evaluate import NetworkEvaluation, TeacherPredictions, evaluate_networks, teacher_predictions
from .networks import FrozenNetwork, TrainableNetwork
from .progress import Progress
from .resume import check_resume
from .runtime import Precision, configure_torch, derive_seed, describe_threads, resolve_device, synchronize

TEACHER_FIGURES = ("top1", "nll", "ece", "entropy", "nontarget_entropy")  # TeacherDiagnostics.summary()
CHECK_EVERY = 25  # steps between checks for a non-finite loss (each check is one device sync)


class Interrupted(SelfdistillError):
    """Ctrl-C during training; the message says what was kept."""

    exit_code = 130


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
        self.config, self.out, self.resuming = config, Path(out) if out is not None else None, resume
        self.ctx = init_distributed("cuda" if config.train.device.startswith("cuda") or
                                    (config.train.device == "auto" and torch.cuda.is_available()) else "cpu",
                                    config.train.dist_timeout)
        self.run: rundir.RunDir | None = None
        failure: SelfdistillError | None = None
        try:
            self._build(dataset)
        except SelfdistillError as exc:
            failure = exc
        except BaseException:
            self._abandon()
            raise
        failure = agree_on_failure(failure, self.ctx)  # a rank that failed stops every rank, with its message
        if failure is not None:
            self._abandon()
            raise failure

    def _abandon(self) -> None:
        """Undo what the constructor did to the run directory: nothing it found there is changed."""
        if self.run is not None:
            self.run.abandon()
            self.run = None
        shutdown(self.ctx)

    def _build(self, dataset: ImageDataset | None) -> None:
        cfg = self.config
        if self.out is not None and self.ctx.is_main:
            self.run = rundir.RunDir.acquire(self.out, fresh=not self.resuming)
            if not self.resuming:
                self.run.check_fresh()  # what it finds is cleared away only when training starts
        self.checkpoint = self._load_resume_state() if self.resuming and self.out is not None else None
        self.device = resolve_device(cfg.train.device, self.ctx)
        self.threads_how = configure_torch(cfg.train, self.device)
        self.precision = Precision.resolve(cfg.train, self.device, cfg.model.name)
        saved_runtime = (self.checkpoint or {}).get("runtime") or {}
        if cfg.train.channels_last == "auto" and isinstance(saved_runtime.get("channels_last"), bool):
            # a resumed run keeps the layout it was trained in (the float sums, hence the result, depend on it), even
            # where this version's auto would choose another one for its architecture
            self.precision = dataclasses.replace(self.precision, channels_last=saved_runtime["channels_last"])
        self.runtime = {"device": self.device.type, "amp": self.precision.amp,
                        "channels_last": self.precision.channels_last,
                        "threads": torch.get_num_threads() if self.device.type == "cpu" else None}
        if self.checkpoint is not None and self.checkpoint.get("runtime", self.runtime) != self.runtime:
            raise UserError(f"--resume: the run was trained with {_describe(self.checkpoint['runtime'])}, now with "
                            f"{_describe(self.runtime)}; it would not end where it would have: resume with the same "
                            "(--device, --threads, train.amp, train.channels_last)")
        if cfg.data.batch_size % self.ctx.world_size:
            raise UserError.bad_value("data.batch_size", cfg.data.batch_size,
                                      f"a multiple of the number of processes ({self.ctx.world_size})")
        self.batch_size = cfg.data.batch_size // self.ctx.world_size
        self.split = "val" if cfg.data.validation_split is not None else "test"
        self.data = (dataset or load_dataset(cfg.data, cfg.train.seed)).to(self.device)
        d = self.data
        self.image_size = max(d.image_size, cfg.data.pad_to or 0)
        aug = cfg.data.augment
        self.augment = Augment(d.mean, d.std,
                               d.augment.crop_padding if aug.crop_padding is None else aug.crop_padding,
                               d.augment.flip if aug.flip is None else aug.flip,
                               d.augment.resized_crop if aug.resized_crop is None else aug.resized_crop,
                               cfg.data.pad_to)
        mix = cfg.data.mix
        self.mixer = Mixer(mix.name, mix.alpha, mix.probability(), self.image_size) if mix.name != "none" else None

        torch.manual_seed(derive_seed(cfg.train.seed, "init"))
        model = build_model(cfg.model.name, d.num_classes, d.in_channels, self.image_size)
        self.model = self.precision.model(model).to(self.device)
        self._probe(self.model, f"model.name={cfg.model.name!r}")
        self.teachers = self._build_teachers()
        self.method = build_method(cfg.method)
        setup = SetupContext(self.model, cfg.model.name, d.num_classes, (d.in_channels, self.image_size,
                             self.image_size), d.train_labels, cfg.train.epochs, self.device, self.ctx,
                             self.mixer is not None, [t.module for t in self.teachers],
                             [s.model for s in self.teacher_sources])
        others = self._build_networks(setup)
        setup.networks = {role: module for role, (_, module) in others.items()}
        self.method.setup(setup)
        taps = self.method.teacher_taps()
        for k, teacher in enumerate(self.teachers):  # every teacher, tapped or not
            teacher.prepare(taps[k] if k < len(taps) else ())
        self.teacher_eval: TeacherPredictions | None = None  # the teachers' test predictions, made once
        self.extras = self.precision.model(nn.ModuleDict(self.method.modules())).to(self.device)
        self.train_labels_cpu = d.train_labels.cpu()
        self.steps = len(self._epoch_batches(0))
        if self.steps == 0:
            raise UserError(f"data.batch_size={cfg.data.batch_size} leaves no training step per epoch with "
                            f"{len(d.train_labels)} training images")
        if self.ctx.enabled:
            # 1x1 kernels' gradients may carry arbitrary strides on their size-1 dimensions: contiguous, yet
            # not stride-identical to DDP's bucket, which then warns on every step although nothing is wrong.
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")

        def trainable(role: str, arch: str, module: nn.Module, extras: nn.Module,
                      taps: tuple[str, ...] = ()) -> TrainableNetwork:
            return TrainableNetwork(role, arch, module, extras, cfg.role_optim(role), cfg.role_schedule(role),
                                    cfg.train.epochs, self.steps, self.ctx, self.device, cfg.train.compile, taps)

        self.nets = [trainable(STUDENT, cfg.model.name, self.model, self.extras, self.method.taps),
                     *(trainable(role, arch, module, nn.ModuleDict()) for role, (arch, module) in others.items())]
        self.student = self.nets[0]
        self.optimizer, self.schedule = self.student.optimizer, self.student.schedule
        self.progress = Progress(cfg.train.progress, self.ctx.is_main, cfg.train.status_every, self.split)
        self.write_tensorboard = self.run is not None and tensorboard.wanted(cfg.train.tensorboard)
        self.history: list[dict[str, Any]] = []
        self.last_eval: dict[str, Any] = {}  # images and reliability bins of the latest evaluation
        self.start_epoch, self.images_seen, self.train_seconds, self.previous_wall = 0, 0, 0.0, 0.0
        self.saved_epoch, self.final_metrics = 0, None  # the epoch of the last checkpoint on disk
        if self.checkpoint is not None:
            self._restore(self.checkpoint)

    def _probe(self, model: nn.Module, what: str) -> None:
        """One forward of two training images in eval mode (no state changes), so that images the model
        cannot take end here with one line instead of a traceback in the first step."""
        x = self.precision.inputs(self.augment.eval(self.data.train_images[:2]))
        model.eval()
        try:
            with torch.no_grad(), self.precision.autocast():
                model(x)
        except RuntimeError as exc:
            c, h, w = x.shape[1:]
            raise UserError(f"{what} cannot take {c}x{h}x{w} images ({one_line(exc)[:160]}); choose another model "
                            "or enlarge the images with --set data.pad_to=32") from None
        finally:
            model.train()

    def _build_networks(self, setup: SetupContext) -> dict[str, tuple[str, nn.Module]]:
        """The method's trainable networks besides the student, by role: (architecture, module on the
        device). Each is built under a seed of its own role, so adding a peer changes no other network's
        initial weights; each is probed with two training images like the student."""
        cfg, d = self.config, self.data
        torch.manual_seed(derive_seed(cfg.train.seed, "init", "networks"))
        specs: list[NetworkSpec] = self.method.networks(setup)
        taken = {STUDENT, "ensemble", *(t.role for t in self.teachers)}  # "ensemble" names the cohort's figures
        networks: dict[str, tuple[str, nn.Module]] = {}
        for spec in specs:
            if ROLE_PATTERN.fullmatch(spec.role) is None or spec.role in taken or spec.role in networks:
                raise UserError(f"method {self.method.name} names a network {spec.role!r}, which is not a free role "
                                f"(taken: {', '.join(sorted(taken | set(networks)))})")
            module = spec.module
            if module is None:
                torch.manual_seed(derive_seed(cfg.train.seed, "init", spec.role))
                module = build_model(spec.model, d.num_classes, d.in_channels, self.image_size)
            module = self.precision.model(module).to(self.device)
            self._probe(module, f"the {spec.role} network ({spec.model})")
            networks[spec.role] = (spec.model, module)
        unknown = sorted(set(cfg.roles) - {STUDENT, *networks})
        if unknown:
            frozen = unknown[0] in taken
            has = ", ".join([STUDENT, *networks])
            raise UserError(f"roles.{unknown[0]}: " + (f"the {unknown[0]} is frozen and has no optimiser" if frozen
                            else f"method {self.method.name} has no network of that role") + f"; its roles: {has}")
        return networks

    def _build_teachers(self) -> list[FrozenNetwork]:
        """Load, check and place the frozen teachers; probe each with two training images."""
        cfg, d = self.config, self.data
        shape = DataShape(d.num_classes, d.in_channels, self.image_size, list(d.mean), list(d.std))
        loaded = [load_teacher(TeacherSpec(**entry), shape, f"teachers[{k}]") for k, entry in enumerate(cfg.teachers)]
        self.teacher_sources = [t.source for t in loaded]
        if self.checkpoint is not None:
            check_unchanged(self.checkpoint.get("teachers") or [], self.teacher_sources)
        teachers = [FrozenNetwork(role, t.net, t.input_map, self.precision, self.device, cfg.train.compile)
                    for role, t in zip(teacher_roles(len(loaded)), loaded)]
        x = self.precision.inputs(self.augment.eval(d.train_images[:2]))
        for k, teacher in enumerate(teachers):
            try:
                teacher(x)
            except RuntimeError as exc:
                c, h, w = x.shape[1:]
                raise UserError(f"teachers[{k}] ({self.teacher_sources[k].model}) cannot take {c}x{h}x{w} images "
                                f"({one_line(exc)[:160]})") from None
        return teachers

    # ------------------------------------------------------------------ resume
    def _load_resume_state(self) -> dict[str, Any] | None:
        """The checkpoint to continue from (None: start from epoch 0 with the saved config), after checking
        that this config continues the saved run. The checkpoint's config is the saved config; without a
        checkpoint, ``config.yaml`` is."""
        assert self.out is not None
        raw, state = rundir.resume_point(self.out)
        if state is None:
            saved = resolve([raw])
        else:
            saved = resolve_saved_config(raw, self.out / rundir.CHECKPOINT)
            if len(state["method"]) != self.ctx.world_size:
                raise UserError(f"--resume: the run was saved by {len(state['method'])} process(es), now "
                                f"{self.ctx.world_size}; resume with the same number")
        self.saved_epochs = saved.train.epochs
        check_resume(saved, self.config, 0 if state is None else state["epoch"],
                     build_method(self.config.method).uses_total_epochs)
        return state

    def _restore(self, state: dict[str, Any]) -> None:
        where = self.out / rundir.CHECKPOINT if self.out is not None else rundir.CHECKPOINT
        try:
            self.student.load_state_dict(state)
            saved = state.get("networks", {})
            if sorted(saved) != sorted(net.role for net in self.nets[1:]):
                raise KeyError(f"networks {sorted(saved)}")
            for net in self.nets[1:]:
                net.load_state_dict(saved[net.role])
            self.method.load_state_dict(_to_device(state["method"][self.ctx.rank], self.device))
            self.history = list(state["history"])
            self.start_epoch = self.saved_epoch = int(state["epoch"])
            self.images_seen, self.train_seconds = int(state["images_seen"]), float(state["train_seconds"])
            self.previous_wall = float(state["wall_seconds"])
            self.last_eval = dict(state.get("last_eval") or {})
            self.final_metrics = state.get("metrics")
        except (KeyError, RuntimeError, ValueError, TypeError, IndexError, AttributeError) as exc:
            raise UserError(f"--resume: {where} does not fit this run ({type(exc).__name__}: "
                            f"{one_line(exc)[:160]}); it belongs to another model or is damaged") from None

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
        for net in self.nets:
            net.train()
        names, stat_names, rounds = self.method.term_names, self.method.stat_names, self.method.rounds
        term_sums = torch.zeros(len(names), device=dev)
        stat_sums = torch.zeros(len(stat_names), device=dev)
        correct = torch.zeros((), device=dev)
        finite = torch.ones((), dtype=torch.bool, device=dev)
        rows = new_rows = 0
        self.progress.start_epoch(epoch, cfg.train.epochs, len(batches))
        synchronize(dev)
        start = time.perf_counter()
        for step, idx in enumerate(batches):
            for net in self.nets:
                net.schedule.apply(net.optimizer, epoch, step)
            idx = idx.to(dev, non_blocking=True)
            batch = Batch.new(d.train_images[idx], d.train_labels[idx], idx)
            if self.mixer is not None:
                batch.mix = self.mixer.draw(batch.images, batch.labels, aug_gen)
            batch = self.method.extend(batch)
            batch.inputs = self._inputs(batch, aug_gen)
            teachers = {teacher.role: teacher(batch.inputs) for teacher in self.teachers}
            for round in range(rounds):
                out, terms, loss = self._round(batch, teachers, round)
                with torch.no_grad():
                    term_sums += torch.stack([t.detach().float() for t in terms.values()]) / rounds
            self.method.update(out, batch)  # after backward: state it changes in place may be in the graph (CRD)

            with torch.no_grad():
                if stat_names:
                    stats = self.method.stats()
                    stat_sums += torch.stack([stats[n].detach().float().to(dev) for n in stat_names])
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
            if self.progress.status_due():
                self.progress.status(step + 1, {"loss": float(term_sums.sum() / (step + 1)), "images": rows,
                                                "acc": 100.0 * float(correct) / max(new_rows, 1)})
        synchronize(dev)
        seconds = time.perf_counter() - start
        if any_rank(not bool(finite), self.ctx, dev):
            raise TrainingDiverged(f"the loss became non-finite in epoch {epoch + 1}")
        totals = all_reduce_sum(torch.cat([term_sums, stat_sums, correct[None],
                                           torch.tensor([float(new_rows), float(rows), float(len(batches))],
                                                        device=dev)]), self.ctx)
        k = len(names) + len(stat_names)
        steps_all = float(totals[k + 3])
        return EpochResult({n: float(totals[i]) / steps_all for i, n in enumerate((*names, *stat_names))},
                           100.0 * float(totals[k]) / float(totals[k + 1]), int(totals[k + 2]), seconds)

    def _round(self, batch: Batch, teachers: dict[str, Outputs],
               round: int) -> tuple[Outputs, dict[str, torch.Tensor], torch.Tensor]:
        """One forward of every trainable network on the batch's rows, the method's terms, one backward of
        their sum, and a step of every network the method does not pause in this round."""
        splits = batch.forward_splits()
        with self.precision.autocast():
            outs = [net(batch.inputs, splits) for net in self.nets]
            out = Outputs(outs[0].logits, outs[0].features,
                          {**teachers, **{net.role: o for net, o in zip(self.nets[1:], outs[1:])}},
                          tuple(net.role for net in self.nets[1:]))
            terms = self.method.losses(out, batch)
        terms = self.method.detach_paused(terms, round)
        paused = self.method.paused(round)
        loss = torch.stack(list(terms.values())).sum()
        if self.ctx.enabled:  # DDP waits for a gradient of every network it forwarded: give paused ones zeros
            loss = loss + sum(0.0 * o.logits.float().sum() for net, o in zip(self.nets, outs) if net.role in paused)
        for net in self.nets:
            net.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for net in self.nets:
            if net.role not in paused:
                net.optimizer.step()
        return out, terms, loss

    # ------------------------------------------------------------------ the run
    def fit(self) -> dict[str, Any]:
        """Train the remaining epochs and write the final outputs; return the final metrics."""
        try:
            if self.checkpoint is not None and self.start_epoch >= self.config.train.epochs:
                metrics = self._complete_finished_run()
            else:
                metrics = self._train_remaining_epochs()
            leave_together(self.ctx)
            return metrics
        except BaseException as exc:
            raise self._failure(exc) from None
        finally:
            if self.run is not None:
                self.run.release()
            for net in self.nets if self.ctx.enabled else ():
                net.release()  # DDP's reducer goes before the process group it talks through
            shutdown(self.ctx)

    def _train_remaining_epochs(self) -> dict[str, Any]:
        cfg = self.config
        wall_start = time.perf_counter()
        self._begin()
        board = tensorboard.TensorBoardLog(self.out, self.start_epoch) if self.write_tensorboard else None
        try:
            metrics: dict[str, Any] = {}
            for epoch in range(self.start_epoch, cfg.train.epochs):
                result = self.train_epoch(epoch)
                self.images_seen += result.rows
                self.train_seconds += result.seconds
                self.history.append(self._row(epoch, result))
                if epoch + 1 == cfg.train.epochs:
                    metrics = self._metrics(wall_start)
                self._save(epoch + 1, wall_start, metrics or None)
                roles = tuple(net.role for net in self.nets[1:])
                self.progress.end_epoch(self.history[-1], self.method.term_names, cfg.train.epochs,
                                        self.method.stat_names, roles)
                if board is not None:
                    board.log_epoch(self.history[-1], self.method.term_names, self.split, self.method.stat_names, roles)
        finally:
            self.progress.close()
            if board is not None:
                board.close()
        self._write_final_outputs(metrics)
        return metrics

    def _failure(self, exc: BaseException) -> BaseException:
        """The exception a failed run ends with: one line saying what happened and what was kept."""
        if isinstance(exc, TrainingDiverged):
            return TrainingDiverged(f"{exc}; {self._what_was_kept(diverged=True)}")
        if isinstance(exc, OutputError):
            return OutputError(f"{exc}; {self._what_was_kept()}")
        if isinstance(exc, KeyboardInterrupt):
            return Interrupted(f"interrupted; {self._what_was_kept()}")
        peer = as_peer_failure(exc, self.ctx, self.config.train.dist_timeout)
        if peer is not None:
            return PeerFailure(f"{peer}; {self._what_was_kept()}")
        if isinstance(exc, RuntimeError) and "does not have a deterministic implementation" in str(exc):
            return UserError(f"train.deterministic=true: {one_line(exc).split('. ')[0]}; set "
                             f"train.deterministic=false for this model on this device; {self._what_was_kept()}")
        self._what_was_kept()  # an unexpected error still leaves a directory that a rerun can use
        return exc

    def _begin(self) -> None:
        """Rank 0: set up the run directory for training and say what is about to happen."""
        cfg, d = self.config, self.data
        note = ""
        if self.run is not None and not self.resuming:
            note = self.run.clear_for_fresh_run()
            self.run.write_text(rundir.CONFIG, cfg.to_yaml())
        elif self.run is not None:
            extending = self.saved_epochs != cfg.train.epochs
            if extending:
                (self.run.path / rundir.METRICS).unlink(missing_ok=True)  # an extended run is unfinished again
            note = self._sync_config_file(expected=extending)
        if self.out is None:
            verb = "training (no --out: nothing is saved)"
        elif not self.resuming or self.checkpoint is None:
            verb = f"training into {self.out}"
        elif self.saved_epochs != cfg.train.epochs:
            verb = (f"extending {self.out} from {self.saved_epochs} to {cfg.train.epochs} epochs, resuming after "
                    f"epoch {self.start_epoch}")
        else:
            verb = f"resuming {self.out} after epoch {self.start_epoch}"
        threads = describe_threads(self.runtime["threads"], self.threads_how)
        teachers = "".join(f" | {t.role} {src.model} ({src.path})"
                           for t, src in zip(self.teachers, self.teacher_sources))
        processes = f" x {self.ctx.world_size} processes" if self.ctx.enabled else ""
        self.progress.say(
            f"selfdistill: {verb} | {self.method.name} on {cfg.data.dataset} with {cfg.model.name} "
            f"({count_parameters(self.model):,} parameters){teachers} | {len(d.train_labels):,} train / "
            f"{len(d.test_labels):,} {self.split} images | {self.steps} steps/epoch x {cfg.train.epochs} epochs | "
            f"{self.device}{threads}{processes}" + (f" | {note}" if note else ""))

    def _sync_config_file(self, expected: bool = False) -> str:
        """Make ``config.yaml`` say this run's config (the checkpoint's, with this invocation's resumable
        fields); return a note when it disagreed although no change was ``expected``."""
        assert self.run is not None
        path = self.run.path / rundir.CONFIG
        try:
            on_disk = resolve([read_yaml_file(path, str(path))]) if path.is_file() else None
        except UserError:
            on_disk = None
        if on_disk is not None and on_disk.to_yaml() == self.config.to_yaml():
            return ""
        self.run.write_text(rundir.CONFIG, self.config.to_yaml())
        if expected:
            return ""
        diff = differences(on_disk, self.config) if on_disk is not None else []
        why = f"disagreed in {diff[0]}" if diff else "was missing or unreadable"
        return f"{rundir.CONFIG} {why}; rewritten from the checkpoint" if self.checkpoint is not None else ""

    def _row(self, epoch: int, result: EpochResult) -> dict[str, Any]:
        cfg, d, s = self.config, self.data, self.split
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": self.schedule.lr(epoch, 0), **result.terms,
                               "train_top1": result.train_top1, f"{s}_top1": None, f"{s}_nll": None,
                               f"{s}_ece": None, "images_per_s": result.rows / max(result.seconds, 1e-9),
                               "seconds": result.seconds, "images_seen": self.images_seen}
        if self.teachers:
            row.update({f"{s}_agreement": None, f"{s}_teacher_kl": None,
                        **{f"teacher_{s}_{k}": None for k in TEACHER_FIGURES}})
        row.update(dict.fromkeys(self._network_columns()))
        if (epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == cfg.train.epochs:
            if self.teachers and self.teacher_eval is None:
                self.teacher_eval = teacher_predictions([t.logits for t in self.teachers], d.test_images,
                                                        d.test_labels, d.num_classes, self.augment,
                                                        cfg.data.eval_batch_size, self.precision, self.ctx)
            result = evaluate_networks({net.role: net.model for net in self.nets}, d.test_images, d.test_labels,
                                       d.num_classes, self.augment, cfg.data.eval_batch_size, self.precision,
                                       self.ctx, self.teacher_eval)
            for role, acc in result.networks.items():
                if not math.isfinite(acc.nll()):
                    whose = "" if role == STUDENT else f" of the {role} network"
                    raise TrainingDiverged(f"the {s} NLL{whose} is {acc.nll()} after epoch {epoch + 1}: its "
                                           "predictions are no longer finite, though the training loss is")
            acc = result.networks[STUDENT]
            row.update({f"{s}_top1": acc.top1(), f"{s}_nll": acc.nll(), f"{s}_ece": acc.ece()})
            row.update(self._network_figures(result))
            fidelity = result.teachers
            if fidelity is not None and self.teacher_eval is not None:
                row.update({f"{s}_agreement": fidelity.agreement(), f"{s}_teacher_kl": fidelity.predictive_kl(),
                            **{f"teacher_{s}_{k}": v for k, v in self.teacher_eval.diagnostics.items()}})
            self.last_eval = {"images": acc.count, "reliability": acc.reliability(),
                              "networks": {role: a.reliability() for role, a in result.networks.items()
                                           if role != STUDENT}}
            if result.ensemble is not None:
                self.last_eval["ensemble"] = result.ensemble.reliability()
        return row

    def _network_columns(self) -> list[str]:
        """The log columns of the trainable networks besides the student: each one's top-1, NLL and ECE, the
        agreement and predictive KL of every pair, and the ensemble's figures (none for a single network)."""
        s, roles = self.split, [net.role for net in self.nets]
        if len(roles) == 1:
            return []
        columns = [f"{role}_{s}_{k}" for role in roles[1:] for k in ("top1", "nll", "ece")]
        columns += [f"{s}_{k}_{b}_{a}" for i, a in enumerate(roles) for b in roles[i + 1:] for k in ("agreement", "kl")]
        return columns + [f"ensemble_{s}_{k}" for k in ("top1", "nll", "ece")]

    def _network_figures(self, result: NetworkEvaluation) -> dict[str, float]:
        s, figures = self.split, {}
        for role, acc in result.networks.items():
            if role != STUDENT:
                figures |= {f"{role}_{s}_top1": acc.top1(), f"{role}_{s}_nll": acc.nll(), f"{role}_{s}_ece": acc.ece()}
        for (a, b), pair in result.pairs.items():
            figures |= {f"{s}_agreement_{b}_{a}": pair.agreement(), f"{s}_kl_{b}_{a}": pair.predictive_kl()}
        if result.ensemble is not None:
            e = result.ensemble
            figures |= {f"ensemble_{s}_top1": e.top1(), f"ensemble_{s}_nll": e.nll(), f"ensemble_{s}_ece": e.ece()}
        return figures

    def _teacher_metrics(self) -> dict[str, Any]:
        """The teachers' own figures on the evaluation split and where they came from (metrics.json)."""
        if not self.teachers:
            return {}
        s, final = self.split, self.history[-1]
        figures: dict[str, Any] = {f"{s}_agreement": final.get(f"{s}_agreement"),
                                   f"{s}_teacher_kl": final.get(f"{s}_teacher_kl"),
                                   "teachers": [source.to_dict() for source in self.teacher_sources]}
        if self.teacher_eval is not None:
            figures |= {f"teacher_{s}_{k}": v for k, v in self.teacher_eval.diagnostics.items()}
            if len(self.teachers) > 1:
                figures[f"teachers_{s}_top1"] = self.teacher_eval.per_teacher_top1
        return figures

    def _what_was_kept(self, diverged: bool = False) -> str:
        """The end of a failure's message: what stays in the run directory and what to do next. An
        attempt without a checkpoint removes what it wrote, so that a command can simply run again; a
        diverged run is marked, so that a rerun with other settings may move it aside."""
        out, again = self.out, "run again with other settings (e.g. a smaller --lr)" if diverged else "run again"
        if out is None:
            return "nothing was saved (no --out)"
        if self.saved_epoch == 0:
            if self.run is not None:
                self.run.discard_if_no_progress(keep_config=self.resuming)
            if self.resuming:
                return f"no epoch completed; {out} keeps its {rundir.CONFIG}, so `--resume` can {again}"
            return f"no epoch completed, so nothing was kept in {out}; the command can {again}"
        kept = f"the checkpoint of epoch {self.saved_epoch} in {out} is kept"
        if not diverged:
            return f"{kept}: `selfdistill train --out {out} --resume` continues from it"
        if self.run is not None:
            with contextlib.suppress(OutputError):
                self.run.write_json(rundir.DIVERGED, {"epoch": self.saved_epoch})
        return (f"{kept}: a new run with other settings (e.g. a smaller --lr) into the same --out moves this one "
                "aside into diverged-N/; --resume would retry with the same settings")

    def _save(self, epochs_done: int, wall_start: float, metrics: dict[str, Any] | None) -> None:
        """Checkpoint (rank 0 writes; every rank sends its method state), then log.csv."""
        method_states = gather_objects(_to_device(self.method.state_dict(), "cpu"), self.ctx)
        if self.run is None:
            self.saved_epoch = epochs_done if self.out is not None else 0  # rank 0 writes it
            return
        self.run.write_torch(rundir.CHECKPOINT, {
            "version": rundir.CHECKPOINT_VERSION, "epoch": epochs_done, "config": self.config.to_dict(),
            **self.student.state_dict(), "method": method_states,
            "networks": {net.role: net.state_dict() for net in self.nets[1:]},
            "history": self.history, "images_seen": self.images_seen, "train_seconds": self.train_seconds,
            "wall_seconds": self.previous_wall + time.perf_counter() - wall_start, "last_eval": self.last_eval,
            "metrics": metrics, "runtime": self.runtime,
            "teachers": [source.to_dict() for source in self.teacher_sources]})
        self.saved_epoch = epochs_done
        self.run.write_log(self.history)

    def _metrics(self, wall_start: float) -> dict[str, Any]:
        cfg, final, s = self.config, self.history[-1], self.split
        evaluated = [r for r in self.history if r[f"{s}_top1"] is not None]
        best = max(evaluated, key=lambda r: r[f"{s}_top1"])
        return {
            "method": self.method.name, "dataset": cfg.data.dataset, "model": cfg.model.name,
            "seed": cfg.train.seed, "epochs": cfg.train.epochs, "eval_split": s,
            f"{s}_top1": final[f"{s}_top1"], f"{s}_nll": final[f"{s}_nll"], f"{s}_ece": final[f"{s}_ece"],
            f"{s}_images": self.last_eval.get("images"),
            "train_top1": final["train_top1"], "train_images_seen": self.images_seen,
            "wall_s": self.previous_wall + time.perf_counter() - wall_start,
            "train_s": self.train_seconds, "images_per_s": self.images_seen / max(self.train_seconds, 1e-9),
            "steps_per_epoch": self.steps, "batch_size": cfg.data.batch_size, "label_noise": cfg.data.label_noise,
            "train_subset": cfg.data.train_subset, "parameters": count_parameters(self.model),
            "extra_parameters": count_parameters(self.extras), "peak_memory_mb": peak_memory_mb(self.device),
            "world_size": self.ctx.world_size, "device": str(self.device), "amp": self.precision.amp,
            "channels_last": self.precision.channels_last,
            f"best_epoch_selected_on_{s}": best["epoch"], f"best_{s}_top1_selected_on_{s}": best[f"{s}_top1"],
            "reliability": self.last_eval.get("reliability"), "code": code_version(), **self._teacher_metrics(),
            **self._networks_metrics(),
        }

    def _networks_metrics(self) -> dict[str, Any]:
        """The other trainable networks (metrics.json): their final figures under their role names, each
        one's architecture, size, reliability bins and weights file, and the ensemble's figures."""
        if len(self.nets) == 1:
            return {}
        final, s = self.history[-1], self.split
        reliability = self.last_eval.get("networks", {})
        networks = {net.role: {"model": net.arch, "parameters": count_parameters(net.model),
                               "weights": rundir.network_files(net.role)[0],
                               **{k: final.get(f"{net.role}_{s}_{k}") for k in ("top1", "nll", "ece")},
                               "reliability": reliability.get(net.role)} for net in self.nets[1:]}
        return {**{c: final.get(c) for c in self._network_columns()}, "networks": networks,
                "ensemble_reliability": self.last_eval.get("ensemble")}

    def _write_final_outputs(self, metrics: dict[str, Any]) -> None:
        """Each trainable network's weights and model card (``model.pt`` for the student, ``<role>.pt`` for
        the others, so each can be a ``--teacher``), then metrics.json: the completion marker is the last write."""
        if self.run is None:
            return
        d, cfg = self.data, self.config
        for net in self.nets:
            weights, card_name = rundir.network_files(net.role)
            # saved from the CPU: a plain torch.load opens it also on a machine without the GPU it trained on
            self.run.write_torch(weights, _to_device(net.model.state_dict(), "cpu"))
            path = self.run.path / weights
            card = ModelCard(model=net.arch, num_classes=d.num_classes, in_channels=d.in_channels,
                             image_size=self.image_size, pad_to=cfg.data.pad_to, mean=list(d.mean), std=list(d.std),
                             dataset=cfg.data.dataset, method=self.method.name, weights_sha256=weights_sha256(path))
            self.run.write(card_name, lambda _, path=path, card=card: write_model_card(path, card))
        (self.run.path / rundir.DIVERGED).unlink(missing_ok=True)  # a resumed run that had diverged is now done
        self.run.write_json(rundir.METRICS, metrics)

    def _complete_finished_run(self) -> dict[str, Any]:
        """``--resume`` of a run whose last epoch is checkpointed: write whatever final output is missing or
        does not match the checkpoint, ``metrics.json`` last."""
        saved = self.out / rundir.METRICS
        metrics = self.final_metrics
        if metrics is None:  # a checkpoint written before checkpoints carried the final metrics
            if not saved.is_file():
                raise UserError(f"--resume: {self.out} lacks {rundir.METRICS} and its checkpoint predates the final "
                                "metrics it would need to rebuild it")
            metrics = _read_json(saved)
        if self.run is None:
            return metrics
        note = self._sync_config_file()
        missing = self.run.missing_final_outputs([net.role for net in self.nets[1:]])
        if not missing and saved.is_file() and _read_json(saved) != metrics:
            missing = [rundir.METRICS]  # the metrics of an earlier end, e.g. of a run whose extension was undone
        if not missing:
            self.progress.say(f"selfdistill: {self.out} is already finished ({self.start_epoch} epochs); nothing to do"
                              + (f" | {note}" if note else ""))
            return metrics
        self.progress.say(f"selfdistill: {self.out} finished its {self.start_epoch} epochs; writing the missing or "
                          f"outdated {', '.join(missing)} from its final checkpoint" + (f" | {note}" if note else ""))
        saved.unlink(missing_ok=True)
        self.run.write_log(self.history)
        self._write_final_outputs(metrics)
        return metrics


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} cannot be read ({type(exc).__name__}); delete it and --resume rebuilds it") from None


def _describe(runtime: dict[str, Any]) -> str:
    parts = [runtime.get("device", "?"), "bf16" if runtime.get("amp") else "fp32"]
    parts += ["channels_last"] if runtime.get("channels_last") else []
    parts += [f"{runtime['threads']} threads"] if runtime.get("threads") else []
    return ", ".join(parts)


def resolve_saved_config(saved: dict[str, Any], where: Path) -> Config:
    """The config stored in a checkpoint, resolved; one that no longer resolves is a ``UserError``."""
    try:
        return resolve([saved])
    except UserError as exc:
        raise UserError(f"{where} holds a config this version cannot use ({exc})") from None


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


__all__ = ["Interrupted", "Trainer", "train"]
