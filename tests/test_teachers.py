"""Frozen teachers on the engine: each promise of models/teachers.py and engine/networks.py, checked where it
could break. A test-only method (``probe``) records what the engine hands a teacher-using method and
compares it with what the teacher network itself received."""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import random
import shutil
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import cli_main, ctrl_c_in_epoch, small_config
from selfdistill import methods
from selfdistill.engine import Trainer
from selfdistill.engine.trainer import train
from selfdistill.errors import UserError
from selfdistill.losses import cross_entropy
from selfdistill.methods import Method
from selfdistill.models import build_model, model_names
from selfdistill.models.teachers import DataShape, TeacherSpec, load_teacher, parse_teacher

# the data every teacher and student here sees (conftest's small_config), as command-line flags
DATA = ["--dataset", "synthetic", "--batch-size", "16", "--set", "data.synthetic={train_size: 96, test_size: 64, "
        "size: 12}", "--set", "data.eval_batch_size=64", "--set", "train.tensorboard=false"]
TINY = [*DATA, "--model", "mlp", "--epochs", "1"]
SHAPE = DataShape(10, 1, 12, [0.5], [0.25])  # classes, channels, side, mean, std
# one thread: the machine's cores are shared; on the CPU, as the reference computations below (a CUDA run is bf16)
FAST = {"progress": False, "tensorboard": False, "threads": 1, "device": "cpu"}


class Probe(Method):
    """Test-only: a teacher-using method that records, each step, the rows it trains on and the teacher
    outputs it gets, and the teacher network's own forward calls since the previous step."""

    name = "probe"
    term_names = ("probe_kd",)
    teachers_needed = (1, None)
    tap = "layer2"

    def __init__(self, options=None):
        super().__init__(options)
        self.calls: list[dict] = []  # the teacher module's forward calls since the last step (see hook)
        self.steps: list[dict] = []

    def setup(self, ctx):
        self.ctx_teachers = list(ctx.teachers)

    def teacher_taps(self):
        return [(self.tap,)]

    def hook(self, module, args, output):
        self.calls.append({"input": args[0].clone(), "training": any(m.training for m in module.modules()),
                           "inference": torch.is_inference_mode_enabled()})

    def start_epoch(self, epoch):
        self.calls.clear()  # the probe in the constructor and the evaluations between epochs are not steps

    def losses(self, out, batch):
        teacher = out.teachers[0]
        self.steps.append({"inputs": batch.inputs.detach().clone(), "calls": list(self.calls), "parts": batch.parts,
                           "logits": teacher.logits.clone(), "features": teacher.features[self.tap].clone(),
                           "inference": teacher.logits.is_inference(), "requires_grad": teacher.logits.requires_grad,
                           "rows": len(batch), "splits": batch.forward_splits(), "teachers": out.teachers})
        self.calls.clear()
        # products save the teacher's tensors for backward: an inference tensor would fail here
        return {"probe_kd": 1e-3 * (out.logits * teacher.logits.softmax(1)).sum()
                + 1e-3 * out.logits.mean() * teacher.features[self.tap].mean()}


class NeedsTwo(Probe):
    name = "needs_two"
    teachers_needed = (2, None)


@pytest.fixture
def probe_registered(monkeypatch):
    monkeypatch.setitem(methods.METHODS, Probe.name, Probe)
    monkeypatch.setitem(methods.METHODS, NeedsTwo.name, NeedsTwo)


@pytest.fixture(scope="module")
def cnn_teacher(tmp_path_factory) -> Path:
    """A finished CE run of the cnn (batch norm: running statistics a wrong mode would change)."""
    out = tmp_path_factory.mktemp("teachers") / "cnn"
    train(small_config(model={"name": "cnn"}, train={**FAST, "epochs": 1}), out)
    return out


@pytest.fixture(scope="module")
def mlp_teacher(tmp_path_factory) -> Path:
    """A finished CE run of the student's own architecture (Tf-KD_self's teacher)."""
    out = tmp_path_factory.mktemp("teachers") / "mlp"
    train(small_config(train={**FAST, "epochs": 2}), out)
    return out


