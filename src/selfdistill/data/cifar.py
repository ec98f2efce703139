"""Reader for the CIFAR-10/100 "python version" batches, through a restricted unpickler.

The batches are Python pickles of dicts holding bytes, lists of ints and NumPy uint8 arrays. A plain
``pickle.load`` would run whatever a tampered file asks for, so :class:`RestrictedUnpickler` admits
only the NumPy names an array needs (``_reconstruct`` or ``_frombuffer``, ``ndarray``, ``dtype``) and maps them to
inert stand-ins defined here that just collect the raw bytes; nothing from NumPy is imported or
called. Any other global (``os.system``, ``builtins.eval``, ...) is refused.

A damaged or hostile file can make the unpickler itself fail in many ways (``EOFError``,
``KeyError``, ``struct.error``, ``MemoryError`` for an absurd declared length, ...). Since it can call
nothing but the stand-ins, every such failure means "not a valid batch" and becomes one
``UserError``; arrays and labels are then checked (shape against bytes, element type, label range)
before anything trusts them.
"""

from __future__ import annotations

import io
import pickle
import re
import sys
from math import prod
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError, one_line

# Element types an array may have: uint8 images, integer label arrays. Floats are refused.
ELEMENT_TYPES = {"u1": torch.uint8, "i1": torch.int8, "i2": torch.int16, "i4": torch.int32, "i8": torch.int64}
TYPE_CODE = re.compile(r"^([<>=|]?)([ui][1248])$")
NATIVE_ORDER = "<" if sys.byteorder == "little" else ">"
MAX_DIMS = 8
INT64 = range(-(2**63), 2**63)


class _DType:
    """Stand-in for ``numpy.dtype``: keeps the type code (``u1``, ``<i8``, ...) and the byte order."""

    def __init__(self, code: str | bytes, align: bool = False, copy: bool = False) -> None:
        self.code = code.decode("latin1") if isinstance(code, bytes) else str(code)
        self.order = ""

    def __setstate__(self, state: Any) -> None:
        # numpy's state is (version, byte order, ...); the byte order matters for multi-byte integers
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "=", "|"):
            self.order = state[1]


class _Array:
    """Stand-in for ``numpy.ndarray``: keeps the shape, the dtype and the raw bytes."""

    def __init__(self, *args: Any) -> None:
        self.shape: Any = ()
        self.dtype: Any = None
        self.data: Any = b""

    def __setstate__(self, state: tuple) -> None:
        # (version, shape, dtype, is_fortran, raw bytes) as written by ndarray.__reduce__
        _, self.shape, self.dtype, fortran, self.data = state
        if fortran:
            raise pickle.UnpicklingError("Fortran-ordered arrays are not expected in CIFAR batches")

    def to_tensor(self) -> torch.Tensor:
        """The array as a tensor; ``ValueError`` saying what is wrong unless type, shape and bytes agree."""
        dtype, swap = _element_type(self.dtype)
        shape = self.shape
        if not (isinstance(shape, tuple) and len(shape) <= MAX_DIMS
                and all(type(d) is int and 0 <= d < 2**63 for d in shape)):
            raise ValueError("has an invalid shape")
        data = self.data.encode("latin1") if isinstance(self.data, str) else self.data
        if not isinstance(data, (bytes, bytearray)):
            raise ValueError("holds no raw bytes")
        size = torch.empty((), dtype=dtype).element_size()
        if prod(shape) * size != len(data):
            raise ValueError(f"declares shape {shape} of {self.dtype.code} ({prod(shape) * size} bytes) but "
                             f"holds {len(data)} bytes")
        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
        raw = raw.view(-1, size)
        if swap:
            raw = raw.flip(1)
        return raw.contiguous().view(dtype).reshape(shape)


def _element_type(dtype: Any) -> tuple[torch.dtype, bool]:
    """The torch type for a dtype stand-in, and whether its bytes must be swapped to native order."""
    match = TYPE_CODE.match(dtype.code) if isinstance(dtype, _DType) else None
    if match is None:
        code = dtype.code[:20] if isinstance(dtype, _DType) else "unknown"
        raise ValueError(f"has element type {code!r}; allowed: uint8 images and integer labels "
                         f"({', '.join(ELEMENT_TYPES)})")
    order = match.group(1) or dtype.order
    return ELEMENT_TYPES[match.group(2)], order in ("<", ">") and order != NATIVE_ORDER and match.group(2)[1] != "1"


def _reconstruct(cls: Any, shape: Any, dtype: Any) -> _Array:
    return _Array()


