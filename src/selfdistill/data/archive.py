"""Image trees read straight from a tar archive (``.tar``, ``.tar.gz``/``.tgz``, ``.tar.bz2``, ``.tar.xz``),
never unpacked to disk: each image member is read into memory and decoded from there.

An archive is read in two sequential passes (a compressed archive cannot be read out of order cheaply): the
first lists its members and reads the few small text files a layout needs (``val/val_annotations.txt``,
``words.txt``); the second, only when the decoded images are not cached, decodes the images. The tree's root
is the archive's top, or its single top-level folder (``tiny-imagenet-200/``, ``cifar10-jpeg/``).

Whatever a hostile or damaged archive holds ends in one line naming the archive and the member, in the spirit
of ``tarfile``'s ``data`` extraction filter but stricter, since nothing here is meant to be extracted: a
member with an absolute path or a ``..`` component, a symbolic or hard link, a device, FIFO or other special
file, a name given twice, more than ``MAX_MEMBERS`` members, members that together declare more than
``EXPANSION`` times the archive's size (a decompression bomb), an image member over ``MAX_IMAGE_BYTES``, and a
truncated or corrupt stream.
"""

from __future__ import annotations

import functools
import lzma
import os
import tarfile
import zlib
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import torch

from ..errors import UserError, one_line
from ..fileio import LONG_TEXT_LIMIT, open_regular
from .decode import decode_image, pillow, progress
from .tree import ANNOTATIONS, WORDS, Samples, Tree

SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
MAX_MEMBERS = 2_000_000  # each costs tarfile some memory while listing; Tiny-ImageNet has 120,000
EXPANSION = 100  # image archives barely compress; a bomb expands by a thousand or more
EXPANSION_SLACK = 256 << 20  # a small archive may hold this much whatever its size
MAX_IMAGE_BYTES = 256 << 20
TEXTS = (ANNOTATIONS, WORDS)
DAMAGED = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError)


def is_archive(path: Path) -> bool:
    """Whether ``path`` names a tar archive by its suffix."""
    return path.name.lower().endswith(SUFFIXES)


def _members(tar: tarfile.TarFile, path: Path, archive_size: int) -> Iterator[tuple[str, tarfile.TarInfo]]:
    """Each member of ``tar`` with its normalised name (no ``./``, no trailing ``/``), after the checks in the
    module docstring; the archive's root folder itself is left out."""
    seen: set[str] = set()
    declared, limit = 0, EXPANSION * archive_size + EXPANSION_SLACK
    for count, member in enumerate(tar, 1):
        where = f"archive {path}, member {member.name[:120]!r}"
        if count > MAX_MEMBERS:
            raise UserError(f"archive {path} holds more than {MAX_MEMBERS:,} members; not an image dataset this "
                            "reads (unpack it and give the folder, or split it)")
        declared += member.size + tarfile.BLOCKSIZE
        if declared > limit:
            raise UserError(f"archive {path} expands to more than {EXPANSION} times its size (a decompression "
                            "bomb?); refusing to read it")
        parts = [p for p in member.name.split("/") if p not in ("", ".")]
        if member.name.startswith("/") or ".." in parts:
            raise UserError(f"{where}: an absolute path or a '..' component; refusing an archive that reaches "
                            "outside itself")
        if member.issym() or member.islnk():
            raise UserError(f"{where} is a {'symbolic' if member.issym() else 'hard'} link; refusing an archive "
                            "with links (repack it with the files themselves)")
        if not (member.isreg() or member.isdir()):
            raise UserError(f"{where} is a special file (device, FIFO); refusing it")
        name = "/".join(parts)
        if not name:
            continue
        if name in seen:
            raise UserError(f"{where} appears twice; refusing an archive whose members overwrite each other")
        seen.add(name)
        yield name, member


def _open(path: Path) -> tuple[tarfile.TarFile, int]:
    """The archive opened for one sequential pass, and its size in bytes (a FIFO or device is refused)."""
    handle = open_regular(path, f"archive {path}")
    try:
        return tarfile.open(fileobj=handle, mode="r|*"), os.fstat(handle.fileno()).st_size
    except DAMAGED as exc:
        handle.close()
        raise _damaged(path, exc) from None