def probe_trainer(teacher: Path, method: dict | None = None, epochs: int = 2) -> tuple[Trainer, Probe]:
    trainer = Trainer(small_config(method=method or {"name": "probe"}, teachers=[str(teacher)],
                                   train={**FAST, "epochs": epochs}))
    probe = next(m for m in trainer.method.members if isinstance(m, Probe))
    trainer.teachers[0].module.register_forward_hook(probe.hook)
    return trainer, probe


def reference_net(teacher: Path, arch: str = "cnn") -> tuple[torch.nn.Module, dict]:
    """The teacher rebuilt from its file, apart from the engine, with a hook on the tapped layer."""
    net = build_model(arch, 10, 1, 12)
    net.load_state_dict(torch.load(teacher / "model.pt", weights_only=True))
    tapped: dict = {}
    getattr(net, Probe.tap).register_forward_hook(lambda m, a, o: tapped.update(out=o))
    return net.eval(), tapped


# ----------------------------------------------------------------------------- one forward, same rows
@pytest.mark.parametrize("method", [{"name": "probe"}, {"name": "probe+dlb", "dlb": {"forwards": 2}}],
                         ids=["alone", "with dlb, student forward split"])
def test_teacher_is_forwarded_once_per_step_frozen_on_the_students_rows(cnn_teacher, probe_registered, method):
    trainer, probe = probe_trainer(cnn_teacher, method)
    module = trainer.teachers[0].module
    assert probe.ctx_teachers == [module]  # the method's setup sees the frozen network itself
    assert not module.training and not any(p.requires_grad for p in module.parameters())
    reference, tapped = reference_net(cnn_teacher)
    trainer.fit()
    assert len(probe.steps) == 2 * trainer.steps
    replayed = 0
    for step in probe.steps:
        assert len(step["calls"]) == 1  # exactly one teacher forward per step, however the student's is split
        call = step["calls"][0]
        assert not call["training"] and call["inference"]
        assert torch.equal(call["input"], step["inputs"])  # the same augmented rows, replayed ones included
        assert not step["inference"] and not step["requires_grad"]  # ordinary tensors, no gradient
        assert len(step["logits"]) == len(step["features"]) == step["rows"]
        with torch.no_grad():
            expected = reference(step["inputs"])
        assert torch.allclose(step["logits"], expected, atol=1e-5)  # row for row the teacher's own outputs
        assert torch.allclose(step["features"], tapped["out"], atol=1e-5)  # and its taps, row-aligned
        if "dlb_replay" in step["parts"]:  # DLB's extra rows: the student forwards them apart, the teacher not
            replayed += 1
            assert len(step["splits"]) == 2 and step["rows"] == sum(rows for rows, _ in step["splits"])
    if "dlb" in method["name"]:
        assert replayed == len(probe.steps) - 1  # every step but the first had them


def test_no_gradient_reaches_the_teacher_and_its_state_is_bit_identical(cnn_teacher, probe_registered):
    trainer, probe = probe_trainer(cnn_teacher)
    module = trainer.teachers[0].module
    # as prepared for training: its batch norms folded into the convolutions (test_fold.py), all of them here
    assert trainer.teachers[0].folded and not any(isinstance(m, torch.nn.BatchNorm2d) for m in module.modules())
    before = {key: tensor.clone() for key, tensor in module.state_dict().items()}
    assert any(key.endswith(".bias") for key in before)  # the folded biases are among what is compared
    trainer.fit()
    assert all(p.grad is None for p in module.parameters())
    after = module.state_dict()
    assert before.keys() == after.keys()
    for key, tensor in before.items():
        assert torch.equal(after[key], tensor), key


