"""The training loop: schedules, run directory, resume, divergence, learning on data."""

import csv
import json

import pytest
import torch

from conftest import ctrl_c_in_epoch, small_config
from selfdistill.config import ScheduleConfig
from selfdistill.engine import Trainer, train
from selfdistill.engine.optim import LRSchedule, step_kernels
from selfdistill.engine.trainer import Interrupted
from selfdistill.errors import TrainingDiverged, UserError
from selfdistill.methods import Method, MethodStack

REQUIRED_METRICS = {"method", "dataset", "model", "seed", "epochs", "test_top1", "test_nll", "test_ece",
                    "train_images_seen", "wall_s", "images_per_s"}


def test_multistep_cosine_and_warmup_schedules():
    step = LRSchedule(ScheduleConfig(name="multistep", milestones=[2, 4], gamma=0.1), 1.0, 6, 10)
    assert [round(step.lr(e, 0), 6) for e in range(6)] == [1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
    cos = LRSchedule(ScheduleConfig(name="cosine", min_lr=0.0), 1.0, 4, 10)
    assert cos.lr(0, 0) == 1.0 and cos.lr(2, 0) == pytest.approx(0.5) and cos.lr(3, 9) < 0.01
    warm = LRSchedule(ScheduleConfig(name="constant", warmup_epochs=1), 1.0, 4, 10)
    assert [warm.lr(0, s) for s in (0, 4, 9)] == [pytest.approx(0.1), pytest.approx(0.5), 1.0]
    assert warm.lr(1, 0) == 1.0


def test_training_learns_and_writes_a_complete_run_directory(tmp_path):
    config = small_config(method={"name": "dlb"}, train={"epochs": 3, "progress": False})
    metrics = train(config, tmp_path / "run")
    assert metrics["test_top1"] > 40  # 10 synthetic classes: chance is 10%
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.yaml", "log.csv", "metrics.json", "checkpoint.pt", "model.pt"} <= files
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert REQUIRED_METRICS <= set(saved) and saved["method"] == "dlb"
    rows = list(csv.DictReader((tmp_path / "run" / "log.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert list(rows[0]) == ["epoch", "lr", "ce", "dlb_kl", "train_top1", "test_top1", "test_nll", "test_ece",
                             "images_per_s", "seconds", "images_seen"]
    assert int(rows[-1]["images_seen"]) == saved["train_images_seen"]
    # DLB forwards each image twice per epoch; only the run's last batch (16 rows) is never replayed
    assert saved["train_images_seen"] == 3 * 2 * 96 - 16
    weights = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert "fc.weight" in weights


def test_eval_every_skips_epochs_but_always_evaluates_the_last(tmp_path):
    config = small_config(train={"epochs": 3, "eval_every": 2, "progress": False})
    train(config, tmp_path / "run")
    rows = list(csv.DictReader((tmp_path / "run" / "log.csv").open()))
    assert [bool(r["test_top1"]) for r in rows] == [False, True, True]


def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(tmp_path, monkeypatch):
    config = small_config(method={"name": "dlb"}, train={"epochs": 3, "progress": False, "deterministic": True})
    train(config, tmp_path / "full")
    with ctrl_c_in_epoch(1), pytest.raises(Interrupted, match="checkpoint of epoch 1"):  # killed in the second epoch
        train(config, tmp_path / "cut")
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["epoch"] == 1
    train(config, tmp_path / "cut", resume=True)
    full = torch.load(tmp_path / "full" / "model.pt", weights_only=True)
    resumed = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    a = json.loads((tmp_path / "full" / "metrics.json").read_text())
    b = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert a["test_top1"] == b["test_top1"] and a["train_images_seen"] == b["train_images_seen"]
    logs = [(tmp_path / run / "log.csv").read_text().splitlines() for run in ("full", "cut")]
    assert [row.split(",")[:4] for row in logs[0]] == [row.split(",")[:4] for row in logs[1]]


def test_existing_run_directory_is_never_overwritten(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="already holds files"):
        train(small_config(), out)
    assert (out / "notes.txt").read_text() == "keep me" and len(list(out.iterdir())) == 1


def test_resume_with_a_different_config_is_refused_and_changes_nothing(tmp_path):
    train(small_config(train={"epochs": 1, "progress": False}), tmp_path / "run")
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    with pytest.raises(UserError, match="optim.lr"):
        train(small_config(train={"epochs": 1, "progress": False}, optim={"lr": 0.5}), tmp_path / "run", resume=True)
    assert before == {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}


class PoisonAt(Method):
    """Test helper: a NaN loss term from the given epoch on."""

    name = "poison"
    term_names = ("poison",)

    def __init__(self, epoch):
        super().__init__()
        self.bad_epoch, self.epoch = epoch, 0

    def start_epoch(self, epoch):
        self.epoch = epoch

    def losses(self, out, batch):
        value = float("nan") if self.epoch >= self.bad_epoch else 0.0
        return {"poison": out.logits.sum() * 0 + value}


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = Trainer(small_config(train={"epochs": 3, "progress": False}), tmp_path / "run")
    trainer.method = MethodStack([PoisonAt(epoch=1)])
    with pytest.raises(TrainingDiverged, match="epoch 2"):
        trainer.fit()
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_learning_rate_set_per_step_reaches_the_optimizer():
    trainer = Trainer(small_config(schedule={"name": "multistep", "milestones": [1], "gamma": 0.5},
                                   optim={"lr": 0.2}))
    trainer.train_epoch(0)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.2)
    trainer.train_epoch(1)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.1)


def test_two_forward_dlb_trains():
    metrics = train(small_config(method={"name": "dlb", "forwards": 2}, train={"epochs": 4, "progress": False}))
    assert metrics["test_top1"] > 40


def test_torch_compile_trains_like_eager_within_float_tolerance():
    """``train.compile`` changes how the arithmetic is grouped, never what is computed: after an epoch of DLB
    (conv, batch norm, replayed rows) the weights, losses and test figures agree with eager to float rounding."""
    runs = {}
    for compiled in (False, True):
        trainer = Trainer(small_config(method={"name": "dlb"}, model={"name": "cnn"},
                                       train={"epochs": 1, "compile": compiled, "progress": False}))
        runs[compiled] = (trainer.fit(), trainer.history[-1], trainer.model.state_dict())
    (eager, eager_log, eager_w), (comp, comp_log, comp_w) = runs[False], runs[True]
    assert eager_w.keys() == comp_w.keys()
    for key in eager_w:
        assert torch.allclose(eager_w[key].float(), comp_w[key].float(), rtol=1e-4, atol=1e-5), key
    for term in ("ce", "dlb_kl"):
        assert comp_log[term] == pytest.approx(eager_log[term], rel=1e-4)
    assert comp["test_nll"] == pytest.approx(eager["test_nll"], rel=1e-4)
    assert abs(comp["test_top1"] - eager["test_top1"]) <= 100 * 1 / 64  # a near-tie may flip one image


def test_progress_bar_on_a_terminal_and_plain_lines_otherwise(capsys):
    from selfdistill.engine.progress import Progress

    row = {"epoch": 1, "lr": 0.1, "ce": 0.5, "train_top1": 80.0, "test_top1": 81.0, "test_nll": 0.4,
           "test_ece": 2.0, "images_per_s": 1000.0, "seconds": 1.0}
    bar = Progress(True, is_main=True)
    bar.start_epoch(0, 1, steps=4)
    assert bar.wants_stats
    bar.update(2, {"loss": 0.5})
    assert bar._bar.n == 2 and "loss" in str(bar._bar)
    bar.end_epoch(row, ("ce",), 1)
    plain = Progress(False, is_main=True)
    plain.start_epoch(0, 1, steps=4)
    assert not plain.wants_stats
    plain.end_epoch(row, ("ce",), 1)
    out = capsys.readouterr()
    assert "0/4" in out.err  # the bar was drawn on stderr
    assert out.out.count("epoch 1/1 | lr 0.1 | loss ce 0.5000 | train 80.00% | test 81.00%") == 2
    silent = Progress(False, is_main=False)
    silent.end_epoch(row, ("ce",), 1)
    assert capsys.readouterr().out == ""  # other ranks print nothing


@pytest.mark.parametrize("optim", [{"name": "sgd", "nesterov": True, "weight_decay": 5e-4},
                                   {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05}], ids=["sgd", "adamw"])
def test_optimisers_step_every_parameter_at_once_with_the_same_weights_as_one_by_one(optim, monkeypatch):
    """foreach on a CPU (fused on CUDA): fewer calls per step, and on a CPU bit for bit the per-parameter step,
    so resumed and repeated runs keep matching across the change."""
    assert step_kernels(torch.device("cuda")) == {"fused": True}
    weights = []
    for kernels in (None, {"foreach": False}):
        if kernels is not None:
            monkeypatch.setattr("selfdistill.engine.optim.step_kernels", lambda device, kernels=kernels: kernels)
        trainer = Trainer(small_config(method={"name": "dml"}, optim=optim, model={"name": "cnn"},
                                       train={"threads": 1}))
        assert all(net.optimizer.defaults["foreach"] is (kernels is None) for net in trainer.nets)
        trainer.train_epoch(0)
        weights.append([p.detach().clone() for net in trainer.nets for p in net.model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*weights))
