"""The run directory: one run's outputs, locked for the run's life, every file written atomically.

    .lock          held with ``flock`` by the process training here; a second run is refused (exit 2)
    config.yaml    the full resolved config (the checkpoint's copy is the authority on resume)
    checkpoint.pt  everything needed to resume, rewritten after every epoch; the final one also holds
                   the final metrics, so any final output can be rebuilt from it
    log.csv        one row per epoch, rewritten after every checkpoint (never ahead of it)
    model.pt       the final weights (a plain ``state_dict``)
    model.json     the model card: what inference needs (architecture, classes, input, normalisation)
    <role>.pt, <role>.json   the same for each further trainable network of an online method (peer1, teacher, ...)
    metrics.json   the final summary, written LAST: it exists only when every other output does
    diverged.json  present while the last attempt stopped because the run diverged
    diverged-N/    an earlier, diverged run, moved aside by a rerun into the same ``--out``
    events.out.tfevents.*   TensorBoard scalars (when enabled; appended to by TensorBoard's writer)

Every other write goes through :mod:`selfdistill.fileio` (random temporary name, fsync, rename,
directory fsync), so a crash, a kill or a full disk leaves either the old file or the new one, never
half of one, and nothing planted at a predictable name is followed. A failed write raises
:class:`~selfdistill.errors.OutputError` with one line naming the file and the system's reason.

What a new run may do with an existing directory (:meth:`RunDir.check_fresh`): use it when it is
empty or holds only the leftovers of a run that never completed an epoch; move a diverged run aside
into ``diverged-N/``; refuse a checkpoint or a finished run (``--resume`` continues or extends
those) and refuse, before touching anything, a directory holding files that are not a run's.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import math
import os
import re
from pathlib import Path
from typing import Any, Callable

import torch

from .. import fileio
from ..config import read_yaml_file
from ..errors import OutputError, UserError
from .resume import can_extend

LOCK = ".lock"
CONFIG = "config.yaml"
CHECKPOINT = "checkpoint.pt"
LOG = "log.csv"
MODEL = "model.pt"
MODEL_CARD = "model.json"
METRICS = "metrics.json"
DIVERGED = "diverged.json"
FINAL_OUTPUTS = (MODEL, MODEL_CARD, METRICS)  # written in this order after the final checkpoint; METRICS last
RUN_FILES = (CONFIG, CHECKPOINT, LOG, *FINAL_OUTPUTS, DIVERGED)
TENSORBOARD_PREFIX = "events.out.tfevents."
ARCHIVE = re.compile(r"^diverged-\d+$")
CHECKPOINT_VERSION = 1
NO_PROGRESS_FILES = (CONFIG, LOG)  # what a run that never finished an epoch may have left


NETWORK_FILE = re.compile(r"^[a-z][a-z0-9]*\.(pt|json)$")  # <role>.pt and <role>.json of an online method's networks


def network_files(role: str) -> tuple[str, str]:
    """The weights file and model card of a trainable network: the student's are model.pt and model.json."""
    return (MODEL, MODEL_CARD) if role == "student" else (f"{role}.pt", f"{role}.json")


def _is_run_file(name: str) -> bool:
    return (name in (LOCK, *RUN_FILES) or name.startswith(TENSORBOARD_PREFIX) or _is_our_temporary(name)
            or ARCHIVE.match(name) is not None or NETWORK_FILE.match(name) is not None)


def _is_our_temporary(name: str) -> bool:
    target = fileio.temporary_target(name)
    return target in RUN_FILES or (target is not None and NETWORK_FILE.match(target) is not None)


def _refuse_foreign(path: Path) -> None:
    foreign = sorted(p.name for p in path.iterdir() if not _is_run_file(p.name))
    if foreign:
        raise UserError(f"--out {path} already holds files that are not a selfdistill run ({foreign[0]}"
                        f"{', ...' if len(foreign) > 1 else ''}); choose a new --out")


