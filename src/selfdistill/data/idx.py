"""Reader for the IDX files of MNIST and Fashion-MNIST (gzip-compressed or not).

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions), the
dimensions as big-endian 32-bit integers, then the data. Only the unsigned-byte type (0x08), the one
both datasets use, is accepted.

The file is read as a stream: the header first, then at most as many bytes as it declares (plus one,
to notice extra data). So a damaged header that declares an enormous array costs nothing before it is
refused, and a gzip stream is never inflated beyond what the header promised.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from math import prod
from pathlib import Path
from typing import BinaryIO

import torch

from ..errors import UserError, one_line
from ..fileio import atomic_write_bytes

UBYTE = 0x08
MAX_DIMS = 8  # far more than image data needs, and within torch's limit on tensor dimensions
CHUNK = 1 << 20


def read_idx(path: Path, ndim: int | None = None) -> torch.Tensor:
    """Return the array stored in ``path`` as a uint8 tensor with the file's dimensions.

    With ``ndim`` the array must have that many dimensions (3 for images, 1 for labels). Every problem
    with the file, including an array without any element, is one ``UserError`` naming it.
    """
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")) as handle:
            dims = _read_header(handle, path)
            if ndim is not None and len(dims) != ndim:
                raise UserError(f"data file {path} holds a {len(dims)}-D array {dims}, expected {ndim}-D "
                                f"({'images: count, height, width' if ndim == 3 else 'one label per image'})")
            data = _read_at_most(handle, prod(dims) + 1)
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise UserError(f"data file {path} is corrupt or unreadable ({one_line(exc)})") from None
    if len(data) != prod(dims):
        held = f"more than {prod(dims)}" if len(data) > prod(dims) else str(len(data))
        raise UserError(f"data file {path} holds {held} bytes of data, expected {prod(dims)} for dimensions {dims}")
    return torch.frombuffer(data, dtype=torch.uint8).reshape(dims)


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


def write_idx(path: Path, array: torch.Tensor) -> None:
    """Write a uint8 tensor as a gzip-compressed IDX file (used to build the bundled subset)."""
    if array.dtype != torch.uint8:
        raise ValueError("IDX writing supports uint8 tensors only")
    header = bytes([0, 0, UBYTE, array.dim()]) + struct.pack(f">{array.dim()}I", *array.shape)
    payload = header + array.contiguous().numpy().tobytes()
    atomic_write_bytes(path, gzip.compress(payload, mtime=0))
