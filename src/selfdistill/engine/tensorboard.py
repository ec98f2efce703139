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


def available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def wanted(setting: bool | str) -> bool:
    """Whether to write TensorBoard files; ``true`` without the package is a ``UserError``."""
    if setting is True and not available():
        raise UserError("train.tensorboard=true needs the tensorboard package: pip install 'selfdistill[tensorboard]' "
                        "(or set train.tensorboard=false)")
    return setting is True or (setting == "auto" and available())


class TensorBoardLog:
    """Per-epoch scalars: ``lr``, ``loss/<term>``, ``train/top1``, ``<split>/top1|nll|ece``, ``speed/images_per_s``."""

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
        """The epoch's scalars: loss terms, step statistics, and each network's figures (``roles``: the
        trainable networks besides the student; the ensemble's too when there are any)."""
        epoch = row["epoch"]
        scalars = {"lr": row["lr"], **{f"loss/{t}": row[t] for t in terms}, **{f"stats/{n}": row[n] for n in stats},
                   "train/top1": row["train_top1"], "speed/images_per_s": row["images_per_s"]}
        for metric in ("top1", "nll", "ece"):
            if row.get(f"{split}_{metric}") is not None:
                scalars[f"{split}/{metric}"] = row[f"{split}_{metric}"]
            for role in (*roles, "ensemble") if roles else ():
                if row.get(f"{role}_{split}_{metric}") is not None:
                    scalars[f"{role}/{split}/{metric}"] = row[f"{role}_{split}_{metric}"]
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
