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

The trainer is one class in three parts, by when they run: :class:`~.assemble.RunAssembly` builds the
run, :class:`~.loop.EpochLoop` trains an epoch, :class:`~.outputs.RunOutputs` evaluates and writes; this
file runs the epochs from start to end and turns a failure into one line saying what was kept.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from ..config import Config
from ..data import ImageDataset
from ..distributed import (
    agree_on_failure,
    as_peer_failure,
    init_distributed,
    leave_together,
    shutdown,
)
from ..errors import OutputError, PeerFailure, SelfdistillError, TrainingDiverged, UserError, one_line
from ..interrupts import stop_code, stop_words
from ..models import count_parameters
from . import rundir, tensorboard
from .assemble import RunAssembly
from .loop import EpochLoop
from .outputs import RunOutputs
from .runtime import describe_threads


class Interrupted(SelfdistillError):
    """Ctrl-C, SIGTERM or SIGHUP during training; the message says what was kept, the exit code is the
    signal's (:func:`~selfdistill.interrupts.stop_code`: 130, 143, 129)."""

    exit_code = 130

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Trainer(RunAssembly, EpochLoop, RunOutputs):
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
        if isinstance(exc, KeyboardInterrupt):  # Ctrl-C, or SIGTERM/SIGHUP (interrupts.Stopped)
            return Interrupted(f"{stop_words(exc)}; {self._what_was_kept()}", stop_code(exc))
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
        notes = "".join(f" | {n}" for n in [note, *self.method.notes(cfg.train.epochs)] if n)
        self.progress.say(
            f"selfdistill: {verb} | {self.method.name} on {cfg.data.dataset} with {self._trained_networks()}"
            f"{teachers} | {len(d.train_labels):,} train / {len(d.test_labels):,} {self.split} images | "
            f"{self.steps} steps/epoch x {cfg.train.epochs} epochs | "
            f"{self.device}{threads}{processes}{notes}")
        self._say_teachers_top1()  # right after the start line, before the first epoch

    def _trained_networks(self) -> str:
        """What the start line says is trained: the student's architecture and size or, when the method trains
        several networks (DML's peers, an online teacher), every one of them with its role, so that a run
        training three networks does not read as one."""
        sizes = [f"{net.arch} ({count_parameters(net.model):,} parameters)" for net in self.nets]
        if len(sizes) == 1:
            return sizes[0]
        return " + ".join(f"{net.role} {size}" for net, size in zip(self.nets, sizes))


def train(config: Config, out: str | Path | None = None, resume: bool = False) -> dict[str, Any]:
    """Train as ``config`` says; write the run directory to ``out`` (if given); return the metrics."""
    return Trainer(config, out, resume).fit()


__all__ = ["Interrupted", "Trainer", "train"]
