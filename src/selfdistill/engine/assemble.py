"""Assembling a run from its config: the run directory's lock, the device and precision, the data, the
student, the method's other networks and the frozen teachers (each probed with two training images, so
that a shape the model cannot take ends with one line before anything trains), and on ``--resume`` the
checkpoint's state after checking that this config continues the saved run.

:class:`RunAssembly` is one of the three parts of :class:`~.trainer.Trainer`, grouped by when they run:
assembly (here), the epoch loop (:mod:`.loop`) and the outputs (:mod:`.outputs`). They share the
trainer's state (``self.config``, ``self.nets``, ...), which the assembly creates.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import torch
import torch.nn as nn

from ..data import Augment, ImageDataset, load_dataset
from ..data.mixing import Mixer
from ..errors import UserError, one_line
from ..methods import build_method
from ..methods.base import ROLE_PATTERN, STUDENT, NetworkSpec, SetupContext
from ..models import build_model
from ..models.teachers import DataShape, TeacherSpec, check_unchanged, load_teacher, teacher_roles
from . import rundir, tensorboard
from .evaluate import TeacherPredictions
from .networks import FrozenNetwork, TrainableNetwork
from .progress import Progress
from .resume import check_resume
from .runtime import Precision, configure_torch, derive_seed, resolve_device, to_device
from .teacher_checks import check_trained_on
from .validate import resolve, resolve_saved_config


class RunAssembly:
    """Builds everything a run needs from its config (the first part of :class:`~.trainer.Trainer`)."""

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
        model = build_model(cfg.model.name, d.num_classes, d.in_channels, self.image_size, cfg.model.options)
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
        initial weights; each is probed with two training images like the student. A network of the student's
        architecture gets the student's ``model.options`` (a DML peer "like the student" is like it)."""
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
                same = spec.model == cfg.model.name  # a network like the student's takes the student's options
                module = build_model(spec.model, d.num_classes, d.in_channels, self.image_size,
                                     cfg.model.options if same else None)
            module = self.precision.model(module).to(self.device)
            self._probe(module, f"the {spec.role} network ({spec.model})")
            networks[spec.role] = (spec.model, module)
        unknown = sorted(set(cfg.roles) - {STUDENT, *networks})
        if unknown:
            role, has = unknown[0], ", ".join([STUDENT, *networks])
            if role == "ensemble":
                why = ("'ensemble' is not a network but the averaged predictions of an online run's networks (its "
                       "ensemble_* figures), so it has no optimiser or schedule")
            elif role in taken:
                why = f"the {role} network is frozen (a --teacher), so it has no optimiser or schedule"
            else:
                why = f"method {self.method.name} has no network of that role"
            raise UserError(f"roles.{role}: {why}; the roles that take settings: {has}")
        return networks

    def _build_teachers(self) -> list[FrozenNetwork]:
        """Load, check and place the frozen teachers; probe each with two training images."""
        cfg, d = self.config, self.data
        shape = DataShape(d.num_classes, d.in_channels, self.image_size, list(d.mean), list(d.std))
        loaded = [load_teacher(TeacherSpec(**entry), shape, f"teachers[{k}]") for k, entry in enumerate(cfg.teachers)]
        check_trained_on(loaded, d.name, cfg.data.teacher_dataset_check)
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
            self.method.load_state_dict(to_device(state["method"][self.ctx.rank], self.device))
            self.history = list(state["history"])
            self.start_epoch = self.saved_epoch = int(state["epoch"])
            self.images_seen, self.train_seconds = int(state["images_seen"]), float(state["train_seconds"])
            self.previous_wall = float(state["wall_seconds"])
            self.last_eval = dict(state.get("last_eval") or {})
            self.final_metrics = state.get("metrics")
        except (KeyError, RuntimeError, ValueError, TypeError, IndexError, AttributeError) as exc:
            raise UserError(f"--resume: {where} does not fit this run ({type(exc).__name__}: "
                            f"{one_line(exc)[:160]}); it belongs to another model or is damaged") from None


def _describe(runtime: dict[str, Any]) -> str:
    parts = [runtime.get("device", "?"), "bf16" if runtime.get("amp") else "fp32"]
    parts += ["channels_last"] if runtime.get("channels_last") else []
    parts += [f"{runtime['threads']} threads"] if runtime.get("threads") else []
    return ", ".join(parts)
