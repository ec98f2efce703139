"""``selfdistill bench``: it builds the trainer ``train`` would, times it beside a bare loop on the same
model and layout, prints a table or JSON, writes nothing, and refuses bad input with one line."""

import argparse
import json

import pytest
import torch

from conftest import cli_main, small_config
from selfdistill import cli
from selfdistill.commands.bench import BareLoop, format_bench, run_bench
from selfdistill.engine import Trainer, train
from selfdistill.engine.networks import FrozenNetwork

# 64 synthetic 8x8 images, batch 16: 2 steps cover half of them, --steps 10 more than all
SYNTH = ["--dataset", "synthetic", "--model", "mlp", "--batch-size", "16", "--threads", "1",
         "--set", "data.synthetic={train_size: 64, test_size: 48, size: 8}", "--set", "data.eval_batch_size=32"]


def bench(capsys, tmp_path, monkeypatch, *args: str) -> tuple[int, str, list[str]]:
    monkeypatch.chdir(tmp_path)
    code, out, err = cli_main(capsys, "bench", *SYNTH, *args)
    assert list(tmp_path.iterdir()) == []  # nothing written, not even runs/
    return code, out, err


def test_bench_prints_the_table_and_writes_nothing(capsys, tmp_path, monkeypatch):
    code, out, err = bench(capsys, tmp_path, monkeypatch, "--steps", "2", "--repeats", "1")
    assert code == 0 and err == []
    lines = out.splitlines()
    assert lines[0] == "ce on synthetic with mlp, batch 16: medians of 1 rounds of 2 steps (after 1 warm-up round)"
    rows = {name: line for line in lines for name in ("train (engine)", "train (bare loop)", "engine / bare",
                                                      "step overhead", "eval (engine)") if line.startswith(name)}
    assert len(rows) == 5
    assert "µs per step: engine " in rows["step overhead"] and "% of the bare step)" in rows["step overhead"]
    assert "16 rows forwarded per step" in rows["train (engine)"]
    assert "32 test images, batch 32" in rows["eval (engine)"]
    assert "machine: cpu (" in out and ", 1 thread, " in out
    assert f"torch {torch.__version__}, fp32, NCHW" in out
    assert "load average (1 min)" in out and "indicative" in out


def test_bench_json_has_every_figure(capsys, tmp_path, monkeypatch):
    code, out, _ = bench(capsys, tmp_path, monkeypatch, "--steps", "2", "--repeats", "2", "--json",
                         "--set", "train.channels_last=true")
    result = json.loads(out)
    assert code == 0
    assert result["steps"] == 2 and result["repeats"] == 2 and result["rows_per_step"] == 16
    assert result["eval_images"] == 32 and result["channels_last"] is True and result["amp"] is False
    assert result["threads"] == 1 and result["torch"] == torch.__version__ and result["device"] == "cpu"
    assert result["cpus"] >= 1 and result["networks"] == ["student"] and result["teachers"] == []
    for key in ("train", "bare", "eval"):
        assert len(result["rounds"][key]) == 2 and all(v > 0 for v in result["rounds"][key])
    assert result["train_images_per_s"] == pytest.approx(sum(result["rounds"]["train"]) / 2)  # median of two
    assert result["engine_over_bare"] == pytest.approx(result["train_images_per_s"] / result["bare_images_per_s"])
    for key in ("train_step_us", "bare_step_us"):  # medians of the rounds' times per step
        assert len(result["rounds"][key]) == 2 and result[key] == pytest.approx(sum(result["rounds"][key]) / 2)
    assert result["step_overhead_us"] == pytest.approx(result["train_step_us"] - result["bare_step_us"])
    assert result["step_overhead_of_bare"] == pytest.approx(result["step_overhead_us"] / result["bare_step_us"])
    # 2 steps of 16 images a round: a step's time is the round's time over its steps, on both sides
    for speed, step in (("train", "train_step_us"), ("bare", "bare_step_us")):
        for images_per_s, us in zip(result["rounds"][speed], result["rounds"][step]):
            assert us == pytest.approx(1e6 * 16 / images_per_s, rel=1e-6)