class RunDir:
    """An exclusively locked run directory. Use :meth:`acquire`; :meth:`release` when the run ends."""

    def __init__(self, path: Path, lock_fd: int, created: list[Path], created_lock: bool) -> None:
        self.path, self._lock_fd, self.created, self.created_lock = path, lock_fd, created, created_lock

    # ------------------------------------------------------------------ locking
    @classmethod
    def acquire(cls, path: str | Path, fresh: bool) -> RunDir:
        """Create ``path`` (and missing parents) if needed and lock it. Another live run there, an unusable
        path or, for a ``fresh`` run, a folder with files that are not a run's is a ``UserError``, and
        then nothing has been created or changed. Temporary files a killed run left are removed."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise UserError(f"--out {path} exists and is not a directory")
        if fresh and path.is_dir():
            _refuse_foreign(path)
        created = [p for p in (path, *path.parents) if not p.exists()]  # innermost first
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            _remove_empty(created)
            raise UserError(f"--out {path} cannot be created ({exc.strerror or exc})") from None
        try:
            fd, created_lock = _lock(path / LOCK)
        except BaseException:
            _remove_empty(created)
            raise
        for stale in path.iterdir():
            if _is_our_temporary(stale.name) and stale.is_file() and not stale.is_symlink():
                stale.unlink(missing_ok=True)
        return cls(path, fd, created, created_lock)

    def release(self) -> None:
        """Remove the lock file and unlock (safe against a racing run: see :func:`_lock`)."""
        if self._lock_fd < 0:
            return
        with contextlib.suppress(OSError):
            (self.path / LOCK).unlink()
        os.close(self._lock_fd)
        self._lock_fd = -1

    def abandon(self) -> None:
        """Undo :meth:`acquire` after a refusal: unlock, and remove the lock file and the folders only if
        this run created them."""
        if self._lock_fd >= 0:
            if self.created_lock:
                with contextlib.suppress(OSError):
                    (self.path / LOCK).unlink()
            os.close(self._lock_fd)
            self._lock_fd = -1
        _remove_empty(self.created)

    def discard_if_no_progress(self, keep_config: bool) -> bool:
        """After a failure: if no checkpoint exists, remove what this attempt wrote (its ``config.yaml``
        too unless ``keep_config``, and the folders it created), so that the same command can run again.
        True if there was no checkpoint."""
        if (self.path / CHECKPOINT).exists():
            return False
        for name in NO_PROGRESS_FILES:
            if name != CONFIG or not keep_config:
                (self.path / name).unlink(missing_ok=True)
        for event_file in self.path.glob(TENSORBOARD_PREFIX + "*"):
            event_file.unlink(missing_ok=True)
        self.release()
        _remove_empty(self.created)
        return True

    # ------------------------------------------------------------------ state
    def check_fresh(self) -> list[str]:
        """Make sure a new run may start here; return what it will clear away first: the leftovers of a
        run that never completed an epoch, or a diverged run (moved to ``diverged-N/``)."""
        _refuse_foreign(self.path)
        names = sorted(p.name for p in self.path.iterdir() if p.name != LOCK and not ARCHIVE.match(p.name))
        if DIVERGED in names:
            return names
        if METRICS in names:
            raise UserError(f"--out {self.path} already holds a finished run; choose a new --out{self._extension()}")
        progress = [n for n in names if n in (CHECKPOINT, MODEL, MODEL_CARD) or NETWORK_FILE.match(n)]
        if progress:
            raise UserError(f"--out {self.path} already holds an unfinished run ({progress[0]}); continue it with "
                            "selfdistill train --resume, or choose a new --out")
        return names

    def _extension(self) -> str:
        """The ``--resume --epochs N`` hint for a finished run, only where it would be accepted."""
        try:
            saved = read_yaml_file(self.path / CONFIG, CONFIG)
        except UserError:
            return ""
        if not can_extend(saved):
            return ""
        return f" (or extend the run: selfdistill train --out {self.path} --resume --epochs N)"

    def clear_for_fresh_run(self) -> str:
        """Remove a no-progress run's leftovers, or move a diverged run into ``diverged-N/``; return a note
        for the start line ("" when there was nothing)."""
        names = self.check_fresh()
        if not names:
            return ""
        if DIVERGED not in names:
            for name in names:
                (self.path / name).unlink(missing_ok=True)
            return f"replacing the files of a run that never completed an epoch: {', '.join(names)}"
        number = 1 + max((int(p.name.split("-")[1]) for p in self.path.iterdir() if ARCHIVE.match(p.name)), default=0)
        archive = self.path / f"diverged-{number}"
        try:
            archive.mkdir()
            for name in names:
                os.replace(self.path / name, archive / name)
        except OSError as exc:
            raise OutputError(f"could not move the diverged run in {self.path} aside: {exc.strerror or exc}") from None
        fileio.fsync_dir(self.path)
        return f"the diverged run that was here is kept in {archive}"

    # ------------------------------------------------------------------ writing
    def write_text(self, name: str, text: str) -> None:
        self.write(name, lambda path: fileio.atomic_write_text(path, text))

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        self.write(name, lambda path: fileio.atomic_write_json(path, data))

    def write_torch(self, name: str, obj: Any) -> None:
        self.write(name, lambda path: fileio.atomic_torch_save(path, obj))

    def write_log(self, rows: list[dict[str, Any]]) -> None:
        """Rewrite log.csv from all epoch rows."""
        if rows:
            self.write_text(LOG, format_log(rows))

    def write(self, name: str, write: Callable[[Path], None]) -> None:
        """Run ``write(path of name)``; a failed write is an ``OutputError`` naming the file."""
        path = self.path / name
        try:
            write(path)
        except OSError as exc:
            raise OutputError(f"could not write {path}: {exc.strerror or exc}") from None


def _remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (innermost first) where they are empty; leave any that is not."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def format_log(rows: list[dict[str, Any]]) -> str:
    """CSV text of the epoch rows; the columns are every key in order of first appearance."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(dict.fromkeys(k for row in rows for k in row)), restval="",
                            lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return out.getvalue()


