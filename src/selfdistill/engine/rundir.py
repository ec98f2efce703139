"""The run directory: one run's outputs, locked for the run's life, every file written atomically.

    .lock          held with ``flock`` by the process training here; a second run is refused (exit 2)
    config.yaml    the full resolved config, written first
    checkpoint.pt  everything needed to resume, rewritten after every epoch; the final one also holds
                   the final metrics, so any final output can be rebuilt from it
    log.csv        one row per epoch, rewritten after every checkpoint (never ahead of it)
    model.pt       the final weights (a plain ``state_dict``)
    model.json     the model card: what inference needs (architecture, classes, input, normalisation)
    metrics.json   the final summary, written LAST: it exists only when every other output does
    events.out.tfevents.*   TensorBoard scalars (when enabled)

Every write goes through :mod:`selfdistill.fileio` (random temporary name, fsync, rename, directory
fsync), so a crash, a kill or a full disk leaves either the old file or the new one, never half of
one, and nothing planted at a predictable name is followed. A failed write raises
:class:`~selfdistill.errors.OutputError` with one line naming the file and the system's reason.

A directory's state decides what a new run may do with it (see :meth:`RunDir.check_fresh`): empty,
or holding only the leftovers of a run that never completed an epoch (``config.yaml``, ``log.csv``,
TensorBoard files), it is used afresh; holding a checkpoint or a finished run, it needs ``--resume``;
holding anything else, it is refused.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import os
from pathlib import Path
from typing import Any

import torch

from .. import fileio
from ..errors import OutputError, UserError

LOCK = ".lock"
CONFIG = "config.yaml"
CHECKPOINT = "checkpoint.pt"
LOG = "log.csv"
MODEL = "model.pt"
MODEL_CARD = "model.json"
METRICS = "metrics.json"
FINAL_OUTPUTS = (LOG, MODEL, MODEL_CARD, METRICS)  # written in this order at the end; METRICS last
TENSORBOARD_PREFIX = "events.out.tfevents."
CHECKPOINT_VERSION = 1
# what a run that never finished an epoch may have left: safe to discard when starting afresh
NO_PROGRESS_FILES = (CONFIG, LOG)


def _is_run_file(name: str) -> bool:
    return name in (LOCK, CONFIG, CHECKPOINT, *FINAL_OUTPUTS) or name.startswith(TENSORBOARD_PREFIX)


class RunDir:
    """An exclusively locked run directory. Use :meth:`acquire`; :meth:`release` when the run ends."""

    def __init__(self, path: Path, lock_fd: int, created: bool) -> None:
        self.path, self._lock_fd, self.created = path, lock_fd, created

    # ------------------------------------------------------------------ locking
    @classmethod
    def acquire(cls, path: str | Path) -> RunDir:
        """Create ``path`` if needed and lock it; another live run there, or an unusable path, is a
        ``UserError``. Temporary files a killed run left behind are removed."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise UserError(f"--out {path} exists and is not a directory")
        created = not path.exists()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"--out {path} cannot be created ({exc.strerror or exc})") from None
        try:
            fd = _lock(path / LOCK)
        except BaseException:
            if created:
                with contextlib.suppress(OSError):
                    path.rmdir()
            raise
        run = cls(path, fd, created)
        for stale in fileio.stale_temporaries(path):
            stale.unlink(missing_ok=True)
        return run

    def release(self) -> None:
        """Remove the lock file and unlock (safe against a racing run: see :func:`_lock`)."""
        if self._lock_fd < 0:
            return
        with contextlib.suppress(OSError):
            (self.path / LOCK).unlink()
        os.close(self._lock_fd)
        self._lock_fd = -1

    def discard_if_no_progress(self) -> bool:
        """After a failure: if no checkpoint exists, remove what this run wrote (and the directory if this
        run created it and it is now empty), so that a rerun can use the same ``--out``. True if done."""
        if (self.path / CHECKPOINT).exists():
            return False
        for name in NO_PROGRESS_FILES:
            (self.path / name).unlink(missing_ok=True)
        for event_file in self.path.glob(TENSORBOARD_PREFIX + "*"):
            event_file.unlink(missing_ok=True)
        self.release()
        if self.created:
            with contextlib.suppress(OSError):
                self.path.rmdir()
        return True

    # ------------------------------------------------------------------ state
    def check_fresh(self) -> list[str]:
        """Make sure a new run may start here. Returns the leftovers it will replace (a run that never
        completed an epoch); refuses a directory that holds a checkpoint, a finished run or foreign files."""
        names = sorted(p.name for p in self.path.iterdir() if p.name != LOCK)
        foreign = [n for n in names if not _is_run_file(n)]
        if foreign:
            raise UserError(f"--out {self.path} already holds files that are not a selfdistill run ({foreign[0]}"
                            f"{', ...' if len(foreign) > 1 else ''}); choose a new --out")
        if METRICS in names:
            raise UserError(f"--out {self.path} already holds a finished run; choose a new --out (or extend it with "
                            "--resume --epochs N)")
        progress = [n for n in (CHECKPOINT, MODEL, MODEL_CARD) if n in names]
        if progress:
            raise UserError(f"--out {self.path} already holds an unfinished run ({progress[0]}); pass --resume to "
                            "continue it, or choose a new --out")
        return names

    def discard_leftovers(self) -> None:
        """Remove what a run that never completed an epoch left (only called after :meth:`check_fresh`)."""
        for name in self.check_fresh():
            (self.path / name).unlink(missing_ok=True)

    def missing_final_outputs(self) -> list[str]:
        return [name for name in FINAL_OUTPUTS if not (self.path / name).is_file()]

    # ------------------------------------------------------------------ writing
    def write_text(self, name: str, text: str) -> None:
        self._write(name, lambda path: fileio.atomic_write_text(path, text))

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        self._write(name, lambda path: fileio.atomic_write_json(path, data))

    def write_torch(self, name: str, obj: Any) -> None:
        self._write(name, lambda path: fileio.atomic_torch_save(path, obj))

    def write_log(self, rows: list[dict[str, Any]]) -> None:
        """Rewrite log.csv from all epoch rows (columns from the first row, in order)."""
        if rows:
            self.write_text(LOG, format_log(rows))

    def _write(self, name: str, write: Any) -> None:
        path = self.path / name
        try:
            write(path)
        except OSError as exc:
            raise OutputError(f"could not write {path}: {exc.strerror or exc}") from None