def _frombuffer(buffer: Any, dtype: _DType, shape: tuple[int, ...], order: str) -> _Array:
    """Stand-in for ``numpy.core.numeric._frombuffer`` (arrays pickled with protocol 5)."""
    if not isinstance(buffer, (bytes, bytearray)):
        raise pickle.UnpicklingError("an array buffer is not bytes")
    array = _Array()
    array.__setstate__((1, tuple(shape), dtype, order == "F", bytes(buffer)))
    return array


def _encode(text: str, encoding: str = "utf-8") -> bytes:
    """Stand-in for ``_codecs.encode``, which protocol-2 pickles written by Python 3 use for bytes."""
    if encoding not in ("latin1", "latin-1", "utf-8"):
        raise pickle.UnpicklingError(f"unexpected encoding {encoding!r}")
    return text.encode(encoding)


def _empty_bytes(*args: Any) -> bytes:
    """Stand-in for ``bytes``, which protocol-2 pickles call without arguments for ``b""`` (an empty array)."""
    if args:
        raise pickle.UnpicklingError("bytes(...) with arguments is not expected in a CIFAR batch")
    return b""


_ALLOWED = {
    ("_codecs", "encode"): _encode,
    ("__builtin__", "bytes"): _empty_bytes,
    ("builtins", "bytes"): _empty_bytes,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): _Array,
    ("numpy", "dtype"): _DType,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can build only plain containers and inert array stand-ins."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a CIFAR batch") from None


def _reason(exc: BaseException) -> str:
    """``ClassName: message`` of an unpickling failure, cut short (the message may quote file content)."""
    try:
        text = one_line(exc)
    except ValueError:  # e.g. an integer too long to print
        text = ""
    text = text if len(text) <= 120 else text[:120] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load_batch(path: Path) -> dict[str, Any]:
    """Load one CIFAR batch file into a dict with str keys; arrays become tensors."""
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise UserError(f"data file {path} cannot be read ({one_line(exc.strerror or exc)})") from None
    try:
        raw = RestrictedUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception as exc:  # any failure of the unpickler means a damaged file (see the module docstring)
        raise UserError(f"data file {path} is not a valid CIFAR batch ({_reason(exc)})") from None
    if not isinstance(raw, dict):
        raise UserError(f"data file {path} is not a valid CIFAR batch (top level is not a dict)")
    out = {}
    for key, value in raw.items():
        name = key.decode("latin1") if isinstance(key, bytes) else str(key)
        if isinstance(value, _Array):
            try:
                value = value.to_tensor()
            except ValueError as exc:
                raise UserError(f"data file {path}: array {name[:40]!r} {exc}") from None
        out[name] = value
    return out


def _labels(value: Any, path: Path, key: str, num_classes: int) -> torch.Tensor:
    """``value`` as int64 labels: it must be a list (or 1-D integer array) of ints in [0, num_classes)."""
    where = f"data file {path}: {key!r}"
    if isinstance(value, list) and all(type(v) is int for v in value):
        bad = [v for v in value if not 0 <= v < num_classes]
    elif isinstance(value, torch.Tensor) and value.dim() == 1:
        bad = value[(value < 0) | (value >= num_classes)].tolist()
    else:
        found = type(value).__name__
        if isinstance(value, list):
            found = "a list holding " + next(type(v).__name__ for v in value if type(v) is not int)
        elif isinstance(value, torch.Tensor):
            found = f"a {value.dim()}-D array"
        raise UserError(f"{where} is not a list of integer labels (found {found})")
    if bad:
        shown = bad[0] if bad[0] in INT64 else "beyond the int64 range"
        raise UserError(f"{where} holds the label {shown}; allowed: integers from 0 to {num_classes - 1}")
    return torch.as_tensor(value, dtype=torch.int64)


def read_cifar_split(paths: list[Path], label_key: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate batches into (N, 3, 32, 32) uint8 images and int64 labels in [0, num_classes)."""
    images, labels = [], []
    for path in paths:
        batch = load_batch(path)
        if "data" not in batch or label_key not in batch:
            raise UserError(f"data file {path} lacks '{'data' if 'data' not in batch else label_key}'")
        data = batch["data"]
        if not isinstance(data, torch.Tensor) or data.dtype != torch.uint8 or data.dim() != 2 or data.shape[1] != 3072:
            raise UserError(f"data file {path}: 'data' is not an N x 3072 uint8 array")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(_labels(batch[label_key], path, label_key, num_classes))
        if len(labels[-1]) != len(images[-1]):
            raise UserError(f"data file {path}: {len(images[-1])} images but {len(labels[-1])} labels")
    return torch.cat(images), torch.cat(labels)