def test_several_teachers_keep_their_order_and_are_each_measured(cnn_teacher, mlp_teacher, probe_registered,
                                                                 tmp_path):
    out = tmp_path / "student"
    trainer = Trainer(small_config(method={"name": "probe"}, teachers=[str(cnn_teacher), str(mlp_teacher)],
                                   train={**FAST, "epochs": 1}), out)
    assert [t.role for t in trainer.teachers] == ["teacher1", "teacher2"]
    probe = trainer.method.members[-1]
    for teacher in trainer.teachers:
        teacher.module.register_forward_hook(probe.hook)
    reference, _ = reference_net(mlp_teacher, "mlp")
    trainer.fit()
    for step in probe.steps:
        assert [torch.equal(call["input"], step["inputs"]) for call in step["calls"]] == [True, True]  # once each
        assert [len(t.logits) for t in step["teachers"]] == [step["rows"]] * 2
        with torch.no_grad():
            assert torch.allclose(step["teachers"][1].logits, reference(step["inputs"]), atol=1e-5)
    metrics = json.loads((out / "metrics.json").read_text())
    own = [json.loads((t / "metrics.json").read_text())["test_top1"] for t in (cnn_teacher, mlp_teacher)]
    assert metrics["teachers_test_top1"] == own
    assert [t["path"] for t in metrics["teachers"]] == [str(cnn_teacher), str(mlp_teacher)]


# ----------------------------------------------------------------------------- what a run keeps of it
def test_teacher_is_recorded_by_source_and_hash_never_saved(cnn_teacher, probe_registered, tmp_path):
    out = tmp_path / "student"
    Trainer(small_config(method={"name": "probe"}, teachers=[str(cnn_teacher)], train=FAST), out).fit()
    digest = hashlib.sha256((cnn_teacher / "model.pt").read_bytes()).hexdigest()
    expected = [{"path": str(cnn_teacher), "model": "cnn", "weights": str(cnn_teacher / "model.pt"),
                 "sha256": digest}]
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    student = build_model("mlp", 10, 1, 12).state_dict()
    assert checkpoint["model"].keys() == student.keys()  # the mlp student only: no conv or batch-norm keys
    assert checkpoint["extras"] == {}
    assert checkpoint["teachers"] == expected
    assert torch.load(out / "model.pt", weights_only=True).keys() == student.keys()
    assert [k for k in checkpoint if "teacher" in k] == ["teachers"]  # nowhere else, and only its source
    assert json.loads((out / "metrics.json").read_text())["teachers"] == expected


def student_args(teacher: Path) -> list[str]:
    return [*DATA, "--model", "mlp", "--method", "tf_kd_self", "--epochs", "2", "--teacher", str(teacher),
            "--set", "train.deterministic=true", "--set", "train.threads=1"]


def other_weights(teacher: Path, update_card: bool) -> None:
    """Replace the teacher's model.pt by other weights (and, if asked, its card's hash with theirs)."""
    state = torch.load(teacher / "model.pt", weights_only=True)
    torch.save({k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}, teacher / "model.pt")
    if update_card:
        card = json.loads((teacher / "model.json").read_text())
        card["weights_sha256"] = hashlib.sha256((teacher / "model.pt").read_bytes()).hexdigest()
        (teacher / "model.json").write_text(json.dumps(card))


def test_resume_continues_bit_identically_and_refuses_a_changed_teacher(cnn_teacher, tmp_path, capsys, monkeypatch):
    teacher = tmp_path / "teacher"
    shutil.copytree(cnn_teacher, teacher)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert cli_main(capsys, "train", *student_args(teacher), "--out", str(whole))[0] == 0
    with ctrl_c_in_epoch(1):
        assert cli_main(capsys, "train", *student_args(teacher), "--out", str(cut))[0] == 130
    copies = {name: tmp_path / name for name in ("retrained", "overwritten")}
    for folder in copies.values():
        shutil.copytree(cut, folder)

    assert cli_main(capsys, "train", "--out", str(cut), "--resume")[0] == 0
    a, b = (torch.load(d / "model.pt", weights_only=True) for d in (whole, cut))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    fidelity = [{k: v for k, v in json.loads((d / "metrics.json").read_text()).items() if "teacher" in k or
                 "agreement" in k} for d in (whole, cut)]
    assert fidelity[0] == fidelity[1] and fidelity[0]["teachers"][0]["path"] == str(teacher)

    # a teacher trained again (weights and card agree with each other, not with the run)
    other_weights(teacher, update_card=True)
    before = (copies["retrained"] / "checkpoint.pt").read_bytes()
    code, _, err = cli_main(capsys, "train", "--out", str(copies["retrained"]), "--resume")
    assert code == 2 and len(err) == 1 and "is not the file the run was trained with" in err[0], err
    assert (copies["retrained"] / "checkpoint.pt").read_bytes() == before
    # its model.pt overwritten, the card left behind
    other_weights(teacher, update_card=False)
    code, _, err = cli_main(capsys, "train", "--out", str(copies["overwritten"]), "--resume")
    assert code == 2 and len(err) == 1 and "describes other weights" in err[0], err


