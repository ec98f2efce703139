"""No host-device synchronisation inside a training step: on a GPU each one stalls the host until the
queued kernels have run, so a step that reads the device is launch-bound whatever the model.

On the CPU there is nothing to wait for, so the tests count the calls that would wait on a GPU (a tensor
read on the host, a shape that depends on values) while the real engine (``engine/loop.py``) runs steps of
every registered method, and name where each came from. The documented exceptions are listed in
``ALLOWED``; the loop's own reads happen in ``_periodic_check`` (every ``CHECK_EVERY`` steps: the
finite-loss check, the bar, the status line) and ``_epoch_totals`` (once per epoch), outside the step.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from conftest import small_config
from selfdistill.engine import Trainer, loop, train
from selfdistill.methods import METHODS, method_names
from selfdistill.methods.base import Outputs

# Tensor methods that read the device on the host (or size a result by its values, which does too)
READS = ("item", "__bool__", "tolist", "cpu", "numpy", "__float__", "__int__", "__index__", "nonzero",
         "masked_select", "unique")
# where a step may read the device, and why (file, function)
ALLOWED = {
    ("methods/switokd.py", "expert_mode"): "SwitOKD's switch decides on the host which network steps this round",
}
DATA = {"synthetic": {"train_size": 32, "test_size": 16, "size": 12}, "batch_size": 8}  # 4 steps an epoch
ONLINE_TEACHER = {"switokd": "cnn", "bd_kd": "cnn"}  # the online teacher's architecture, which they require


def _place() -> tuple[str, str, int]:
    """Where the read was made: the innermost frame (below this file's wrappers) in selfdistill or in this
    test, as (path below selfdistill/ or tests/test_step_sync.py, function, line)."""
    for f in reversed(traceback.extract_stack()[:-3]):  # less _place, record and the wrapper
        path = f.filename.replace("\\", "/")
        if "/selfdistill/" in path:
            return path.split("/selfdistill/")[-1], f.name, f.lineno
        if path.endswith("tests/test_step_sync.py"):
            return "tests/test_step_sync.py", f.name, f.lineno
    return "?", "?", 0


@contextmanager
def counted_reads(monkeypatch: pytest.MonkeyPatch, inside: tuple[type, str]) -> Iterator[list[tuple]]:
    """Record ``(read, file, function, line)`` for each device read made while ``inside`` (a class and the
    name of its method) runs: the read methods above, and indexing with a boolean mask."""
    seen: list[tuple] = []
    active = [0]

    def record(name: str) -> None:
        if active[0]:
            seen.append((name, *_place()))

    def wrap(name):
        original = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            record(name)
            return original(self, *args, **kwargs)
        return read

    for name in READS:
        monkeypatch.setattr(torch.Tensor, name, wrap(name))
    for name in ("nonzero", "masked_select", "unique"):
        monkeypatch.setattr(torch, name, wrap(name))  # the torch.* spellings go to the same kernels

    def masked(key) -> bool:
        keys = key if isinstance(key, tuple) else (key,)
        return any(isinstance(k, torch.Tensor) and k.dtype == torch.bool for k in keys)

    getitem, setitem = torch.Tensor.__getitem__, torch.Tensor.__setitem__

    def get(self, key):
        if masked(key):
            record("boolean-mask index")
        return getitem(self, key)

    def put(self, key, value):
        if masked(key) and isinstance(value, torch.Tensor) and value.numel() > 1:  # a scalar is a masked_fill
            record("boolean-mask assignment")
        return setitem(self, key, value)

    monkeypatch.setattr(torch.Tensor, "__getitem__", get)
    monkeypatch.setattr(torch.Tensor, "__setitem__", put)
    cls, method = inside
    body = getattr(cls, method)

    def watched(self, *args, **kwargs):
        active[0] += 1
        try:
            return body(self, *args, **kwargs)
        finally:
            active[0] -= 1

    monkeypatch.setattr(cls, method, watched)
    yield seen


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> list[str]:
    """Two finished CE runs of a small CNN (CA-MKD takes two teachers, the others one)."""
    out = []
    for seed in (0, 1):
        run = tmp_path_factory.mktemp("teachers") / f"cnn{seed}"
        train(small_config(model={"name": "cnn"}, data=DATA, train={"epochs": 1, "progress": False, "threads": 1,
                                                                    "seed": seed}), run)
        out.append(str(run))
    return out


def trainer_for(name: str, teachers: list[str]) -> Trainer:
    members = (name if name not in ("lightskd",) else "drg+dsr").split("+")
    needed = max(METHODS[m].teachers_needed[0] for m in members)
    method = {"name": name, **({"teacher_model": ONLINE_TEACHER[name]} if name in ONLINE_TEACHER else {})}
    return Trainer(small_config(model={"name": "cnn"}, method=method, teachers=teachers[:needed], data=DATA,
                                train={"threads": 1}))


def step_reads(trainer: Trainer, monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """The device reads inside the steps of the second epoch (the first may set up once: CRD's memory check
    and its Z from the run's first batch), less the documented exceptions."""
    trainer.train_epoch(0)
    with counted_reads(monkeypatch, (loop.EpochLoop, "_step")) as seen:
        trainer.train_epoch(1)
    return [r for r in seen if (r[1], r[2]) not in ALLOWED]


@pytest.mark.parametrize("name", method_names())
def test_a_step_never_reads_the_device(name, teachers, monkeypatch):
    trainer = trainer_for(name, teachers)
    assert step_reads(trainer, monkeypatch) == []


def test_the_loop_reads_the_device_only_at_its_periodic_check_and_the_epochs_end(teachers, monkeypatch):
    monkeypatch.setattr(loop, "CHECK_EVERY", 2)
    trainer = trainer_for("dlb", teachers)
    checks = []
    check = loop.EpochLoop._periodic_check
    monkeypatch.setattr(loop.EpochLoop, "_periodic_check", lambda self, *a: checks.append(a[1]) or check(self, *a))
    with counted_reads(monkeypatch, (loop.EpochLoop, "train_epoch")) as seen:
        trainer.train_epoch(0)
    assert checks == [2, 4]  # steps done at each check: every CHECK_EVERY steps and at the end
    assert {r[2] for r in seen} <= {"_periodic_check", "_epoch_totals", "<dictcomp>"}, seen
    assert {r[2] for r in seen if r[1] == "engine/loop.py"} >= {"_periodic_check", "_epoch_totals"}


@pytest.mark.parametrize("read", [
    lambda t: t.item(), lambda t: float(t), lambda t: bool(t > 0), lambda t: t[t > 0], lambda t: t.nonzero(),
    lambda t: t.tolist(), lambda t: t.cpu(), lambda t: int(t.argmax()),
], ids=["item", "float", "bool", "mask", "nonzero", "tolist", "cpu", "int"])
def test_a_read_added_to_a_step_is_caught_and_named(read, teachers, monkeypatch):
    """The proof that the test above would fail: one read in a method's losses is reported where it is."""
    trainer = trainer_for("kd", teachers)
    losses = type(trainer.method).losses

    def reading(self, out: Outputs, batch):
        terms = losses(self, out, batch)
        read(next(iter(terms.values())).detach())
        return terms

    monkeypatch.setattr(type(trainer.method), "losses", reading)
    found = step_reads(trainer, monkeypatch)
    assert len(found) >= trainer.steps and {r[1:3] for r in found} == {("tests/test_step_sync.py", "<lambda>")}
