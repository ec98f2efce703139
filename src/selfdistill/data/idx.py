"""Reader for the IDX files of MNIST and Fashion-MNIST (gzip-compressed or not).

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions), the
dimensions as big-endian 32-bit integers, then the data. Only the unsigned-byte type (0x08), the one
both datasets use, is accepted.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from math import prod
from pathlib import Path

import torch

from ..errors import UserError

UBYTE = 0x08


def read_idx(path: Path) -> torch.Tensor:
    """Return the array stored in ``path`` as a uint8 tensor with the file's dimensions."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise UserError(f"data file {path} is corrupt or unreadable ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != UBYTE or raw[3] == 0:
        raise UserError(f"data file {path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"data file {path} is truncated (header incomplete)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != prod(dims):
        raise UserError(f"data file {path} holds {len(raw) - header} bytes of data, expected {prod(dims)} for "
                        f"dimensions {dims}")
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(dims)


def write_idx(path: Path, array: torch.Tensor) -> None:
    """Write a uint8 tensor as a gzip-compressed IDX file (used to build the bundled subset)."""
    if array.dtype != torch.uint8:
        raise ValueError("IDX writing supports uint8 tensors only")
    header = bytes([0, 0, UBYTE, array.dim()]) + struct.pack(f">{array.dim()}I", *array.shape)
    payload = header + array.contiguous().numpy().tobytes()
    path.write_bytes(gzip.compress(payload, mtime=0))