# ----------------------------------------------------------------------------- bad input: exit 2, one line
class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch ran-code",))


class Custom:
    def __init__(self):
        self.weights = torch.zeros(2)


def _write(path: Path, content) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    return path


TEXT = b"hello\nworld\n"
RANDOM = random.Random(0).randbytes(300)  # fixed: by chance random bytes could open like a pickled global


def _unfinished(tmp, teachers):
    run = tmp / "unfinished"
    shutil.copytree(teachers["mlp"], run)
    (run / "metrics.json").unlink()
    return ["--teacher", str(run)]


def _altered(change, save=_write):
    """A case: the mlp's weights with ``layer1.1.weight`` changed by ``change``, saved by ``save``."""
    def make(tmp, teachers):
        state = build_model("mlp", 10, 1, 12).state_dict()
        state["layer1.1.weight"] = change(state["layer1.1.weight"])
        return ["--teacher", f"{save(tmp / 'w.pt', state)}:mlp"]
    return make


def _csr(weight: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's "in beta state" note
        return weight.to_sparse_csr()


def _pickled(protocol):
    """Saves with pickle.dump instead of torch.save."""
    return lambda path, state: _write(path, pickle.dumps(state, protocol=protocol))


def _weights_of_other_shape(tmp, teachers):
    small = build_model("mlp", 10, 1, 8).state_dict()  # 8x8 inputs: its first layer takes 64 values, not 144
    return ["--teacher", f"{_write(tmp / 'small.pt', small)}:mlp"]


TEACHER_CASES = [
    ("method needing a teacher without one", "tf_kd_self", lambda t, ts: [], "needs a teacher, got 0"),
    ("ce given a teacher", "ce", lambda t, ts: ["--teacher", str(ts["mlp"])], "takes no teacher"),
    ("method needing two given one", "needs_two", lambda t, ts: ["--teacher", str(ts["mlp"])],
     "needs at least 2 teachers, got 1"),
    ("teacher of other classes", "tf_kd_self", lambda t, ts: ["--teacher", str(ts["mlp"]), "--set",
                                                              "data.synthetic.num_classes=5"],
     "predicts 10 classes, the data has 5"),
    ("teacher of other channels (mlp)", "tf_kd_self", lambda t, ts: ["--teacher", str(ts["mlp"]), "--set",
                                                                     "data.synthetic.channels=3"],
     "takes 1-channel images, the data has 3"),
    ("teacher of other channels (cnn)", "tf_kd_self", lambda t, ts: ["--teacher", str(ts["cnn"]), "--set",
                                                                     "data.synthetic.channels=3"],
     "takes 1-channel images, the data has 3"),
    ("random bytes", "tf_kd_self", lambda t, ts: ["--teacher", f"{_write(t / 'r.pt', RANDOM)}:mlp"],
     "is not a readable checkpoint"),
    ("an empty file", "tf_kd_self", lambda t, ts: ["--teacher", f"{_write(t / 'e.pt', b'')}:mlp"],
     "is not a readable checkpoint (EOFError: the file ends early)"),
    ("a text file", "tf_kd_self", lambda t, ts: ["--teacher", f"{_write(t / 'r.txt', TEXT)}:mlp"],
     "is not a readable checkpoint"),
    ("a pickle that would run code", "tf_kd_self", lambda t, ts: ["--teacher", f"{_write(t / 'x.pt', RunsCode())}:mlp"],
     "refused (weights_only)"),
    ("a custom class", "tf_kd_self",
     lambda t, ts: ["--teacher", f"{_write(t / 'c.pt', {'model': Custom()})}:mlp"], "refused (weights_only)"),
    ("integer weights", "tf_kd_self", _altered(lambda w: w.long()),
     "w.pt: layer1.1.weight holds int64 values where the model has floating-point weights"),
    ("boolean weights", "tf_kd_self", _altered(lambda w: w > 0), "layer1.1.weight holds bool values"),
    ("NaN weights", "tf_kd_self", _altered(lambda w: w.index_fill(0, torch.tensor([3]), float("nan"))),
     "w.pt: layer1.1.weight holds 144 NaN or infinite values (of 73,728): the teacher diverged"),
    ("infinite weights", "tf_kd_self", _altered(lambda w: w.index_fill(1, torch.tensor([0]), -float("inf"))),
     "layer1.1.weight holds 512 NaN or infinite values"),
    ("complex weights", "tf_kd_self", _altered(lambda w: torch.complex(w, w)),
     "w.pt: layer1.1.weight holds complex numbers (complex64) where the model's weights are real"),
    ("sparse weights", "tf_kd_self", _altered(lambda w: w.to_sparse()),
     "w.pt: layer1.1.weight is a sparse tensor (sparse_coo): save it dense"),
    ("sparse CSR weights", "tf_kd_self", _altered(_csr), "is a sparse tensor (sparse_csr)"),
    ("meta weights", "tf_kd_self", _altered(lambda w: w.to("meta")),
     "w.pt: layer1.1.weight is a meta tensor, a shape without values"),
    ("a raw pickle (protocol 4, torch warns of it)", "tf_kd_self", _altered(lambda w: w, _pickled(4)),
     "w.pt is a plain Python pickle (pickle.dump), not a file written by torch.save"),
    ("a raw pickle (protocol 2, as torch's legacy format)", "tf_kd_self", _altered(lambda w: w, _pickled(2)),
     "w.pt is a plain Python pickle (pickle.dump), not a file written by torch.save"),
    ("a list of tensors", "tf_kd_self", lambda t, ts: ["--teacher", f"{_write(t / 'l.pt', [torch.zeros(1)])}:mlp"],
     "is not a checkpoint"),
    ("unknown architecture", "tf_kd_self", lambda t, ts: ["--teacher", f"{ts['mlp'] / 'model.pt'}:resnt56"],
     "unknown architecture 'resnt56' (did you mean 'resnet56'?)"),
    ("weights of another architecture", "tf_kd_self", lambda t, ts: ["--teacher", f"{ts['mlp'] / 'model.pt'}:cnn"],
     "does not fit cnn: layer1.0.0.weight is in the model but not in the file"),
    ("weights of another shape", "tf_kd_self", _weights_of_other_shape,
     "layer1.1.weight has shape [512, 64] in the file, [512, 144] in the model"),
    ("weights without architecture", "tf_kd_self", lambda t, ts: [
        "--teacher", str(_write(t / "bare.pt", build_model("mlp", 10, 1, 12).state_dict()))],
     "nothing says which architecture"),
    ("unfinished run", "tf_kd_self", _unfinished, "has not finished (no metrics.json)"),
    ("missing path", "tf_kd_self", lambda t, ts: ["--teacher", str(t / "nowhere")], "does not exist"),
    ("a name too long for the file system", "tf_kd_self", lambda t, ts: ["--teacher", str(t / ("a" * 300))],
     "does not exist"),
    ("a directory that is no run", "tf_kd_self", lambda t, ts: ["--teacher", str(t)], "is not a run directory"),
]


@pytest.mark.parametrize("method, make, expected", [c[1:] for c in TEACHER_CASES], ids=[c[0] for c in TEACHER_CASES])
def test_bad_teacher_is_one_line_exit_2_before_training(mlp_teacher, cnn_teacher, probe_registered, tmp_path,
                                                        capsys, monkeypatch, method, make, expected):
    monkeypatch.chdir(tmp_path)  # where a pickle that runs code would leave its mark
    given = tmp_path / "given"
    given.mkdir()
    args = make(given, {"mlp": mlp_teacher, "cnn": cnn_teacher})
    code, _, err = cli_main(capsys, "train", *TINY, "--method", method, *args, "--out", str(tmp_path / "run"))
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("selfdistill: error: ") and expected in err[0], err
    assert not (tmp_path / "run").exists() and not (tmp_path / "ran-code").exists()


@pytest.mark.parametrize("given", ["checkpoint.pt", "checkpoint.pt:mlp", "model.pt:mlp"])
def test_an_unfinished_runs_checkpoint_serves_as_its_message_says(mlp_teacher, tmp_path, given):
    run = tmp_path / "unfinished"
    shutil.copytree(mlp_teacher, run)
    (run / "metrics.json").unlink()
    with pytest.raises(UserError, match="has not finished") as refused:
        load_teacher(parse_teacher(str(run), "t"), SHAPE)
    assert "give its checkpoint.pt" in str(refused.value)
    (run / "model.json").unlink()  # no card: the checkpoint's config or the :ARCH says the architecture
    teacher = load_teacher(parse_teacher(f"{run}/{given}", "t"), SHAPE)
    file, _, _ = given.partition(":")
    state = torch.load(run / file, map_location="cpu", weights_only=True)
    state = state["model"] if "model" in state else state
    assert teacher.source.model == "mlp" and teacher.input_map is None
    assert all(torch.equal(teacher.net.state_dict()[k], v) for k, v in state.items())
    assert not teacher.net.training and not any(p.requires_grad for p in teacher.net.parameters())


def test_a_teacher_trained_on_other_image_sizes_is_refused(cnn_teacher, capsys, tmp_path):
    code, _, err = cli_main(capsys, "train", *TINY, "--set", "data.synthetic.size=16", "--method", "tf_kd_self",
                            "--teacher", str(cnn_teacher), "--out", str(tmp_path / "run"))
    assert code == 2 and len(err) == 1 and "12x12 inputs, the student sees 16x16" in err[0], err


# ----------------------------------------------------------------------------- another normalisation
def test_a_teacher_of_another_normalisation_sees_its_own(cnn_teacher, probe_registered, tmp_path):
    teacher = tmp_path / "teacher"
    shutil.copytree(cnn_teacher, teacher)
    card = json.loads((teacher / "model.json").read_text())
    card["mean"], card["std"] = [0.3], [0.2]  # as if trained on data normalised otherwise
    (teacher / "model.json").write_text(json.dumps(card))
    trainer, probe = probe_trainer(teacher, epochs=1)
    mean, std = trainer.data.mean[0], trainer.data.std[0]
    assert abs(mean - 0.3) > 0.01 or abs(std - 0.2) > 0.01
    reference, _ = reference_net(teacher)
    trainer.fit()
    for step in probe.steps:
        pixels = step["inputs"] * std + mean  # the [0, 1] pixels the student's inputs came from
        own = (pixels - 0.3) / 0.2  # what the teacher's own normalisation makes of them
        assert torch.allclose(step["calls"][0]["input"], own, atol=1e-5)
        with torch.no_grad():
            assert torch.allclose(step["logits"], reference(own), atol=1e-4)
            assert not torch.allclose(step["logits"], reference(step["inputs"]), atol=1e-3)


# ----------------------------------------------------------------------------- fidelity
def test_fidelity_of_tf_kd_self_against_its_own_ce_run(mlp_teacher, tmp_path):
    out = tmp_path / "student"
    trainer = Trainer(small_config(method={"name": "tf_kd_self"}, teachers=[str(mlp_teacher)],
                                   train={**FAST, "epochs": 1}), out)
    trainer.fit()
    metrics = json.loads((out / "metrics.json").read_text())
    teacher_metrics = json.loads((mlp_teacher / "metrics.json").read_text())
    assert metrics["teacher_test_top1"] == teacher_metrics["test_top1"]  # the teacher measured as its own run did
    assert 0 <= metrics["test_agreement"] <= 100 and metrics["test_teacher_kl"] >= 0
    assert 0 <= metrics["teacher_test_nontarget_entropy"] <= math.log(10 - 1) + 1e-9
    # the same figures, recomputed apart from the engine from the two saved models
    student, teacher = (build_model("mlp", 10, 1, 12) for _ in range(2))
    student.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    teacher.load_state_dict(torch.load(mlp_teacher / "model.pt", weights_only=True))
    x, y = trainer.augment.eval(trainer.data.test_images), trainer.data.test_labels
    with torch.no_grad():
        zs, zt = student.eval()(x), teacher.eval()(x)
    pt = zt.softmax(1)
    assert metrics["test_agreement"] == pytest.approx(100 * (zs.argmax(1) == zt.argmax(1)).float().mean().item())
    kl = (pt * (pt.log() - zs.log_softmax(1))).sum(1).mean().item()
    assert metrics["test_teacher_kl"] == pytest.approx(kl, rel=1e-4, abs=1e-6)
    assert metrics["teacher_test_top1"] == pytest.approx(100 * (zt.argmax(1) == y).float().mean().item())
    nontarget = pt.scatter(1, y[:, None], 0.0)
    nontarget = nontarget / nontarget.sum(1, keepdim=True)
    entropy = -(nontarget * nontarget.clamp_min(1e-30).log()).sum(1).mean().item()
    assert metrics["teacher_test_nontarget_entropy"] == pytest.approx(entropy, rel=1e-4)
    assert trainer.history[-1]["test_agreement"] == metrics["test_agreement"]
    assert cross_entropy(zt, y).item() == pytest.approx(metrics["teacher_test_nll"], rel=1e-4)
    assert F.kl_div(zs.log_softmax(1), pt, reduction="batchmean").item() == pytest.approx(kl, rel=1e-5)


# ----------------------------------------------------------------------------- parse_teacher never breaks
ENTRIES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                       lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                    max_size=3), max_leaves=6)
MAPPINGS = st.dictionaries(st.sampled_from(["path", "model", "pth", 1, None]),
                           st.none() | st.text() | st.integers() | st.sampled_from(["mlp", "cnn", "resnet56"]),
                           max_size=3)
