"""Every bad input ends with exit code 2, one line on stderr that names what is wrong, and nothing
written: each case of the fault list, end to end through the command line (in this process, so the
suite stays fast). The data readers' own cases are in test_data_faults.py."""

from __future__ import annotations

import errno
import gzip
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import cli_main
from selfdistill.data.catalog import IDX_FILES
from selfdistill.data.idx import write_idx

RUN = ["--dataset", "synthetic", "--model", "mlp", "--epochs", "1", "--set", "data.synthetic.train_size=64",
       "--set", "data.synthetic.test_size=32", "--set", "data.synthetic.size=8", "--set", "train.tensorboard=false"]


def idx_root(root: Path, n_train: int = 40, size: int = 28) -> Path:
    (root / "fashion-mnist").mkdir(parents=True)
    arrays = [torch.zeros(n_train, size, size, dtype=torch.uint8), torch.arange(n_train, dtype=torch.uint8) % 10,
              torch.zeros(20, size, size, dtype=torch.uint8), torch.arange(20, dtype=torch.uint8) % 10]
    for name, array in zip(IDX_FILES, arrays):
        write_idx(root / "fashion-mnist" / name, array)
    return root


def cifar_root(root: Path, labels: object) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": labels}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return root


def finished_run(tmp_path: Path, capsys) -> Path:
    run = tmp_path / "done"
    assert cli_main(capsys, "train", *RUN, "--out", str(run))[0] == 0
    return run


# each case: (id, function of (tmp_path, capsys) -> arguments after "train", text the line must contain)
def config_file(content: bytes | None):
    def make(tmp, capsys):
        path = tmp / "c.yaml"
        if content is None:
            path.mkdir()
        else:
            path.write_bytes(content)
        return ["--config", str(path)]
    return make


def data_dir_file(tmp, capsys):
    (tmp / "afile").write_text("x")
    return ["--dataset", "fashion-mnist", "--data-dir", str(tmp / "afile")]


def resume_with(config_text: bytes):
    """A run killed before its first checkpoint (config.yaml is all it has), its config.yaml damaged."""
    def make(tmp, capsys):
        run = tmp / "killed"
        run.mkdir()
        (run / "config.yaml").write_bytes(config_text)
        return ["--out", str(run), "--resume"]
    return make


def checkpoint_edit(edit):
    def make(tmp, capsys):
        run = finished_run(tmp, capsys)
        (run / "metrics.json").unlink()
        state = torch.load(run / "checkpoint.pt", weights_only=True)
        edit(state)
        torch.save(state, run / "checkpoint.pt")
        return ["--out", str(run), "--resume"]
    return make


def other_weights(state):
    state["model"] = {k + "_other": v for k, v in state["model"].items()}


def resume_without_checkpoint(tmp, capsys):
    run = finished_run(tmp, capsys)
    (run / "checkpoint.pt").unlink()
    return ["--out", str(run), "--resume"]


def foreign_folder(tmp, capsys):
    folder = tmp / "mine"
    folder.mkdir()
    for name, text in ((".notes.abcdef.tmp", "x"), (".lock", "y"), ("mine.txt", "z")):
        (folder / name).write_text(text)
    return [*RUN, "--out", str(folder)]


def out_under_a_file(tmp, capsys):
    (tmp / "afile").write_text("x")
    return [*RUN, "--out", str(tmp / "afile" / "run")]