def format_log(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return out.getvalue()


def _lock(lock_path: Path) -> int:
    """Open and ``flock`` the lock file; return its descriptor. The lock file may be removed by a run
    that ends while we open it, so after locking we check that the path still names the file we hold,
    and start over if not."""
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UserError(f"--out {lock_path.parent}: {lock_path.name} is a symbolic link; remove it") from None
            raise UserError(f"--out {lock_path.parent} is not writable ({exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise UserError(f"--out {lock_path.parent} is in use by another run{holder}; wait for it to end or "
                                "choose a new --out") from None
            raise UserError(f"--out {lock_path.parent}: cannot lock {lock_path.name} ({exc.strerror or exc})") from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock_path, follow_symlinks=False))
        except FileNotFoundError:
            same = False
        if same:
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            except OSError as exc:
                os.close(fd)
                raise UserError(f"--out {lock_path.parent} is not writable ({exc.strerror or exc})") from None
            return fd
        os.close(fd)


def _read_pid(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return f" (process {pid})" if pid.isdigit() else ""


def load_checkpoint(out: Path) -> dict[str, Any] | None:
    """The checkpoint in ``out``, or None if there is none; one that cannot be read is a ``UserError``."""
    path = out / CHECKPOINT
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say so in one line
        raise UserError(f"{path} cannot be loaded as a checkpoint ({type(exc).__name__}); it is damaged or not "
                        "selfdistill's: move it away to start afresh") from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise UserError(f"{path} is not a selfdistill checkpoint of version {CHECKPOINT_VERSION}")
    return state