STRINGS = st.text() | st.builds(lambda a, b: f"{a}:{b}", st.text() | st.text(min_size=300, max_size=400),
                                st.text() | st.sampled_from(["mlp", "cnn"]))  # long: names no file system takes


@settings(max_examples=300, deadline=None)
@given(STRINGS | MAPPINGS | ENTRIES)
def test_parse_teacher_returns_a_spec_or_one_user_error(entry):
    try:
        spec = parse_teacher(entry, "teachers[0]")
    except UserError as exc:
        assert "\n" not in str(exc)
        return
    assert isinstance(spec, TeacherSpec) and isinstance(spec.path, str) and spec.path
    assert spec.model is None or spec.model in model_names()


def test_parse_teacher_reads_its_three_forms(tmp_path):
    assert parse_teacher("runs/a", "t") == TeacherSpec("runs/a")
    assert parse_teacher("w/ckpt.pth:resnet32x4", "t") == TeacherSpec("w/ckpt.pth", "resnet32x4")
    assert parse_teacher({"path": "w.pt", "model": "cnn"}, "t") == TeacherSpec("w.pt", "cnn")
    odd = tmp_path / "a:b"  # an existing path with a colon stays whole
    odd.mkdir()
    assert parse_teacher(str(odd), "t") == TeacherSpec(str(odd))


