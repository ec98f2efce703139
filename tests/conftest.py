"""Shared helpers: small configs on synthetic data, and the real-data root for slow tests."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch

from selfdistill import cli
from selfdistill.config import Config
from selfdistill.engine import Trainer, resolve
from selfdistill.methods import Method

ROOT = Path(__file__).resolve().parents[1]
SMALL_SYNTHETIC = {"dataset": "synthetic", "batch_size": 16, "eval_batch_size": 64,
                   "synthetic": {"train_size": 96, "test_size": 64, "size": 12}}


def small_config(**sections: Any) -> Config:
    """A config that trains an MLP on 96 synthetic 12x12 images in well under a second per epoch."""
    base = {"model": {"name": "mlp"}, "data": dict(SMALL_SYNTHETIC), "train": {"epochs": 2, "progress": False},
            "schedule": {"name": "constant"}}
    return resolve([base, sections])


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "selfdistill", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=timeout)


@pytest.fixture
def fashion_root() -> Path:
    """The data root holding full Fashion-MNIST (SELFDISTILL_DATA). CI sets SELFDISTILL_REQUIRE_DATA=1,
    so there a missing root fails the test instead of skipping it."""
    root = os.environ.get("SELFDISTILL_DATA")
    if root and (Path(root) / "fashion-mnist").is_dir():
        return Path(root)
    if os.environ.get("SELFDISTILL_REQUIRE_DATA") == "1":
        pytest.fail("SELFDISTILL_DATA must point at a data root with fashion-mnist/ (CI requires real data)")
    pytest.skip("full Fashion-MNIST not found: set SELFDISTILL_DATA to a data root with fashion-mnist/")


class Recorder(Method):
    """Test helper: keeps every batch the engine trains on, with its logits."""

    name = "recorder"
    term_names = ("recorder_zero",)

    def __init__(self):
        super().__init__()
        self.seen = []

    def losses(self, out, batch):
        return {"recorder_zero": out.logits.sum() * 0}

    def update(self, out, batch):
        self.seen.append((batch, out.logits.detach().clone()))


@pytest.fixture(autouse=True)
def _no_decode_cache(monkeypatch):
    """Tests leave the user's cache alone (the cache's own tests turn it back on, in a temporary folder)."""
    monkeypatch.setenv("SELFDISTILL_NO_CACHE", "1")


@pytest.fixture(autouse=True)
def _restore_torch_settings():
    """Runs in this process set torch's thread count and determinism, which are process-wide."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


def cli_main(capsys, *args: str) -> tuple[int, str, list[str]]:
    """Run ``selfdistill <args>`` in this process: exit code, stdout, and the lines of stderr."""
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


@contextlib.contextmanager
def ctrl_c_in_epoch(epoch: int) -> Iterator[None]:
    """Inside the block, training is interrupted (KeyboardInterrupt) as epoch ``epoch`` (0-based) starts."""
    original = Trainer.train_epoch

    def interrupted(self, e):
        if e == epoch:
            raise KeyboardInterrupt
        return original(self, e)

    with mock.patch.object(Trainer, "train_epoch", interrupted):
        yield