def _lock(lock_path: Path) -> tuple[int, bool]:
    """Open (or create) and ``flock`` the lock file; return its descriptor and whether it was created.
    The lock file may be removed by a run that ends while we open it, so after locking we check that
    the path still names the file we hold, and start over if not."""
    while True:
        created = True
        try:
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            except FileExistsError:
                created = False
                fd = os.open(lock_path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # removed between the two opens by a run that ended: try again
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
        if not same:
            os.close(fd)
            continue
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as exc:
            os.close(fd)
            raise UserError(f"--out {lock_path.parent} is not writable ({exc.strerror or exc})") from None
        return fd, created


def _read_pid(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return f" (process {pid})" if pid.isdigit() else ""


# ----------------------------------------------------------------------------- checkpoints
def resume_point(out: Path, mmap: bool = False) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """What ``--resume`` continues in ``out``: the saved config (unresolved) and the checkpoint. The
    checkpoint's config is the authority (``config.yaml`` may be missing, stale or edited); without a
    checkpoint, ``config.yaml`` is, and training starts from epoch 0. ``mmap`` leaves the tensors on
    disk, for a caller that only wants the config."""
    state = load_checkpoint(out, mmap)
    if state is not None:
        return state["config"], state
    finals = [name for name in FINAL_OUTPUTS if (out / name).exists()]
    if finals:
        raise UserError(f"--resume: {out} holds {finals[0]} but no {CHECKPOINT} to continue from; to train this "
                        "run again, choose a new --out")
    saved = out / CONFIG
    if not saved.exists():
        raise UserError(f"--resume: nothing to resume in {out} (no {CONFIG})")
    return read_yaml_file(saved, str(saved)), None


def load_checkpoint(out: Path, mmap: bool = False) -> dict[str, Any] | None:
    """The checkpoint in ``out``, checked; None if there is none. One that cannot be read, or that lacks
    or mistypes anything a resume needs, is a ``UserError`` naming the first problem."""
    path = out / CHECKPOINT
    if not path.exists():
        return None
    # what to do: a finished run's final outputs stand without the checkpoint, which only resumes or rebuilds them
    advice = (f"the finished run's {MODEL} and {METRICS} stand on their own, but --resume cannot check, rebuild or "
              "extend them without it; to train this run again, choose a new --out" if (out / METRICS).is_file()
              else "move it away to start afresh")
    with fileio.open_regular(path, str(path)) as handle:  # a FIFO or device there is refused, not read
        try:  # mmap maps the file by its name (the open handle has shown it a regular file)
            state = torch.load(path if mmap else handle, map_location="cpu", weights_only=True, mmap=mmap)
        except Exception as exc:  # a truncated or foreign file: say so in one line
            raise UserError(f"{path} cannot be loaded as a checkpoint ({type(exc).__name__}); it is damaged or not "
                            f"selfdistill's: {advice}") from None
    problem = checkpoint_problem(state)
    if problem:
        raise UserError(f"{path} is damaged or not a selfdistill checkpoint of version {CHECKPOINT_VERSION}: "
                        f"{problem}; {advice}")
    return state


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def checkpoint_problem(state: Any) -> str:
    """What is wrong with a loaded checkpoint ("" if nothing): its version and the type of every field
    a resume reads. Whether the weights fit the model is checked when they are loaded into it."""
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}, not a mapping"
    if state.get("version") != CHECKPOINT_VERSION:
        return f"version {state.get('version')!r}"
    checks = {"epoch": _is_int, "config": lambda v: isinstance(v, dict), "model": lambda v: isinstance(v, dict),
              "extras": lambda v: isinstance(v, dict), "optimizer": lambda v: isinstance(v, dict),
              "method": lambda v: isinstance(v, list) and all(isinstance(m, dict) for m in v),
              "history": lambda v: isinstance(v, list), "images_seen": _is_int, "train_seconds": _is_number,
              "wall_seconds": _is_number}
    optional = {"last_eval": lambda v: isinstance(v, dict), "metrics": lambda v: v is None or isinstance(v, dict),
                "runtime": lambda v: isinstance(v, dict)}
    for key, check in checks.items():
        if key not in state:
            return f"it lacks '{key}'"
        if not check(state[key]):
            return f"'{key}' is a {type(state[key]).__name__} of the wrong kind"
    for key, check in optional.items():
        if key in state and not check(state[key]):
            return f"'{key}' is a {type(state[key]).__name__} of the wrong kind"
    if state["epoch"] < 0 or len(state["history"]) != state["epoch"]:
        return f"{len(state['history'])} log rows for epoch {state['epoch']}"
    for number, row in enumerate(state["history"], 1):
        if not (isinstance(row, dict) and row.get("epoch") == number and _is_number(row.get("lr"))
                and _is_number(row.get("train_top1"))):
            return f"log row {number} is not the row of epoch {number}"
    return ""
