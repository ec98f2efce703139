"""Shared helpers: small configs on synthetic data, and the real-data root for slow tests."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch

from selfdistill import cli
from selfdistill.config import Config
from selfdistill.engine import Trainer, resolve
from selfdistill.errors import UserError
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


# ----------------------------------------------------------------------------- a user's own models
USER_FACTORIES = '''
import torch.nn as nn

calls = []


class Net(nn.Module):
    def __init__(self, num_classes, in_channels, image_size, hidden):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size ** 2, hidden), nn.ReLU())
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.fc(self.body(x))


def good(num_classes, in_channels, image_size, hidden=16, *, scale=1.0):
    calls.append((num_classes, in_channels, image_size, hidden, scale))
    return Net(num_classes, in_channels, image_size, hidden)


def anything(num_classes, in_channels, image_size, **options):
    calls.append(options)
    return Net(num_classes, in_channels, image_size, 4)


def not_a_module(num_classes, in_channels, image_size):
    return 42


def raises(num_classes, in_channels, image_size):
    raise RuntimeError("boom\\nsecond line")


def two_arguments(num_classes, in_channels):
    return Net(num_classes, in_channels, 8, 4)


class Holder:
    @staticmethod
    def build(num_classes, in_channels, image_size):
        return Net(num_classes, in_channels, image_size, 3)


VALUE = 3
'''


def write_module(directory, source: str) -> str:
    """A module of ``source`` in ``directory`` under a fresh name (imports are cached by name)."""
    name = f"sd_user_{uuid.uuid4().hex[:12]}"
    (directory / f"{name}.py").write_text(textwrap.dedent(source))
    return name


@pytest.fixture
def user_nets(tmp_path, monkeypatch):
    """An importable module of users' model factories (``good``, ``anything``, ...), by its fresh name."""
    name = write_module(tmp_path, USER_FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def one_line_error(call: Any, *names: object) -> str:
    """Run ``call``, which must raise a one-line ``UserError`` mentioning every one of ``names``; its message."""
    with pytest.raises(UserError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message, message
    for name in names:
        assert str(name) in message, f"{name} not in {message!r}"
    return message