CASES = [
    ("binary config", config_file(b"train:\x00\x01\x02"), "binary"),
    ("non-UTF-8 config", config_file("train: {epochs: 3}  # \u00e9".encode("latin-1")), "not UTF-8"),
    ("directory config", config_file(None), "is a directory"),
    ("duplicate key in config", config_file(b"train:\n  epochs: 3\n  epochs: 4\n"), "given twice"),
    ("python tag in config", config_file(b"train: !!python/object/apply:os.system [ls]\n"), "not valid YAML"),
    ("list config", config_file(b"- train\n- epochs\n"), "mapping"),
    ("tagged value the tag cannot hold in config", config_file(b"optim:\n  lr: !!float abc\n"),
     "not valid YAML (!!float cannot hold 'abc'"),
    ("!!timestamp of no time in config", config_file(b"train: {seed: !!timestamp x}\n"), "!!timestamp cannot hold"),
    *[(f"--set {value}", lambda t, c, v=value: [*RUN, "--set", f"optim.lr={v}"], f"--set 'optim.lr={value}': not valid")
      for value in ("!!int x", "!!float abc", "!!timestamp x", "!!set 5", "!!bool maybe")],
    ("seed beyond 64 bits", lambda t, c: [*RUN, "--seed", str(2**64)], "train.seed"),
    ("negative seed", lambda t, c: [*RUN, "--seed", "-1"], "train.seed"),
    ("threads 100000", lambda t, c: [*RUN, "--threads", "100000"], "train.threads"),
    ("non-finite lr", lambda t, c: [*RUN, "--lr", "nan"], "optim.lr"),
    ("infinite weight decay", lambda t, c: [*RUN, "--set", "optim.weight_decay=.inf"], "optim.weight_decay"),
    ("infinite lr in scientific notation", lambda t, c: [*RUN, "--set", "optim.lr=1e999"], "optim.lr"),
    *[(f"lr {lr} beyond float32", lambda t, c, v=lr: [*RUN, "--lr", v], f"optim.lr={float(lr)!r} is not allowed; "
       "allowed: a number within ±3.403e+38 (float32") for lr in ("1e300", "3.5e38")],
    ("peer lr beyond float32", lambda t, c: [*RUN, "--method", "dml", "--set", "method.peers=[mlp]", "--set",
                                             "roles.peer1.optim.lr=1e300"], "roles.peer1.optim.lr='1e300'"),
    ("method option beyond float32", lambda t, c: [*RUN, "--method", "dlb", "--set", "method.temperature=1e300"],
     "method.temperature='1e300' is not allowed"),
    ("integer lr beyond a float", lambda t, c: [*RUN, "--set", f"optim.lr={10**400}"], "a finite number"),
    ("epochs beyond 64 bits", lambda t, c: [*RUN, "--set", f"train.epochs={10**400}"], "within ±2**63"),
    ("gamma that takes the lr beyond float32", lambda t, c: [*RUN, "--epochs", "3", "--set",
                                                             "schedule={name: multistep, milestones: [1, 2], "
                                                             "gamma: 1e30}"], "x gamma^2 milestones is about 1e59"),
    ("subset = training set", lambda t, c: [*RUN, "--train-subset", "64"], "data.train_subset"),
    ("subset > training set", lambda t, c: [*RUN, "--train-subset", "65"], "data.train_subset"),
    ("validation split = training set", lambda t, c: [*RUN, "--set", "data.validation_split=64"],
     "data.validation_split"),
    ("subset beyond what the split leaves", lambda t, c: [*RUN, "--set", "data.validation_split=32",
                                                          "--train-subset", "40"], "data.train_subset"),
    ("images too small for the model", lambda t, c: [*RUN, "--model", "cnn", "--set", "data.synthetic.size=2"],
     "cannot take 1x2x2 images"),
    ("data dir is a file", data_dir_file, "is not a directory"),
    ("IDX with zero images", lambda t, c: ["--dataset", "fashion-mnist", "--data-dir",
                                           str(idx_root(t / "root", n_train=0))], "holds no images"),
    ("test images of another shape", lambda t, c: _idx_other_test_shape(t), "test images are 1x20x20"),
    ("CIFAR labels negative", lambda t, c: ["--dataset", "cifar10", "--data-dir", str(cifar_root(t / "r", [-1, 0]))],
     "labels"),
    ("CIFAR labels strings", lambda t, c: ["--dataset", "cifar10", "--data-dir", str(cifar_root(t / "r", ["a", "b"]))],
     "labels"),
    ("CIFAR labels None", lambda t, c: ["--dataset", "cifar10", "--data-dir", str(cifar_root(t / "r", None))],
     "labels"),
    ("CIFAR labels huge", lambda t, c: ["--dataset", "cifar10", "--data-dir", str(cifar_root(t / "r", [2**70, 0]))],
     "labels"),
    ("corrupt config.yaml on resume", resume_with(b"train: [unclosed\n"), "config.yaml: not valid YAML"),
    ("list config.yaml on resume", resume_with(b"- 1\n- 2\n"), "mapping"),
    ("python-tagged config.yaml on resume", resume_with(b"train: !!python/name:os.system\n"), "not valid YAML"),
    *[(f"checkpoint without {key}", checkpoint_edit(lambda s, k=key: s.pop(k)), f"lacks '{key}'")
      for key in ("config", "model", "extras", "optimizer", "method", "history", "epoch", "images_seen")],
    *[(f"checkpoint with a bad {key}", checkpoint_edit(lambda s, k=key, v=value: s.update({k: v})), f"'{key}' is")
      for key, value in (("config", [1]), ("method", {"a": 1}), ("history", "rows"), ("metrics", [1]),
                         ("train_seconds", float("nan")), ("epoch", True))],
    ("checkpoint with bad log rows", checkpoint_edit(lambda s: s.update(history=[{"epoch": 2}])), "log row 1"),
    ("checkpoint whose config no longer resolves", checkpoint_edit(lambda s: s["config"]["optim"].update(lr=-1)),
     "optim.lr"),
    ("checkpoint of another model", checkpoint_edit(other_weights), "does not fit this run"),
    ("checkpoint that is not one", checkpoint_edit(lambda s: s.clear()), "checkpoint"),
    ("finished run without checkpoint", resume_without_checkpoint, "no checkpoint.pt to continue from"),
    ("out under a file", out_under_a_file, "cannot be created"),
    ("nested out with bad input", lambda t, c: [*RUN, "--train-subset", "64", "--out", str(t / "a" / "b" / "c")],
     "data.train_subset"),
    ("out holding foreign files", foreign_folder, "not a selfdistill run (.notes.abcdef.tmp, ...)"),
    ("dist timeout beyond a week", lambda t, c: [*RUN, "--set", "train.dist_timeout=1e15"], "train.dist_timeout"),
    ("more processes than CPUs", lambda t, c: [*RUN, "--nproc", "100000"], "--nproc"),
    ("tf_kd_self without teacher", lambda t, c: [*RUN, "--method", "tf_kd_self"], "needs a teacher, got 0"),
    ("unknown method", lambda t, c: [*RUN, "--method", "dlbb"], "did you mean 'dlb'"),
    ("unknown key", lambda t, c: [*RUN, "--set", "optim.lrr=0.1"], "did you mean 'lr'"),
    # online distillation: roles, cohorts, the networks' architectures
    ("role name that is no role", lambda t, c: [*RUN, "--method", "dml", "--set", "roles.Peer1.optim.lr=0.1"],
     "roles='Peer1' is not allowed"),
    ("option for a role the method lacks", lambda t, c: [*RUN, "--method", "dml", "--set", "roles.teacher.optim.lr=1"],
     "roles.teacher: method dml has no network of that role; the roles that take settings: student, peer1"),
    ("settings for an online run's ensemble", lambda t, c: [*RUN, "--method", "dml", "--set",
                                                            "roles.ensemble.optim.lr=0.1"],
     "roles.ensemble: 'ensemble' is not a network but the averaged predictions of an online run's networks"),
    ("settings for a frozen teacher", lambda t, c: [*RUN, "--method", "kd", "--teacher", str(finished_run(t, c)),
                                                    "--set", "roles.teacher.optim.lr=0.1"],
     "roles.teacher: the teacher network is frozen (a --teacher), so it has no optimiser or schedule; the roles that "
     "take settings: student"),
    ("role option for a single-network method", lambda t, c: [*RUN, "--set", "roles.peer1.optim.lr=0.1"],
     "roles.peer1: method ce has no network of that role"),
    ("unknown section of a role", lambda t, c: [*RUN, "--method", "dml", "--set", "roles.peer1.lr=0.1"],
     "unknown config key 'roles.peer1.lr'"),
    ("bad value for a role", lambda t, c: [*RUN, "--method", "dml", "--set", "roles.peer1.optim.lr=-1"],
     "roles.peer1.optim.lr=-1.0 is not allowed"),
    ("cohort of one", lambda t, c: [*RUN, "--method", "dml", "--set", "method.peers=[]"], "at least 2 networks"),
    ("unknown peer architecture", lambda t, c: [*RUN, "--method", "dml", "--set", "method.peers=[resnet21]"],
     "method.peers"),
    ("peer that cannot take the images", lambda t, c: [*RUN, "--method", "dml", "--set", "method.peers=[cnn]",
                                                       "--set", "data.synthetic.size=2"],
     "the peer1 network (cnn) cannot take 1x2x2 images"),
    ("online teacher without architecture", lambda t, c: [*RUN, "--method", "switokd"], "method.teacher_model"),
    ("online method with a single-network member", lambda t, c: [*RUN, "--method", "dml+byot"],
     "byot cannot run on each network of dml"),
    ("two online methods", lambda t, c: [*RUN, "--method", "dml+bd_kd", "--set", "method.bd_kd.teacher_model=mlp"],
     "combine at most one online method"),
]


