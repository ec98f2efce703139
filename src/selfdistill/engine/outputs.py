"""What a run leaves behind: the evaluation after an epoch and its row of ``log.csv``, the checkpoint,
the final metrics, each trainable network's weights and model card, and what a failed run keeps.

Nothing lost: the final checkpoint holds the final metrics, and the final outputs are written after it
with ``metrics.json`` last, so a run is finished exactly when ``metrics.json`` exists, and ``--resume``
rebuilds any final output that is missing, damaged (a truncated ``peer1.pt``) or outdated.
"""

from __future__ import annotations

import contextlib
import json
import math
import resource
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from .. import __version__, fileio
from ..config import differences, read_yaml_file
from ..distributed import (
    gather_objects,
)
from ..errors import OutputError, TrainingDiverged, UserError
from ..methods.base import STUDENT
from ..models import count_parameters
from ..models.card import ModelCard, weights_sha256, write_model_card
from . import rundir
from .evaluate import NetworkEvaluation, TeacherPredictions, evaluate_networks, teacher_predictions
from .loop import EpochResult
from .runtime import to_device
from .teacher_checks import chance_warnings
from .validate import resolve

TEACHER_FIGURES = ("top1", "nll", "ece", "entropy", "nontarget_entropy")  # TeacherDiagnostics.summary()


class RunOutputs:
    """Evaluates, logs and writes the run directory (the third part of :class:`~.trainer.Trainer`)."""

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
            self._measure_teachers()
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

    def _measure_teachers(self) -> TeacherPredictions | None:
        """The teachers' predictions on the evaluation split (None without teachers), made once: they are frozen."""
        if self.teachers and self.teacher_eval is None:
            cfg, d = self.config, self.data
            self.teacher_eval = teacher_predictions([t.logits for t in self.teachers], d.test_images, d.test_labels,
                                                    d.num_classes, self.augment, cfg.data.eval_batch_size,
                                                    self.precision, self.ctx)
        return self.teacher_eval

    def _say_teachers_top1(self) -> None:
        """One line with each teacher's own top-1 on the evaluation split (measured on every rank: the figures
        are summed across processes), and a warning for each that is no better than chance."""
        measured = self._measure_teachers()
        if measured is None:
            return
        d, s, top1 = self.data, self.split, measured.per_teacher_top1
        described = [f"{t.role} {src.model} ({src.path})" for t, src in zip(self.teachers, self.teacher_sources)]
        self.progress.say(" | ".join(f"{what}: {s} top-1 {score:.2f}%" for what, score in zip(described, top1)))
        for line in chance_warnings(described, top1, d.num_classes, len(d.test_labels), s):
            self.progress.warn(line)

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
        method_states = gather_objects(to_device(self.method.state_dict(), "cpu"), self.ctx)
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
        for net in self.nets:
            weights, card_name = rundir.network_files(net.role)
            # saved from the CPU: a plain torch.load opens it also on a machine without the GPU it trained on
            self.run.write_torch(weights, to_device(net.model.state_dict(), "cpu"))
            path = self.run.path / weights
            card = self._model_card(net, path)
            self.run.write(card_name, lambda _, path=path, card=card: write_model_card(path, card))
        (self.run.path / rundir.DIVERGED).unlink(missing_ok=True)  # a resumed run that had diverged is now done
        self.run.write_json(rundir.METRICS, metrics)

    def _model_card(self, net: Any, weights: Path) -> ModelCard:
        """The model card of network ``net`` whose weights are the file ``weights``."""
        d, cfg = self.data, self.config
        return ModelCard(model=net.arch, num_classes=d.num_classes, in_channels=d.in_channels,
                         image_size=self.image_size, pad_to=cfg.data.pad_to, mean=list(d.mean), std=list(d.std),
                         dataset=cfg.data.dataset, method=self.method.name, weights_sha256=weights_sha256(weights),
                         options=dict(getattr(net.model, "arch_options", {})),  # build_model records them
                         class_names=list(d.class_names) if d.class_names else None)

    def _damaged_final_outputs(self, metrics: dict[str, Any]) -> list[str]:
        """The final outputs that are missing or do not hold what the final checkpoint says (a truncated
        ``peer1.pt``, an edited ``model.json``, a ``metrics.json`` of an earlier end), in the order written."""
        assert self.run is not None
        path, damaged = self.run.path, []
        if _read(path / rundir.LOG, fileio.LONG_TEXT_LIMIT) != rundir.format_log(self.history).encode():
            damaged.append(rundir.LOG)
        for net in self.nets:
            weights, card_name = rundir.network_files(net.role)
            if not _holds_weights(path / weights, net.model.state_dict()):
                damaged += [weights, card_name]  # the card names the weights' SHA-256: rewritten with them
            elif _read_json_or_none(path / card_name) != self._model_card(net, path / weights).to_dict():
                damaged.append(card_name)
        if _read_json_or_none(path / rundir.METRICS) != json.loads(json.dumps(metrics)):
            damaged.append(rundir.METRICS)
        return damaged

    def _complete_finished_run(self) -> dict[str, Any]:
        """``--resume`` of a run whose last epoch is checkpointed: write whatever final output is missing or
        does not hold what the checkpoint says (damaged, outdated), ``metrics.json`` last."""
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
        # missing, damaged, or outdated (the metrics of an earlier end, e.g. of a run whose extension was undone)
        damaged = self._damaged_final_outputs(metrics)
        if not damaged:
            self.progress.say(f"selfdistill: {self.out} is already finished ({self.start_epoch} epochs); nothing to do"
                              + (f" | {note}" if note else ""))
            return metrics
        self.progress.say(f"selfdistill: {self.out} finished its {self.start_epoch} epochs; writing the missing, "
                          f"damaged or outdated {', '.join(damaged)} from its final checkpoint"
                          + (f" | {note}" if note else ""))
        saved.unlink(missing_ok=True)
        self.run.write_log(self.history)
        self._write_final_outputs(metrics)
        return metrics

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


def _read_json(path: Path) -> Any:
    try:
        return json.loads(fileio.read_small_file(path, str(path)).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} cannot be read ({type(exc).__name__}); delete it and --resume rebuilds it") from None


def _read(path: Path, limit: int = fileio.METADATA_LIMIT) -> bytes | None:
    """The bytes of the regular file ``path``, or None where it is missing, unreadable or oversized."""
    try:
        return fileio.read_small_file(path, str(path), limit)
    except (UserError, OSError):
        return None


def _read_json_or_none(path: Path) -> Any:
    """The JSON in ``path``, or None where it is missing or damaged."""
    raw = _read(path)
    try:
        return None if raw is None else json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def _holds_weights(path: Path, state: dict[str, torch.Tensor]) -> bool:
    """Whether the weights file ``path`` opens and holds exactly the tensors of ``state``."""
    try:
        with fileio.open_regular(path, str(path)) as handle:
            saved = torch.load(handle, map_location="cpu", weights_only=True)
    except Exception:  # missing, truncated, not a weights file: anything but the file it should be
        return False
    return (isinstance(saved, dict) and saved.keys() == state.keys()
            and all(isinstance(saved[k], torch.Tensor) and saved[k].dtype == v.dtype and saved[k].shape == v.shape
                    and torch.equal(saved[k], v.detach().cpu()) for k, v in state.items()))


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
