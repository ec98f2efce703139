"""Files written so that a crash, a full disk or a planted symlink can never leave a half-written or
misdirected file.

Every write goes to a fresh temporary file in the target's own directory, created by
:func:`tempfile.mkstemp` (``O_CREAT | O_EXCL``, a random name, so nothing planted at a predictable name
is followed or overwritten), is flushed and fsynced, and is then renamed over the target. A rename
replaces a symlink at the target itself, never the file it points to. The directory is fsynced after
the rename so the new name survives a power cut. On any error or interruption the temporary file is
removed and the target keeps its previous content; the error (``OSError`` for a full disk) propagates
for the caller to report.

Temporary files are named ``.<target name>.<random>.tmp``; :func:`temporary_target` recognises the
ones a killed process left behind. An output folder at a predictable name is created or reused only when it
is a folder itself, never through a symlink (:func:`make_output_folder`).

Reading: every input file is opened by :func:`open_regular`, which refuses anything but a regular file (a
FIFO would block forever, a device like ``/dev/zero`` never ends), and metadata files are read whole by
:func:`read_small_file`, which also refuses a file larger than any such file of ours could be.
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

from .errors import UserError

TEMPORARY = re.compile(r"^\.(.+)\.[A-Za-z0-9_]{6,}\.tmp$")
# The most read of a metadata file: a link to /dev/zero, or a huge file, in its place would otherwise be read
# until memory runs out. Ours are far smaller: a model card, metrics.json or config holds a few KB (per-class
# figures of 1000 classes included), log.csv one row of well under 1 KB per epoch.
METADATA_LIMIT = 4 << 20  # model.json, metrics.json, config.yaml, YAML configs
LONG_TEXT_LIMIT = 64 << 20  # log.csv, checksum manifests
FILE_KINDS = ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISCHR, "character device"),
              (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"))


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells it (``/proc/self/status``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (a moment in which new files get 0o022)
    os.umask(mask)
    return mask


# mkstemp creates files readable by their owner only; a finished file gets the usual permissions instead
FILE_MODE = 0o666 & ~_umask()


def _write_chunk(fd: int, chunk: memoryview) -> int:
    """One ``write(2)``; the single place where bytes reach a file (fault-injection tests patch it)."""
    return os.write(fd, chunk)


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems do not support fsync on directories
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (see the module docstring)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        view = memoryview(data)
        while view:
            view = view[_write_chunk(fd, view[: 1 << 24]):]
        os.fchmod(fd, FILE_MODE)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    """``torch.save`` through :func:`atomic_write_bytes`."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getbuffer())


def temporary_target(name: str) -> str | None:
    """The name of the file that a temporary of :func:`atomic_write_bytes` called ``name`` was to replace;
    None if ``name`` is not such a temporary."""
    match = TEMPORARY.match(name)
    return match.group(1) if match else None


def unused_path(base: str | Path) -> Path:
    """``base``, or ``base-2``, ``base-3``, ... : the first that does not exist yet."""
    base = Path(base)
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def make_output_folder(path: Path, what: str) -> None:
    """Create the folder ``path`` (and missing parents), or reuse it where it is a folder already. A symlink
    at ``path`` itself is refused (a ``UserError`` naming ``what``): output folders have predictable names
    (``RUN/eval-mnist-test``, ``RUN/report``), and one planted as a link would send the files wherever it
    points. Other failures are the ``OSError`` of ``mkdir``."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        path.mkdir(parents=True, exist_ok=True)
        info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        raise UserError(f"{what} {path} is a symbolic link, which output is never written through; remove the "
                        "link, or give the folder it points to as --out")
    if not stat.S_ISDIR(info.st_mode):
        raise UserError(f"{what} {path} exists and is not a folder; remove it or choose another --out")


def _require_regular(mode: int, what: str) -> None:
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in FILE_KINDS if test(mode)), "special file")
        raise UserError(f"{what} is a {kind}, not a regular file; only regular files are read")


def _unreadable(what: str, exc: OSError) -> UserError:
    return UserError(f"{what} cannot be read ({exc.strerror or exc})")


def open_regular(path: str | Path, what: str) -> BinaryIO:
    """Open ``path`` (a symlink followed) for reading in binary, refusing anything but a regular file with a
    one-line ``UserError`` that starts with ``what`` (which names the file). Reading a FIFO blocks until a
    writer comes, and a device such as ``/dev/zero`` never ends, so neither is opened for reading: ``stat``
    refuses them before any ``open`` (opening a device may act on it), and the open itself is non-blocking
    and checked again with ``fstat``, so a FIFO swapped in between is refused too."""
    try:
        _require_regular(os.stat(path).st_mode, what)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise _unreadable(what, exc) from None
    try:
        _require_regular(os.fstat(fd).st_mode, what)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_small_file(path: str | Path, what: str, limit: int = METADATA_LIMIT) -> bytes:
    """The bytes of the regular file ``path`` (see :func:`open_regular`), at most ``limit`` of them: a larger
    file is a ``UserError`` starting with ``what``, refused before it fills memory."""
    with open_regular(path, what) as handle:
        try:
            data = handle.read(limit + 1)
        except OSError as exc:
            raise _unreadable(what, exc) from None
    if len(data) > limit:
        raise UserError(f"{what} is larger than {limit >> 20} MB, more than a file of its kind holds; not read")
    return data
