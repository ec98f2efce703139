"""The memory layout is a decision: every batch a network sees (plain, mixed, replayed in its own forward, a
teacher's) arrives contiguous in the run's layout, and the weights are in it too, whatever strides the
augmentation or the mixing happened to produce."""

import pytest
import torch
import torch.nn as nn

from conftest import ctrl_c_in_epoch, small_config
from selfdistill.config import TrainConfig
from selfdistill.engine import Trainer, train
from selfdistill.engine.runtime import Precision
from selfdistill.engine.trainer import Interrupted
from selfdistill.models import faster_in_channels_last_on_cpu

RGB = {"synthetic": {"channels": 3, "size": 12, "train_size": 64, "test_size": 32}}


def first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def record_layouts(trainer: Trainer) -> dict[str, list[str]]:
    """Every input the first convolution of the student and of each teacher receives while training."""
    seen: dict[str, list[str]] = {"student": []}

    def layout(x: torch.Tensor) -> str:
        if x.is_contiguous(memory_format=torch.channels_last):
            return "channels_last"
        return "nchw" if x.is_contiguous() else "strided"

    def hook(role):
        return lambda module, args: seen.setdefault(role, []).append(layout(args[0]))

    first_conv(trainer.model).register_forward_pre_hook(hook("student"))
    for teacher in trainer.teachers:
        first_conv(teacher.module).register_forward_pre_hook(hook(teacher.role))
    return seen


@pytest.fixture(scope="module")
def rgb_teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "run"
    train(small_config(model={"name": "cnn"}, data=RGB, train={"epochs": 1}), out)
    return str(out)


@pytest.mark.parametrize("model, expected", [("cnn", "channels_last"), ("vgg8", "nchw")])
@pytest.mark.parametrize("case", ["ce", "mixup", "cutmix", "dlb_two_forwards", "kd"])
def test_every_batch_runs_in_the_chosen_layout(model, expected, case, rgb_teacher):
    sections = {"model": {"name": model}, "data": dict(RGB), "train": {"epochs": 1}}
    if case in ("mixup", "cutmix"):
        sections["data"]["mix"] = {"name": case}
    if case == "dlb_two_forwards":
        sections["method"] = {"name": "dlb", "forwards": 2}
    if case == "kd":
        sections |= {"method": {"name": "kd"}, "teachers": [rgb_teacher]}
    trainer = Trainer(small_config(**sections))
    if trainer.device.type == "cuda":
        expected = "channels_last"  # auto chooses it on CUDA whatever the architecture
    assert trainer.precision.channels_last == (expected == "channels_last")
    weight = first_conv(trainer.model).weight
    assert weight.is_contiguous(memory_format=torch.channels_last if expected == "channels_last" else
                                torch.contiguous_format)
    seen = record_layouts(trainer)
    trainer.train_epoch(0)
    assert seen["student"] and set(seen["student"]) == {expected}, seen["student"]
    if case == "dlb_two_forwards":
        assert len(seen["student"]) > trainer.steps  # the replayed rows ran in forwards of their own
    if case == "kd":
        assert set(seen["teacher"]) == {"channels_last"}  # a frozen teacher always runs channels_last


def test_auto_takes_the_measured_cpu_layout_and_an_explicit_setting_wins():
    cpu = torch.device("cpu")
    assert faster_in_channels_last_on_cpu("resnet20") and not faster_in_channels_last_on_cpu("ShuffleV2")
    assert Precision.resolve(TrainConfig(), cpu, "resnet20").channels_last
    assert not Precision.resolve(TrainConfig(), cpu, "ShuffleV2").channels_last
    assert not Precision.resolve(TrainConfig(channels_last=False), cpu, "resnet20").channels_last
    assert Precision.resolve(TrainConfig(channels_last=True), cpu, "mlp").channels_last


def test_a_resumed_run_keeps_the_layout_it_was_trained_in(tmp_path):
    """A run trained in NCHW (e.g. by a version whose auto chose NCHW on a CPU) resumes in NCHW under auto."""
    out = tmp_path / "run"
    config = small_config(model={"name": "cnn"}, data=RGB, train={"epochs": 2})
    trainer = Trainer(small_config(model={"name": "cnn"}, data=RGB, train={"epochs": 2, "channels_last": False}), out)
    trainer.config = config  # what the checkpoint records: the run's config said auto
    with ctrl_c_in_epoch(1), pytest.raises(Interrupted):
        trainer.fit()
    resumed = Trainer(config, out, resume=True)
    assert not resumed.precision.channels_last and Trainer(config).precision.channels_last
    resumed.fit()
