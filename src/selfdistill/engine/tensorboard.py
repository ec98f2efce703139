"""TensorBoard scalars, one point per epoch, in the run directory itself (so ``tensorboard --logdir
runs/`` shows each run under its folder's name).

``train.tensorboard``: ``auto`` writes them when the ``tensorboard`` package is installed
(``pip install 'selfdistill[tensorboard]'``), ``true`` requires it, ``false`` never writes them.
A resumed run discards, at read time, the points a killed attempt wrote after its last checkpoint
(``purge_step``), so the curves show each epoch once.

TensorBoard's writer opens its event file by name at every flush (truncating it at the first), following
any symlink there, and names it by the second, the host name and the process id: a name that can be
guessed and a link planted at it in advance. So each writer's file name ends in a random suffix
(``events.out.tfevents.<time>.<host>.<pid>.<n>.<random>``, which TensorBoard reads like any event file).
"""

from __future__ import annotations

import importlib.util
import secrets
from pathlib import Path
from typing import Any

from ..errors import OutputError, UserError
from ..methods.base import STUDENT
from .outputs import TEACHER_FIGURES


def available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def wanted(setting: bool | str) -> bool:
    """Whether to write TensorBoard files; ``true`` without the package is a ``UserError``."""
    if setting is True and not available():
        raise UserError("train.tensorboard=true needs the tensorboard package: pip install 'selfdistill[tensorboard]' "
                        "(or set train.tensorboard=false)")
    return setting is True or (setting == "auto" and available())


class TensorBoardLog:
    """Per-epoch scalars: ``lr``, ``loss/<term>``, ``stats/<name>``, ``train/top1``, ``<split>/top1|nll|ece``,
    ``speed/images_per_s``; with frozen teachers the student's fidelity to them (``fidelity/<split>/agreement``,
    ``fidelity/<split>/teacher_kl``: KL(teacher ‖ student)) and the teachers' own figures
    (``teacher/<split>/top1|nll|ece|entropy|nontarget_entropy``); in an online run each other network's
    figures (``<role>/<split>/top1|nll|ece``), the ensemble's (``ensemble/<split>/...``) and each pair's
    agreement and KL (``pairs/<split>/agreement_<b>_<a>``, ``pairs/<split>/kl_<b>_<a>``: KL(b ‖ a))."""

    def __init__(self, folder: Path, first_epoch: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.folder = folder
        try:
            self.writer = SummaryWriter(log_dir=str(folder), purge_step=first_epoch + 1 if first_epoch else None,
                                        filename_suffix=f".{secrets.token_hex(8)}")
        except OSError as exc:
            raise OutputError(f"could not write TensorBoard files in {folder}: {exc.strerror or exc}") from None

    def log_epoch(self, row: dict[str, Any], terms: tuple[str, ...], split: str, stats: tuple[str, ...] = (),
                  roles: tuple[str, ...] = ()) -> None:
        """The epoch's scalars (see the class): loss terms, step statistics, the figures of the evaluation
        when the epoch had one, and each network's (``roles``: the trainable networks besides the student)."""
        epoch = row["epoch"]
        scalars = {"lr": row["lr"], **{f"loss/{t}": row[t] for t in terms}, **{f"stats/{n}": row[n] for n in stats},
                   "train/top1": row["train_top1"], "speed/images_per_s": row["images_per_s"]}
        columns = {f"{split}/{m}": f"{split}_{m}" for m in ("top1", "nll", "ece")}
        columns |= {f"fidelity/{split}/{m}": f"{split}_{m}" for m in ("agreement", "teacher_kl")}
        columns |= {f"teacher/{split}/{m}": f"teacher_{split}_{m}" for m in TEACHER_FIGURES}
        for role in (*roles, "ensemble") if roles else ():
            columns |= {f"{role}/{split}/{m}": f"{role}_{split}_{m}" for m in ("top1", "nll", "ece")}
        everyone = (STUDENT, *roles)  # log columns <metric>_<b>_<a>: b after a
        for i, a in enumerate(everyone):
            for b in everyone[i + 1:]:
                columns |= {f"pairs/{split}/{m}_{b}_{a}": f"{split}_{m}_{b}_{a}" for m in ("agreement", "kl")}
        scalars |= {tag: row[column] for tag, column in columns.items() if row.get(column) is not None}
        try:
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, epoch)
            self.writer.flush()
        except OSError as exc:
            raise OutputError(f"could not write TensorBoard files in {self.folder}: {exc.strerror or exc}") from None

    def close(self) -> None:
        try:
            self.writer.close()
        except OSError:
            pass  # the run's own outputs are already safe; a failed TensorBoard flush must not hide them
