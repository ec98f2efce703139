"""Reader for the IDX files of MNIST and Fashion-MNIST (gzip-compressed or not).

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions), the
dimensions as big-endian 32-bit integers, then the data. Only the unsigned-byte type (0x08), the one
both datasets use, is accepted.

The file is read as a stream: the header first, then at most as many bytes as it declares (plus one,
to notice extra data). So a damaged header that declares an enormous array costs nothing before it is
refused, and a gzip stream is never inflated beyond what the header promised.

Decode cache. Inflating the Fashion-MNIST training images takes ~0.23 s of each start on a 2-core CPU
(0.28 s for all four files), so a gzip file of at least ``MIN_CACHED`` bytes is inflated once and the
result kept in ``user_cache()/decoded/`` (never beside the data, which may be read-only). A cache file
is keyed by the SHA-256 of the compressed bytes, which costs ~0.02 s for all four files, a tenth of
inflating them: whatever changes in a source file, even with its size and modification time kept, is
a miss. The key is computed on the very bytes that are inflated, so a file replaced while it is read
cannot be stored under the wrong key. A cache file holds ``CACHE_MAGIC``, that key, the CRC-32 of the
payload and the payload, the inflated IDX stream itself (header and data), whose header is checked as
a source file's is. A cache file that is truncated, damaged or made for other bytes is not used (and
is rewritten); one that cannot be written (read-only or full disk) is skipped without a word; nothing
is cached when ``SELFDISTILL_NO_CACHE`` is set to anything but ``0``. The CRC guards against damage,
not malice: whoever can write the cache can as well write the user-cache data root beside it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import struct
import zlib
from math import prod
from pathlib import Path
from typing import BinaryIO

import torch

from ..errors import UserError, one_line
from ..fileio import atomic_write_bytes
from .sources import decode_cache_disabled, user_cache

UBYTE = 0x08
MAX_DIMS = 8  # far more than image data needs, and within torch's limit on tensor dimensions
CHUNK = 1 << 20
MIN_CACHED = 1 << 20  # compressed bytes; a smaller file inflates in a few milliseconds, caching it gains nothing
CACHE_MAGIC = b"selfdistill inflated idx 1\n"


def read_idx(path: Path, ndim: int | None = None) -> torch.Tensor:
    """Return the array stored in ``path`` as a uint8 tensor with the file's dimensions.

    With ``ndim`` the array must have that many dimensions (3 for images, 1 for labels). Every problem
    with the file, including an array without any element, is one ``UserError`` naming it. A large gzip
    file is inflated only once (see the module docstring).
    """
    try:
        folder = _cache_folder(path)
        compressed = None if folder is None else _bytes_to_cache(path)
        cache: tuple[Path, bytes] | None = None
        if compressed is None:
            opened: BinaryIO = gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")
        else:
            key = hashlib.sha256(compressed).digest()
            cache = (folder / f"{path.name}-{key.hex()[:16]}.idx", key)
            cached = _load_cached(*cache)
            if cached is not None:
                _check_ndim(path, tuple(cached.shape), ndim)
                return cached
            opened = gzip.GzipFile(fileobj=io.BytesIO(compressed))
        with opened as handle:
            dims = _read_header(handle, path)
            _check_ndim(path, dims, ndim)
            data = _read_at_most(handle, prod(dims) + 1)
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise UserError(f"data file {path} is corrupt or unreadable ({one_line(exc)})") from None
    if len(data) != prod(dims):
        held = f"more than {prod(dims)}" if len(data) > prod(dims) else str(len(data))
        raise UserError(f"data file {path} holds {held} bytes of data, expected {prod(dims)} for dimensions {dims}")
    if cache is not None:
        _store(*cache, dims, data)
    return torch.frombuffer(data, dtype=torch.uint8).reshape(dims)


def _check_ndim(path: Path, dims: tuple[int, ...], ndim: int | None) -> None:
    if ndim is not None and len(dims) != ndim:
        raise UserError(f"data file {path} holds a {len(dims)}-D array {dims}, expected {ndim}-D "
                        f"({'images: count, height, width' if ndim == 3 else 'one label per image'})")


def _read_header(handle: BinaryIO, path: Path) -> tuple[int, ...]:
    """The dimensions declared by the header, after checking the magic number; none may be zero."""
    magic = handle.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] != UBYTE or magic[3] == 0:
        raise UserError(f"data file {path} is not an unsigned-byte IDX file (bad magic number)")
    if magic[3] > MAX_DIMS:
        raise UserError(f"data file {path} declares {magic[3]} dimensions, at most {MAX_DIMS} are supported")
    raw = handle.read(4 * magic[3])
    if len(raw) < 4 * magic[3]:
        raise UserError(f"data file {path} is truncated (header incomplete)")
    dims = struct.unpack(f">{magic[3]}I", raw)
    if 0 in dims:
        raise UserError(f"data file {path} declares dimensions {dims}: it holds no images or labels")
    return dims


def _read_at_most(handle: BinaryIO, limit: int) -> bytearray:
    """Up to ``limit`` bytes from ``handle``, read in chunks so that nothing is allocated in advance."""
    data = bytearray()
    while len(data) < limit:
        chunk = handle.read(min(CHUNK, limit - len(data)))
        if not chunk:
            break
        data += chunk
    return data


def _header(dims: tuple[int, ...]) -> bytes:
    return bytes([0, 0, UBYTE, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


def write_idx(path: Path, array: torch.Tensor) -> None:
    """Write a uint8 tensor as a gzip-compressed IDX file (used to build the bundled subset)."""
    if array.dtype != torch.uint8:
        raise ValueError("IDX writing supports uint8 tensors only")
    payload = _header(tuple(array.shape)) + array.contiguous().numpy().tobytes()
    atomic_write_bytes(path, gzip.compress(payload, mtime=0))


# ----------------------------------------------------------------------------- decode cache
def _cache_folder(source: Path) -> Path | None:
    """The folder of the decode cache, or None when ``source`` is not to be cached (see the module docstring).
    Cache files are named after the source and the start of the key; the full key inside is what counts."""
    if source.suffix != ".gz" or decode_cache_disabled():
        return None
    try:
        return user_cache() / "decoded"
    except RuntimeError:  # no home directory to be found
        return None


def _bytes_to_cache(path: Path) -> bytes | None:
    """The compressed bytes of ``path``, or None if it is too small to be worth caching."""
    with path.open("rb") as handle:
        if os.fstat(handle.fileno()).st_size < MIN_CACHED:
            return None
        return handle.read()


def _load_cached(cache: Path, key: bytes) -> torch.Tensor | None:
    """The array kept in ``cache`` for ``key``, or None when there is none or it is not exactly what was
    stored for this key: another magic or key, an IDX header that does not match the file's size, or a
    CRC mismatch."""
    try:
        with cache.open("rb", buffering=0) as handle:
            prefix = handle.read(len(CACHE_MAGIC) + len(key) + 4)
            if prefix[:len(CACHE_MAGIC)] != CACHE_MAGIC or prefix[len(CACHE_MAGIC):-4] != key:
                return None
            dims = _read_header(handle, cache)  # type: ignore[arg-type]
            header = _header(dims)
            if os.fstat(handle.fileno()).st_size != len(prefix) + len(header) + prod(dims):
                return None
            data = bytearray(prod(dims))
            view, done = memoryview(data), 0
            while done < len(data):
                count = handle.readinto(view[done:])
                if not count:
                    return None
                done += count
    except (OSError, UserError):
        return None
    if zlib.crc32(data, zlib.crc32(header)) != int.from_bytes(prefix[-4:], "little"):
        return None
    return torch.frombuffer(data, dtype=torch.uint8).reshape(dims)


def _store(cache: Path, key: bytes, dims: tuple[int, ...], data: bytearray) -> None:
    """Keep the inflated IDX stream (``dims``' header, then ``data``) in ``cache``, atomically; skipped
    without a word if it cannot be written."""
    header = _header(dims)
    content = bytearray(CACHE_MAGIC + key + zlib.crc32(data, zlib.crc32(header)).to_bytes(4, "little") + header)
    content += data
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cache, content)
    except OSError:
        pass  # a cache that cannot be written only costs the inflating next time