def test_frozen_outputs_are_copies_outside_inference_mode(cnn_teacher, probe_registered):
    trainer, _ = probe_trainer(cnn_teacher)
    frozen = trainer.teachers[0]
    x = trainer.augment.eval(trainer.data.train_images[:4])
    out = frozen(x)
    assert not out.logits.is_inference() and not out.features[Probe.tap].is_inference()
    logits = out.logits.clone()
    out.logits.add_(1.0)  # in-place use, which an inference tensor refuses outside inference mode
    assert torch.equal(out.logits, logits + 1.0)


# ----------------------------------------------------------------------------- published CIFAR-100 teachers
def _published_checkpoint(path: Path, arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A file laid out as RepDistiller's ``<arch>_vanilla/ckpt_epoch_240.pth``: its reference key names and
    shapes (tests/fixtures/zoo/state_shapes), random values, the state_dict under "model"."""
    shapes = json.loads((Path(__file__).parent / "fixtures" / "zoo" / "state_shapes" / f"{arch}.json").read_text())
    gen = torch.Generator().manual_seed(seed)
    state = {k: (torch.tensor(240) if k.endswith("num_batches_tracked") else
                 torch.rand(shape, generator=gen) + (0.5 if k.endswith("running_var") else 0.0))
             for k, shape in shapes.items()}
    torch.save({"epoch": 240, "model": state, "accuracy": 79.42, "optimizer": {"state": {}, "param_groups": []}}, path)
    return state


def test_a_published_cifar100_teacher_file_teaches_through_its_key_map(tmp_path, capsys):
    path = tmp_path / "resnet8x4_vanilla" / "ckpt_epoch_240.pth"
    path.parent.mkdir()
    reference = _published_checkpoint(path, "resnet8x4")
    data = ["--dataset", "synthetic", "--set", "data.synthetic.channels=3", "--set", "data.synthetic.size=32",
            "--set", "data.synthetic.num_classes=100", "--set", "data.synthetic.train_size=8",
            "--set", "data.synthetic.test_size=8", "--batch-size", "8", "--epochs", "1", "--threads", "1"]
    code, _, err = cli_main(capsys, "train", "--method", "kd", "--model", "resnet8", "--teacher",
                            f"{path}:resnet8x4", *data, "--out", str(tmp_path / "kd"))
    assert code == 0, err
    metrics = json.loads((tmp_path / "kd" / "metrics.json").read_text())
    assert metrics["teachers"][0]["model"] == "resnet8x4" and 0 <= metrics["test_agreement"] <= 100
    # the loaded teacher holds the file's tensors under our names: the stem conv and the last classifier
    teacher = load_teacher(TeacherSpec(str(path), "resnet8x4"), DataShape(100, 3, 32, [0.5] * 3, [0.25] * 3)).net
    ours = teacher.state_dict()
    assert torch.equal(ours["stem.0.weight"], reference["conv1.weight"])
    assert torch.equal(ours["fc.weight"], reference["fc.weight"])
    assert torch.equal(ours["layer1.0.shortcut.0.weight"], reference["layer1.0.downsample.0.weight"])


def test_a_published_teacher_file_without_its_architecture_or_of_another_is_one_line(tmp_path, capsys):
    path = tmp_path / "ckpt_epoch_240.pth"
    _published_checkpoint(path, "resnet8x4")
    base = ["--method", "kd", "--model", "resnet8", "--dataset", "synthetic", "--set", "data.synthetic.channels=3",
            "--set", "data.synthetic.size=32", "--set", "data.synthetic.num_classes=100", "--epochs", "1"]
    for teacher, expected in ((str(path), "say its architecture"), (f"{path}:resnet32x4", "does not fit resnet32x4")):
        code, _, err = cli_main(capsys, "train", *base, "--teacher", teacher, "--out", str(tmp_path / "x"))
        assert code == 2 and len(err) == 1 and expected in err[0], err
        assert not (tmp_path / "x").exists()


def test_a_missing_published_teacher_says_where_those_come_from_and_what_the_path_is_relative_to(
        tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    published = "cifar_teachers/resnet32x4_vanilla/ckpt_epoch_240.pth:resnet32x4"
    code, _, err = cli_main(capsys, "train", "--method", "kd", "--teacher", published, "--out", "run")
    assert code == 2 and len(err) == 1
    assert "cifar_teachers.tar" in err[0] and f"relative to the working directory, {tmp_path}" in err[0]
    assert not (tmp_path / "run").exists()
    code, _, err = cli_main(capsys, "train", "--method", "kd", "--teacher", str(tmp_path / "mine.pt:cnn"))
    assert code == 2 and "does not exist" in err[0] and "cifar_teachers.tar" not in err[0]
