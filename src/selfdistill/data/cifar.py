"""Reader for the CIFAR-10/100 "python version" batches, through a restricted unpickler.

The batches are Python pickles of dicts holding bytes, lists of ints and NumPy uint8 arrays. A plain
``pickle.load`` would run whatever a tampered file asks for, so :class:`RestrictedUnpickler` admits
only the NumPy names an array needs (``_reconstruct`` or ``_frombuffer``, ``ndarray``, ``dtype``) and maps them to
inert stand-ins defined here that just collect the raw bytes; nothing from NumPy is imported or
called. Any other global (``os.system``, ``builtins.eval``, ...) is refused.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError


class _DType:
    """Stand-in for ``numpy.dtype``: only unsigned bytes and native integers are accepted."""

    def __init__(self, code: str | bytes, align: bool = False, copy: bool = False) -> None:
        self.code = code.decode() if isinstance(code, bytes) else str(code)

    def __setstate__(self, state: Any) -> None:
        pass


class _Array:
    """Stand-in for ``numpy.ndarray``: keeps the shape, the dtype and the raw bytes."""

    def __init__(self, *args: Any) -> None:
        self.shape: tuple[int, ...] = ()
        self.dtype: _DType | None = None
        self.data = b""

    def __setstate__(self, state: tuple) -> None:
        # (version, shape, dtype, is_fortran, raw bytes) as written by ndarray.__reduce__
        _, self.shape, self.dtype, fortran, self.data = state
        if fortran:
            raise pickle.UnpicklingError("Fortran-ordered arrays are not expected in CIFAR batches")

    def to_tensor(self) -> torch.Tensor:
        dtypes = {"u1": torch.uint8, "i8": torch.int64, "i4": torch.int32}
        if self.dtype is None or self.dtype.code not in dtypes:
            raise pickle.UnpicklingError(f"unexpected array type {getattr(self.dtype, 'code', None)}")
        data = self.data.encode("latin1") if isinstance(self.data, str) else self.data
        flat = torch.frombuffer(bytearray(data), dtype=dtypes[self.dtype.code])
        return flat.reshape(self.shape)


def _reconstruct(cls: Any, shape: Any, dtype: Any) -> _Array:
    return _Array()


def _frombuffer(buffer: Any, dtype: _DType, shape: tuple[int, ...], order: str) -> _Array:
    """Stand-in for ``numpy.core.numeric._frombuffer`` (arrays pickled with protocol 5)."""
    array = _Array()
    array.__setstate__((1, tuple(shape), dtype, order == "F", bytes(buffer)))
    return array


def _encode(text: str, encoding: str = "utf-8") -> bytes:
    """Stand-in for ``_codecs.encode``, which protocol-2 pickles written by Python 3 use for bytes."""
    if encoding not in ("latin1", "latin-1", "utf-8"):
        raise pickle.UnpicklingError(f"unexpected encoding {encoding!r}")
    return text.encode(encoding)


_ALLOWED = {
    ("_codecs", "encode"): _encode,
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


def load_batch(path: Path) -> dict[str, Any]:
    """Load one CIFAR batch file into a dict with str keys; arrays become tensors."""
    try:
        with path.open("rb") as handle:
            raw = RestrictedUnpickler(handle, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise UserError(f"data file {path} is not a valid CIFAR batch ({exc})") from None
    except OSError as exc:
        raise UserError(f"data file {path} cannot be read ({exc})") from None
    if not isinstance(raw, dict):
        raise UserError(f"data file {path} is not a valid CIFAR batch (top level is not a dict)")
    out = {}
    for key, value in raw.items():
        key = key.decode() if isinstance(key, bytes) else key
        out[key] = value.to_tensor() if isinstance(value, _Array) else value
    return out


def read_cifar_split(paths: list[Path], label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate batches into (N, 3, 32, 32) uint8 images and int64 labels."""
    images, labels = [], []
    for path in paths:
        batch = load_batch(path)
        if "data" not in batch or label_key not in batch:
            raise UserError(f"data file {path} lacks '{'data' if 'data' not in batch else label_key}'")
        data = batch["data"]
        if not isinstance(data, torch.Tensor) or data.dtype != torch.uint8 or data.dim() != 2 or data.shape[1] != 3072:
            raise UserError(f"data file {path}: 'data' is not an N x 3072 uint8 array")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(torch.as_tensor(list(batch[label_key]), dtype=torch.int64))
        if len(labels[-1]) != len(images[-1]):
            raise UserError(f"data file {path}: {len(images[-1])} images but {len(labels[-1])} labels")
    return torch.cat(images), torch.cat(labels)
