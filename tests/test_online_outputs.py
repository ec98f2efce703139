"""What an online run leaves behind, read back: ``eval --role`` evaluates any of its networks, a network's
``<role>.pt`` teaches without an architecture (its card says it), TensorBoard holds each network's figures,
and ``report`` shows the other networks' top-1 and the ensemble's and draws their curves. Real runs: MLP
students on 96 synthetic images, one epoch each."""

import json
import shutil
import statistics

import pytest
import torch

from conftest import SMALL_SYNTHETIC, cli_main, small_config
from selfdistill.analysis.eval_output import format_eval
from selfdistill.analysis.evaluation import evaluate_saved_model
from selfdistill.analysis.report import build_report, find_runs, group_runs, markdown_table, summarize
from selfdistill.analysis.report_plots import curves_figure
from selfdistill.engine import train
from selfdistill.errors import UserError

ONE_EPOCH = {"epochs": 1, "progress": False, "threads": 1, "device": "cpu"}  # eval below runs on the CPU too
DML = {"name": "dml", "peers": ["cnn"]}  # a peer of another architecture than the student's mlp
RUNS = {"dml-s0": (DML, 0, {}), "dml-s1": (DML, 1, {}), "switokd": ({"name": "switokd", "teacher_model": "mlp"}, 0, {}),
        "ce": ({"name": "ce"}, 0, {}), "dml-val": (DML, 0, {"data": {**SMALL_SYNTHETIC, "validation_split": 32}})}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Finished runs by name: (run directory, metrics). DML trains peer1 (a cnn), SwitOKD an online teacher."""
    root = tmp_path_factory.mktemp("online")
    made = {}
    for name, (method, seed, extra) in RUNS.items():
        config = small_config(method=method, train={**ONE_EPOCH, "seed": seed}, **extra)
        made[name] = (root / name, train(config, root / name))
    return made


def user_error(match, call, *args, **kwargs):
    with pytest.raises(UserError, match=match) as info:
        call(*args, **kwargs)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- eval
def test_eval_of_a_role_reproduces_the_figures_the_run_recorded_for_that_network(runs):
    run, metrics = runs["dml-s0"]
    result = evaluate_saved_model(run, role="peer1", device="cpu")
    assert result["model"] == "cnn" and result["target"] == str(run / "peer1.pt")  # the peer's card, not the student's
    assert result["images"] == metrics["test_images"] == 64
    assert result["top1"] == pytest.approx(metrics["peer1_test_top1"], abs=1e-9)
    assert result["top1"] == pytest.approx(metrics["networks"]["peer1"]["top1"], abs=1e-9)
    assert result["nll"] == pytest.approx(metrics["peer1_test_nll"], rel=1e-5)
    assert result["ece"] == pytest.approx(metrics["peer1_test_ece"], rel=1e-4)
    assert (result["role"], result["run_roles"]) == ("peer1", ["student", "peer1"])
    out = run / "eval-peer1-synthetic-test"  # beside the student's eval-synthetic-test, never over it
    assert result["out"] == str(out) and json.loads((out / "eval.json").read_text())["role"] == "peer1"
    text = format_eval(result)
    assert "peer1.pt (role peer1): cnn on synthetic test" in text
    assert "the run's other networks: student (`selfdistill eval RUN_DIR --role ROLE`" in text

    sw_run, sw = runs["switokd"]
    teacher = evaluate_saved_model(sw_run, role="teacher", device="cpu", out=sw_run / "e")
    assert teacher["top1"] == pytest.approx(sw["teacher_test_top1"], abs=1e-9)
    assert teacher["nll"] == pytest.approx(sw["teacher_test_nll"], rel=1e-5)


def test_the_student_by_default_and_a_roles_weights_file_given_directly(runs, tmp_path):
    run, metrics = runs["dml-s0"]
    student = evaluate_saved_model(run, device="cpu", out=tmp_path / "s")
    assert evaluate_saved_model(run, role="student", device="cpu", out=tmp_path / "s2")["top1"] == student["top1"]
    assert student["top1"] == pytest.approx(metrics["test_top1"], abs=1e-9) and student["model"] == "mlp"
    assert (student["role"], student["run_roles"]) == ("student", ["student", "peer1"])
    assert format_eval(student).splitlines()[-1] == ("the run's other networks: peer1 (`selfdistill eval RUN_DIR "
                                                     "--role ROLE` evaluates one)")
    direct = evaluate_saved_model(run / "peer1.pt", device="cpu", out=tmp_path / "p")
    assert direct["role"] == "peer1" and direct["top1"] == pytest.approx(metrics["peer1_test_top1"], abs=1e-9)

    ce_run, _ = runs["ce"]
    alone = evaluate_saved_model(ce_run, device="cpu", out=tmp_path / "c")
    assert (alone["role"], alone["run_roles"]) == ("student", ["student"])
    assert "other networks" not in format_eval(alone) and "(role" not in format_eval(alone)
    user_error(r"--role='peer1' is not allowed; allowed: the roles of .*ce: student$", evaluate_saved_model,
               ce_run, role="peer1", device="cpu")


def test_cli_eval_role_and_its_one_line_errors(runs, tmp_path, capsys):
    run, metrics = runs["dml-s0"]
    code, out, err = cli_main(capsys, "eval", str(run), "--role", "peer1", "--device", "cpu", "--out",
                              str(tmp_path / "e"))
    assert code == 0 and err == [] and "(role peer1): cnn" in out
    assert json.loads((tmp_path / "e" / "eval.json").read_text())["top1"] == pytest.approx(metrics["peer1_test_top1"])
    code, _, err = cli_main(capsys, "eval", str(run), "--role", "peer2", "--device", "cpu")
    assert code == 2 and len(err) == 1
    assert "--role='peer2' is not allowed (did you mean 'peer1'?); allowed: the roles of" in err[0]
    assert err[0].endswith(": student, peer1")
    code, _, err = cli_main(capsys, "eval", str(run / "peer1.pt"), "--role", "peer1", "--device", "cpu")
    assert code == 2 and len(err) == 1 and "--role picks a network of a run directory" in err[0]
    (run / "peer1.pt").rename(run / "peer1.moved")
    try:
        code, _, err = cli_main(capsys, "eval", str(run), "--role", "peer1", "--device", "cpu")
    finally:
        (run / "peer1.moved").rename(run / "peer1.pt")
    assert code == 2 and len(err) == 1 and "peer1.pt is missing, though" in err[0] and "--resume" in err[0]


# ----------------------------------------------------------------------------- another network as a teacher
@pytest.mark.parametrize("name, role, arch", [("dml-s0", "peer1", "cnn"), ("switokd", "teacher", "mlp")])
def test_a_roles_weights_file_teaches_with_the_architecture_of_its_card(runs, tmp_path, name, role, arch):
    run, online = runs[name]
    weights = run / f"{role}.pt"
    metrics = train(small_config(method={"name": "kd"}, teachers=[str(weights)], train=ONE_EPOCH), tmp_path / "kd")
    assert metrics["teachers"][0]["model"] == arch and metrics["teachers"][0]["weights"] == str(weights)
    # the frozen teacher, measured by the KD run, is the network the online run measured under its role
    assert metrics["teacher_test_top1"] == pytest.approx(online[f"{role}_test_top1"], abs=1e-9)
    assert metrics["teacher_test_nll"] == pytest.approx(online[f"{role}_test_nll"], rel=1e-5)


# ----------------------------------------------------------------------------- TensorBoard
def test_tensorboard_holds_each_networks_and_the_ensembles_figures_and_each_pairs_fidelity(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, metrics = runs["dml-s0"]
    events = EventAccumulator(str(run))
    events.Reload()

    def value(tag):
        (point,) = events.Scalars(tag)  # one epoch
        return point.value

    for role in ("peer1", "ensemble"):
        for metric in ("top1", "nll", "ece"):
            assert value(f"{role}/test/{metric}") == pytest.approx(metrics[f"{role}_test_{metric}"], rel=1e-6)
    for metric in ("agreement", "kl"):  # KL(peer1 || student)
        assert value(f"pairs/test/{metric}_peer1_student") == pytest.approx(metrics[f"test_{metric}_peer1_student"],
                                                                             rel=1e-6)


# ----------------------------------------------------------------------------- report
def copy_runs(runs, root, names):
    for name in names:
        shutil.copytree(runs[name][0], root / name)
    return root


def cells(table):
    lines = [line for line in table.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return header, {row["method"]: row for row in (dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
                                                   for line in lines[2:])}


def test_report_shows_each_roles_and_the_ensembles_top1_over_seeds_blank_where_absent(runs, tmp_path):
    root = copy_runs(runs, tmp_path / "r", ["dml-s0", "dml-s1", "switokd", "ce"])
    rows = {row["method"]: row for row in summarize(find_runs([root]).runs)}
    for metric in ("peer1", "ensemble"):
        values = [runs[n][1][f"{metric}_test_top1"] for n in ("dml-s0", "dml-s1")]
        assert rows["dml"][f"net.{metric}"] == pytest.approx((statistics.fmean(values), statistics.stdev(values)))
    assert rows["switokd"]["net.teacher"] == (runs["switokd"][1]["teacher_test_top1"], None)
    assert "net.peer1" not in rows["switokd"] and not any(k.startswith("net.") for k in rows["ce"])

    header, table = cells(markdown_table(list(rows.values())))
    at = header.index("ECE %")
    assert header[at + 1:at + 5] == ["peer1 top-1 %", "teacher top-1 %", "ensemble top-1 %", "images/s"]
    mean, std = rows["dml"]["net.peer1"]
    assert table["dml"]["peer1 top-1 %"] == f"{mean:.2f} ± {std:.2f}" and table["dml"]["teacher top-1 %"] == "—"
    assert table["switokd"]["teacher top-1 %"] == f"{runs['switokd'][1]['teacher_test_top1']:.2f}"
    assert [table["ce"][c] for c in header[at + 1:at + 4]] == ["—", "—", "—"]
    assert table["ce"]["top-1 %"] == f"{runs['ce'][1]['test_top1']:.2f}"  # the student's columns as ever
    text = build_report([str(root)], None)
    assert "`<role> top-1 %`: the top-1 of a network trained with the student" in text and "no such network" in text


def test_report_without_online_runs_has_no_network_columns_and_reads_the_val_split(runs, tmp_path):
    text = build_report([str(copy_runs(runs, tmp_path / "ce", ["ce"]))], None)
    header, _ = cells(text)
    assert not any(h.endswith(" top-1 %") for h in header) and "`<role> top-1 %`" not in text
    (row,) = summarize(find_runs([copy_runs(runs, tmp_path / "val", ["dml-val"])]).runs)
    metrics = runs["dml-val"][1]
    assert row["split"] == "val" and row["net.peer1"] == (metrics["peer1_val_top1"], None)
    assert row["net.ensemble"] == (metrics["ensemble_val_top1"], None)


@pytest.mark.parametrize("change, match", [
    (lambda m: m.pop("peer1_test_top1"), r"lacks 'peer1_test_top1' \(an online run records it for each"),
    (lambda m: m.pop("ensemble_test_top1"), "lacks 'ensemble_test_top1'"),
    (lambda m: m.update(ensemble_test_top1=None), "'ensemble_test_top1' is None, not a finite number"),
    (lambda m: m.update(networks=["peer1"]), "'networks' must map the roles of an online run's networks"),
    (lambda m: m.update(networks={"peer 1": {}}), "'networks' must map the roles"),
])
def test_report_refuses_a_damaged_record_of_the_networks(runs, tmp_path, change, match):
    root = copy_runs(runs, tmp_path, ["dml-s0"])
    path = root / "dml-s0" / "metrics.json"
    metrics = json.loads(path.read_text())
    change(metrics)
    path.write_text(json.dumps(metrics))
    user_error(match, find_runs, [root])


def test_report_figure_draws_each_network_and_the_ensemble_in_the_groups_colour(runs, tmp_path):
    root = copy_runs(runs, tmp_path / "r", ["dml-s0", "dml-s1", "switokd", "ce"])
    fig = curves_figure(group_runs(find_runs([root]).runs))
    dml, sw = "dml (2 seeds)", "switokd (1 seed)"
    assert [t.get_text() for t in fig.axes[-1].get_legend().get_texts()] == [
        "ce (1 seed)", f"{dml} · student", f"{dml} · peer1", f"{dml} · ensemble", f"{sw} · student",
        f"{sw} · teacher", f"{sw} · ensemble"]  # SwitOKD's teacher trains online: a curve, no reference line
    for metric, ax in zip(("top1", "nll", "ece"), fig.axes):
        drawn = {line.get_label(): line for line in ax.get_lines()}
        for role in ("peer1", "ensemble"):
            mean = statistics.fmean(runs[n][1][f"{role}_test_{metric}"] for n in ("dml-s0", "dml-s1"))
            assert list(drawn[f"{dml} · {role}"].get_ydata()) == pytest.approx([mean], rel=1e-5)  # log.csv's digits
        teacher = runs["switokd"][1][f"teacher_test_{metric}"]
        assert list(drawn[f"{sw} · teacher"].get_ydata()) == pytest.approx([teacher], rel=1e-5)
        assert {drawn[f"{dml} · {r}"].get_color() for r in ("student", "peer1", "ensemble")} == \
            {drawn[f"{dml} · student"].get_color()}
        assert [drawn[f"{dml} · {r}"].get_linestyle() for r in ("student", "peer1", "ensemble")] == ["-", "--", "-."]
        assert len(ax.collections) == 1  # the one band: the DML student's std over its two seeds


# ----------------------------------------------------------------------------- --resume of a finished online run
@pytest.mark.parametrize("spoil", [
    lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),  # truncated
    lambda p: shutil.copyfile(p.with_name("model.pt"), p),  # the student's weights in the peer's file
])
def test_resume_rebuilds_a_damaged_role_file_of_a_finished_run(runs, tmp_path, capsys, spoil):
    """A truncated or foreign ``peer1.pt`` in a finished DML run is rebuilt from the final checkpoint (and its
    card with it), not taken for finished ("nothing to do")."""
    run = tmp_path / "run"
    shutil.copytree(runs["dml-s0"][0], run)
    spoil(run / "peer1.pt")
    code, out, err = cli_main(capsys, "train", "--out", str(run), "--resume")
    assert code == 0 and "writing the missing, damaged or outdated peer1.pt, peer1.json from" in out, (out, err)
    original = runs["dml-s0"][0]
    a, b = (torch.load(d / "peer1.pt", weights_only=True) for d in (original, run))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((run / "peer1.json").read_text()) == json.loads((original / "peer1.json").read_text())
    code, out, _ = cli_main(capsys, "train", "--out", str(run), "--resume")
    assert code == 0 and "nothing to do" in out