def test_bench_counts_every_forwarded_row_and_never_more_steps_than_the_data(capsys, tmp_path, monkeypatch):
    code, out, _ = bench(capsys, tmp_path, monkeypatch, "--method", "dlb", "--steps", "10", "--repeats", "1",
                         "--json")
    result = json.loads(out)
    assert code == 0 and result["method"] == "dlb"
    assert result["steps"] == 4  # 64 images at batch 16
    assert result["rows_per_step"] == 32  # DLB forwards the previous batch's rows again with every batch


def test_the_bare_loop_starts_from_the_students_weights_in_the_engines_layout():
    trainer = Trainer(small_config(train={"channels_last": True, "progress": False}, model={"name": "cnn"},
                                   data={"synthetic": {"train_size": 32, "size": 8}}))
    bare = BareLoop(trainer)
    engine = trainer.model.state_dict()
    for name, value in bare.model.state_dict().items():
        assert torch.equal(engine[name], value) and engine[name].stride() == value.stride(), name
    conv = next(p for p in bare.model.parameters() if p.dim() == 4 and p.shape[1] > 1)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert bare.run(0) > 0


def test_the_bare_loop_forwards_each_frozen_teacher_once_per_step_like_the_engine(tmp_path, monkeypatch):
    train(small_config(train={"epochs": 1, "progress": False, "threads": 1}), tmp_path / "teacher")
    calls = []
    forward = FrozenNetwork.__call__

    def counted(self, inputs):
        calls.append((self, len(inputs)))
        return forward(self, inputs)

    monkeypatch.setattr(FrozenNetwork, "__call__", counted)
    for teachers in ([str(tmp_path / "teacher")] * 2, []):
        trainer = Trainer(small_config(method={"name": "kd" if teachers else "ce"}, teachers=teachers))
        bare = BareLoop(trainer)
        calls.clear()
        assert bare.run(0) > 0
        assert calls == [(t, 16) for _ in range(trainer.steps) for t in trainer.teachers]  # the engine's teachers
        result = run_bench(trainer.config, steps=2, repeats=1)
        assert result["bare_loop"].endswith(" (+ 2 teacher forwards)" if teachers else " alone")
        assert result["bare_loop"] in format_bench(result)


@pytest.mark.parametrize("args, expected", [
    (["--steps", "0"], "--steps=0 is not allowed; allowed: an integer >= 1"),
    (["--repeats", "-1"], "--repeats=-1 is not allowed"),
    (["--model", "resnet2"], "model.name='resnet2' is not allowed"),
    (["--set", "train.threads=0"], "train.threads=0 is not allowed"),
    (["--out", "x"], "unrecognized arguments: --out"),
    (["--stesp", "3"], "did you mean '--steps'?"),
    (["--method", "kd"], "teacher"),
])
def test_bad_input_is_one_line_exit_2(capsys, tmp_path, monkeypatch, args, expected):
    code, out, err = bench(capsys, tmp_path, monkeypatch, *args)
    assert code == 2 and out == ""
    assert len(err) == 1 and err[0].startswith("selfdistill: error: ") and expected in err[0], err


def test_bench_takes_trains_flags_and_says_each_default():
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    train, bench = ({a.dest: a for a in sub.choices[name]._actions} for name in ("train", "bench"))
    assert all(bench[flag] is train[flag] for flag in cli.BENCH_FLAGS)
    for action in bench.values():
        if action.option_strings and action.dest != "help":
            assert action.help and "default" in action.help, action.option_strings[0]


def test_a_line_per_round_goes_to_say_and_a_busy_machine_is_named():
    lines = []
    result = run_bench(small_config(), steps=2, repeats=2, say=lines.append)
    assert [line.split(":")[0] for line in lines] == ["round 0/2 (warm-up)", "round 1/2", "round 2/2"]
    assert "load average (1 min)" in format_bench(result)
    busy = format_bench({**result, "load_1min": 3.0, "usable_cpus": 2, "cpus": 4})
    assert "load average (1 min) 3.00 on 2 CPUs: the machine is busy" in busy
    assert ", 4 CPUs (2 usable)," in busy
    assert "load average" not in format_bench({**result, "load_1min": None})
    assert "OMP_WAIT_POLICY=PASSIVE" in format_bench({**result, "omp_wait_policy": "passive"})
    assert "OMP_WAIT_POLICY" not in format_bench({**result, "omp_wait_policy": "default"})
