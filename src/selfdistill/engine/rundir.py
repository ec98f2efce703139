"""The run directory: every file written atomically (temporary file, then rename).

    config.yaml     the full resolved config
    log.csv         one row per epoch (epoch, lr, each loss term, train/test metrics, images/s, seconds,
                    images seen so far)
    checkpoint.pt   everything needed to resume, rewritten after every epoch
    metrics.json    the final summary, written when the run completes
    model.pt        the final model weights only (a plain state_dict)

Checkpoints hold only tensors and plain Python values and are loaded with ``weights_only=True``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_VERSION = 1


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(path: Path, obj: Any) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite log.csv from all epoch rows (columns from the first row, in order)."""
    if not rows:
        return
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else _fmt(v)) for k, v in row.items()})
    atomic_write_text(path, out.getvalue())


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def prepare_new_run(out: Path) -> None:
    """Refuse to start a fresh run over an existing one (nothing there is ever overwritten)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"--out {out} already holds files; pass --resume to continue that run, or choose a new --out")


def load_checkpoint(out: Path) -> dict[str, Any] | None:
    path = out / CHECKPOINT
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say so in one line
        raise UserError(f"{path} cannot be loaded as a checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise UserError(f"{path} is not a selfdistill checkpoint of version {CHECKPOINT_VERSION}")
    return state