def _damaged(path: Path, exc: BaseException) -> UserError:
    return UserError(f"archive {path} cannot be read ({type(exc).__name__}: {one_line(exc)[:160]}); it is damaged, "
                     "truncated or not a tar archive")


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    with tar.extractfile(member) as src:  # type: ignore[union-attr]
        return src.read()


@functools.lru_cache(maxsize=4)
def _index(path: Path, stat_key: tuple[int, int, int, int]) -> tuple[Tree, str]:
    """The tree in the archive and its root folder inside it ('' or ``name/``); kept for this process while
    the file's device, inode, size and modification time stay the same (reading it costs a pass)."""
    dirs: set[str] = set()
    files: list[str] = []
    texts: dict[str, bytes] = {}
    tar, size = _open(path)
    try:
        with tar:
            for name, member in _members(tar, path, size):
                if member.isdir():
                    dirs.add(name)
                    continue
                files.append(name)
                if name.split("/", 1)[-1] in TEXTS or name in TEXTS:
                    if member.size > LONG_TEXT_LIMIT:
                        raise UserError(f"archive {path}, member {name!r} is over {LONG_TEXT_LIMIT >> 20} MB; not "
                                        "the small text file it should be")
                    texts[name] = _read(tar, member)
    except DAMAGED as exc:
        raise _damaged(path, exc) from None
    for name in files:  # folders an archive does not list on their own
        parts = name.split("/")
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
    prefix = _root(path, dirs)
    cut = len(prefix)
    tree = Tree(str(path), frozenset(d[cut:] for d in dirs if d.startswith(prefix) and d != prefix[:-1]),
                tuple(sorted(f[cut:] for f in files if f.startswith(prefix))),
                lambda rel: texts.get(prefix + rel), separator=f":{prefix}")
    return tree, prefix


def _root(path: Path, dirs: set[str]) -> str:
    """Where the tree starts inside the archive: its top when that holds ``train/``, else its one folder."""
    if "train" in dirs:
        return ""
    tops = {d.split("/", 1)[0] for d in dirs}
    if len(tops) == 1 and f"{next(iter(tops))}/train" in dirs:
        return f"{next(iter(tops))}/"
    raise UserError(f"archive {path} has no train/ folder, neither at its top nor inside a single top folder "
                    "(expected [name/]train/<class>/ and val/<class>/ or test/<class>/)")


def archive_tree(path: Path) -> tuple[Tree, str]:
    """The tree in the archive at ``path`` and its root folder inside it (see :func:`_index`)."""
    try:
        st = path.stat()
    except OSError as exc:
        raise UserError(f"archive {path} cannot be read ({one_line(exc.strerror or exc)})") from None
    return _index(path, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))


def decode_archive(path: Path, prefix: str, samples: Samples, size: int, what: str) -> torch.Tensor:
    """The images of ``samples`` (paths relative to the tree's root, ``prefix`` inside the archive), decoded
    in one pass over the archive into (N, 3, size, size) uint8 in the order of ``samples``."""
    image_module = pillow()
    wanted: dict[str, list[int]] = {}
    for i, (rel, _) in enumerate(samples):
        wanted.setdefault(prefix + rel, []).append(i)
    images = torch.empty(len(samples), 3, size, size, dtype=torch.uint8)
    tar, archive_size = _open(path)
    try:
        with tar, progress(len(samples), what) as bar:
            for name, member in _members(tar, path, archive_size):
                rows = wanted.pop(name, None)
                if rows is None or not member.isreg():
                    continue
                if member.size > MAX_IMAGE_BYTES:
                    raise UserError(f"archive {path}, member {name!r} is over {MAX_IMAGE_BYTES >> 20} MB; not an "
                                    "image this reads")
                images[rows] = decode_image(image_module, BytesIO(_read(tar, member)), size, f"{path}:{name}")
                bar.update(len(rows))
                if not wanted:  # the rest was checked when the archive was listed
                    break
    except DAMAGED as exc:
        raise _damaged(path, exc) from None
    if wanted:
        missing = next(iter(wanted))
        raise UserError(f"archive {path} lacks {missing!r}, which {ANNOTATIONS} lists; the archive is incomplete")
    return images