def _idx_other_test_shape(tmp: Path) -> list[str]:
    root = idx_root(tmp / "root")
    write_idx(root / "fashion-mnist" / IDX_FILES[2], torch.zeros(20, 20, 20, dtype=torch.uint8))
    return ["--dataset", "fashion-mnist", "--data-dir", str(root)]


def snapshot(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("make, expected", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, make, expected):
    args = make(tmp_path, capsys)
    if "--out" not in args:
        args = [*args, "--out", str(tmp_path / "run")]
    before = snapshot(tmp_path)
    code, _, err = cli_main(capsys, "train", *args)
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("selfdistill: error: ") and expected in err[0], err
    assert snapshot(tmp_path) == before  # nothing written, nothing removed
    assert not (tmp_path / "run").exists()


def test_a_read_only_out_is_one_line(tmp_path, capsys, monkeypatch):
    read_only = tmp_path / "ro"
    read_only.mkdir()
    original = os.open

    def refuse(path, *args, **kwargs):  # tests run as root, whom permission bits do not stop: refuse as a
        if str(path).startswith(str(read_only)):  # read-only file system would
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    code, _, err = cli_main(capsys, "train", *RUN, "--out", str(read_only))
    assert code == 2 and len(err) == 1 and "not writable" in err[0] and "Read-only file system" in err[0]
    assert list(read_only.iterdir()) == []


@pytest.mark.parametrize("spelling", ["1e-3", "1E-3", "0.1e-2", "1_0e-4", " 1e-3 "])
def test_every_float_spelling_is_accepted(tmp_path, capsys, spelling):
    code, out, _ = cli_main(capsys, "train", "--set", f"optim.lr={spelling}", "--set", "optim.weight_decay=5e-4",
                            "--print-config")
    assert code == 0 and f"lr: {float(spelling)}" in out and "weight_decay: 0.0005" in out
    (tmp_path / "c.yaml").write_text("optim:\n  lr: 1e-3\n  weight_decay: 5E-4\n")
    code, out, _ = cli_main(capsys, "train", "--config", str(tmp_path / "c.yaml"), "--print-config")
    assert code == 0 and "lr: 0.001" in out


def test_report_on_malformed_runs_is_one_line(tmp_path, capsys):
    run = finished_run(tmp_path, capsys)
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    (broken / "metrics.json").write_text("{not json")
    code, _, err = cli_main(capsys, "report", str(broken))
    assert code == 2 and len(err) == 1 and "metrics.json" in err[0]
    (broken / "metrics.json").write_bytes((run / "metrics.json").read_bytes())
    (broken / "log.csv").unlink()
    code, _, err = cli_main(capsys, "report", str(broken))
    assert code == 2 and len(err) == 1 and "log.csv" in err[0]


def test_a_gzip_idx_that_is_not_gzip_is_one_line(tmp_path, capsys):
    root = idx_root(tmp_path / "root")
    (root / "fashion-mnist" / IDX_FILES[0]).write_bytes(gzip.compress(b"\x00\x00\x08")[:-4])
    code, _, err = cli_main(capsys, "train", "--dataset", "fashion-mnist", "--data-dir", str(root),
                            "--out", str(tmp_path / "run"))
    assert code == 2 and len(err) == 1 and IDX_FILES[0] in err[0]
