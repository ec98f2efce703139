"""The command line: listing, one-line errors with exit code 2, a real run, divergence."""

import json

import pytest

from conftest import run_cli

TINY = ["--set", "data.train_subset=1000", "--set", "data.eval_batch_size=500"]


def test_methods_lists_one_line_each():
    result = run_cli("methods")
    lines = result.stdout.strip().splitlines()
    names = [line.split()[0] for line in lines]
    assert result.returncode == 0 and names == ["ce", "dlb", "drg", "dsr", "tf_nkd", "zipf_ls", "bake", "ls", "cs_kd",
                                                "ps_kd", "tf_kd_self", "tf_kd_reg", "byot", "lightskd"]
    assert all(len(line.split()) > 3 for line in lines)


@pytest.mark.parametrize("args, field", [
    (["--method", "nope"], "method.name"),
    (["--model", "nope"], "model.name"),
    (["--dataset", "nope"], "data.dataset"),
    (["--epochs", "-3"], "train.epochs"),
    (["--label-noise", "1.5"], "data.label_noise"),
    (["--method", "dlb", "--batch-size", "1"], "data.batch_size"),
    (["--set", "train.nope=1"], "train.nope"),
    (["--set", "method.alpha=2"], "method.alpha"),  # ce has no options
    (["--epochs", "three"], "--epochs"),
    (["--config", "/no/such.yaml"], "--config"),
    (["--resume", "--out", "/no/such/run"], "nothing to resume"),
    (["--method", "drg", "--set", "method.stage=layer9"], "method.stage"),
    (["--method", "byot", "--model", "mlp"], "byot"),
    (["--method", "bake+cs_kd"], "sampler"),
    (["--method", "ps_kd", "--set", "data.mix.name=cutmix"], "data.mix"),
    (["--method", "tf_kd_self"], "method.teacher"),
])
def test_bad_input_is_one_line_with_exit_code_2(args, field, tmp_path):
    result = run_cli("train", "--out", str(tmp_path / "run"), *args) if "--out" not in args else run_cli("train", *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and field in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_missing_dataset_is_one_line_with_exit_code_2(tmp_path):
    result = run_cli("train", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--set", "data.download=false",
                     "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "cifar-10-batches-py" in result.stderr


def test_train_on_real_bundled_images_then_refuse_to_overwrite(tmp_path):
    out = tmp_path / "run"
    result = run_cli("train", "--method", "dlb", "--epochs", "1", "--seed", "3", "--out", str(out), *TINY)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["seed"] == 3 and metrics["method"] == "dlb" and metrics["test_top1"] > 15  # chance: 10%
    before = (out / "metrics.json").read_bytes()
    again = run_cli("train", "--method", "dlb", "--epochs", "1", "--out", str(out), *TINY)
    assert again.returncode == 2 and "--resume" in again.stderr
    assert (out / "metrics.json").read_bytes() == before
    finished = run_cli("train", "--out", str(out), "--resume")  # a finished run: nothing to do, nothing changes
    assert finished.returncode == 0 and (out / "metrics.json").read_bytes() == before
    mismatch = run_cli("train", "--out", str(out), "--resume", "--set", "method.alpha=0.3")
    assert mismatch.returncode == 2 and "method.alpha" in mismatch.stderr


def test_print_config_applies_config_file_flags_and_sets_in_order(tmp_path):
    result = run_cli("train", "--config", "dlb_cifar100", "--epochs", "5", "--set", "method.alpha=0.5",
                     "--print-config")
    assert result.returncode == 0
    assert "alpha: 0.5" in result.stdout and "epochs: 5" in result.stdout and "milestones:" in result.stdout


def test_divergence_exits_3_and_says_what_was_kept(tmp_path):
    result = run_cli("train", "--lr", "1e30", "--epochs", "2", "--out", str(tmp_path / "run"), *TINY)
    assert result.returncode == 3 and "non-finite" in result.stderr and "nothing was kept" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_module_entry_point_and_version():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("selfdistill ")


def test_report_summarises_finished_runs(tmp_path):
    for seed in (0, 1):
        result = run_cli("train", "--epochs", "1", "--seed", str(seed), "--out", str(tmp_path / f"s{seed}"), *TINY)
        assert result.returncode == 0, result.stderr
    report = run_cli("report", str(tmp_path))
    assert report.returncode == 0
    row = next(line for line in report.stdout.splitlines() if line.startswith("| fashion-mnist-mini"))
    assert "| ce |" in row and "| 2 |" in row and "±" in row
    assert run_cli("report", str(tmp_path / "nothing")).returncode == 2
