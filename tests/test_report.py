"""``report``: only comparable runs merged, distinct seeds, duplicate seeds flagged, plots, bad run files.

Run directories are fabricated by hand (config.yaml, log.csv, metrics.json), so only the one test of real
runs with a teacher trains (two tiny runs).
"""

import json
import statistics

import pytest

from conftest import small_config
from selfdistill.analysis.report import build_report, group_runs, markdown_table, summarize
from selfdistill.analysis.report_plots import group_curve, pooled_reliability
from selfdistill.analysis.runs import find_runs, load_run
from selfdistill.config import parse_assignment
from selfdistill.engine import resolve, train
from selfdistill.errors import UserError

PNG = b"\x89PNG\r\n\x1a\n"
BINS = 15


def reliability(correct_share: float, images: int = 100) -> dict:
    """All ``images`` in the bin of confidence 0.9 (index 13), ``correct_share`` of them right."""
    count, conf, correct = [0] * BINS, [0.0] * BINS, [0] * BINS
    count[13], conf[13], correct[13] = images, 0.9 * images, round(correct_share * images)
    return {"bins": BINS, "count": count, "confidence_sum": conf, "correct": correct}


def make_run(root, name, seed=0, method="ce", sets=(), top1=80.0, curve=(50.0, 80.0), old=False, with_rel=True,
             teachers=(), fidelity=None):
    """A finished run directory as the engine writes it (``old``: as versions before eval_split wrote it);
    ``teachers``: (path, architecture) pairs, with ``fidelity`` (agreement, KL, teacher top-1, non-target
    entropy) as the run recorded them."""
    layers = [{"method": {"name": method}, "model": {"name": "mlp"}, "data": {"dataset": "synthetic"},
               "train": {"epochs": len(curve), "seed": seed}}]
    layers += [parse_assignment(item) for item in sets]
    if teachers:
        layers.append({"teachers": [{"path": path, "model": arch} for path, arch in teachers]})
    config = resolve(layers)
    split = "test" if old or config.data.validation_split is None else "val"
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(config.to_yaml())
    header = f"epoch,lr,ce,train_top1,{split}_top1,{split}_nll,{split}_ece,images_per_s,seconds,images_seen"
    rows = [f"{e},0.05,0.5,70,{acc},0.5,2.0,1000,1.0,{e * 2000}" for e, acc in enumerate(curve, start=1)]
    (run / "log.csv").write_text("\n".join([header, *rows]) + "\n")
    metrics = {"method": method, "dataset": "synthetic", "model": "mlp", "seed": seed, "epochs": len(curve),
               f"{split}_top1": top1, f"{split}_nll": 0.5, f"{split}_ece": 2.0, f"{split}_images": 500,
               "images_per_s": 1000.0, "wall_s": 10.0, "train_top1": 70.0}
    if not old:
        metrics["eval_split"] = split
        if with_rel:
            metrics["reliability"] = reliability(top1 / 100)
    if teachers:
        agreement, kl, teacher_top1, nontarget = fidelity
        metrics.update({f"{split}_agreement": agreement, f"{split}_teacher_kl": kl,
                        f"teacher_{split}_top1": teacher_top1, f"teacher_{split}_nll": 0.7,
                        f"teacher_{split}_ece": 3.0, f"teacher_{split}_entropy": 1.5,
                        f"teacher_{split}_nontarget_entropy": nontarget,
                        "teachers": [{"path": path, "model": arch, "weights": f"{path}/model.pt", "sha256": "0" * 64}
                                     for path, arch in teachers]})
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def user_error(match, call, *args):
    with pytest.raises(UserError, match=match) as info:
        call(*args)
    assert "\n" not in str(info.value)
    return str(info.value)


def table_rows(text):
    """The markdown table as dicts keyed by header."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


# ----------------------------------------------------------------------------- grouping
def test_runs_that_differ_in_lr_method_option_batch_size_or_split_are_separate_groups(tmp_path):
    make_run(tmp_path, "base-s0", seed=0, top1=80.0)
    make_run(tmp_path, "base-s1", seed=1, top1=82.0)
    make_run(tmp_path, "lr", sets=["optim.lr=0.1"], top1=70.0)
    make_run(tmp_path, "batch", sets=["data.batch_size=128"], top1=75.0)
    make_run(tmp_path, "val", sets=["data.validation_split=100"], top1=90.0)
    make_run(tmp_path, "dlb-a1", method="dlb", top1=83.0)
    make_run(tmp_path, "dlb-a05", method="dlb", sets=["method.alpha=0.5"], top1=84.0)
    rows = table_rows(markdown_table(summarize(find_runs([tmp_path]).runs)))
    assert len(rows) == 6
    # only the fields that vary between groups are columns; DLB's temperature is the same wherever present
    assert list(rows[0])[:4] == ["dataset", "model", "method", "split"]
    assert {"method.alpha", "lr", "batch size", "val images"} <= set(rows[0])
    assert "method.temperature" not in rows[0] and "train.seed" not in rows[0]
    base = [r for r in rows if r["method"] == "ce" and r["lr"] == "0.05" and r["batch size"] == "64"
            and r["split"] == "test"]
    assert len(base) == 1 and base[0]["seeds"] == "2" and base[0]["top-1 %"] == "81.00 ± 1.41"
    assert {r["method.alpha"] for r in rows if r["method"] == "dlb"} == {"1", "0.5"}
    assert {r["method.alpha"] for r in rows if r["method"] == "ce"} == {"—"}
    val = [r for r in rows if r["val images"] == "100"]
    assert len(val) == 1 and val[0]["split"] == "val" and val[0]["top-1 %"] == "90.00"
    assert all(r["split"] == "test" for r in rows if r is not val[0])


def test_fields_that_do_not_change_results_do_not_split_a_group(tmp_path):
    make_run(tmp_path, "a", seed=0, sets=["train.threads=1", "train.eval_every=2", "data.data_dir=/x"])
    make_run(tmp_path, "b", seed=1, sets=["train.device=cpu", "data.eval_batch_size=7"])
    (row,) = summarize(find_runs([tmp_path]).runs)
    assert row["seeds"] == 2 and row["fields"] == {}


def test_seeds_are_counted_distinct_and_a_duplicate_seed_is_flagged_and_averaged(tmp_path):
    make_run(tmp_path, "s0", seed=0, top1=80.0)
    make_run(tmp_path, "s0-again", seed=0, top1=82.0)
    make_run(tmp_path, "s1", seed=1, top1=90.0)
    text = build_report([str(tmp_path)], None)
    (row,) = table_rows(text)
    assert row["seeds"] == "2"
    # seed 0 counts once, as the mean of its two runs (81); then mean ± std over the seeds 81 and 90
    assert row["top-1 %"] == f"85.50 ± {statistics.stdev([81.0, 90.0]):.2f}"
    note = next(line for line in text.splitlines() if "duplicate seed 0" in line)
    assert str(tmp_path / "s0") in note and str(tmp_path / "s0-again") in note and "averaged" in note


def test_overlapping_paths_find_each_run_once(tmp_path):
    make_run(tmp_path, "a", seed=0)
    runs = find_runs([tmp_path, tmp_path / "a", tmp_path / "a" / "metrics.json"]).runs
    assert len(runs) == 1 and "duplicate" not in build_report([str(tmp_path), str(tmp_path / "a")], None)


def test_old_format_runs_still_report(tmp_path):
    make_run(tmp_path, "old-s0", seed=0, top1=80.0, old=True)
    make_run(tmp_path, "old-s1", seed=1, top1=84.0, old=True)
    run = load_run(tmp_path / "old-s0")
    assert run["test_top1"] == 80.0 and run["config"]["train"]["seed"] == 0 and run["log"][0]["test_top1"] == 50.0
    text = build_report([str(tmp_path)], tmp_path / "out")
    (row,) = table_rows(text)
    assert row["split"] == "test" and row["seeds"] == "2" and row["top-1 %"] == "82.00 ± 2.83"
    assert (tmp_path / "out" / "accuracy.png").read_bytes()[:8] == PNG
    assert not (tmp_path / "out" / "reliability.png").exists()
    assert "reliability.png leaves out `ce`" in text and "older versions" in text


def test_cli_form_keeps_dataset_first(tmp_path):
    # `selfdistill report` prints markdown_table(summarize(find_runs(paths))) until it calls build_report
    for seed in (0, 1):
        make_run(tmp_path, f"s{seed}", seed=seed)
    line = markdown_table(summarize(find_runs([tmp_path]).runs)).splitlines()[2]
    assert line.startswith("| synthetic | mlp | ce | test |") and "| 2 |" in line and "±" in line


# ----------------------------------------------------------------------------- build_report and plots
def test_build_report_writes_the_markdown_and_two_pngs(tmp_path):
    for seed in (0, 1):
        make_run(tmp_path / "runs", f"ce-s{seed}", seed=seed, top1=80.0 + seed)
        make_run(tmp_path / "runs", f"dlb-s{seed}", seed=seed, method="dlb", top1=83.0 + seed)
    make_run(tmp_path / "runs", "val", sets=["data.validation_split=100"])
    out = tmp_path / "report"
    text = build_report([str(tmp_path / "runs")], out)
    assert (out / "report.md").read_text() == text
    for name in ("accuracy.png", "reliability.png"):
        assert (out / name).read_bytes()[:8] == PNG
    assert str(out / "accuracy.png") in text and "final epoch" in text
    assert {r["split"] for r in table_rows(text)} == {"test", "val"}
    assert not (tmp_path / "plain").exists()
    build_report([str(tmp_path / "runs")], tmp_path / "plain", plots=False)
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == ["report.md"]


def test_group_labels_name_what_differs(tmp_path):
    make_run(tmp_path, "a", sets=["optim.lr=0.1"])
    make_run(tmp_path, "b", sets=["optim.lr=0.2"])
    make_run(tmp_path, "c", method="dlb", sets=["optim.lr=0.1"])
    labels = sorted(g.label for g in group_runs(find_runs([tmp_path]).runs))
    assert labels == ["ce lr=0.1", "ce lr=0.2", "dlb lr=0.1"]


def test_accuracy_curve_is_the_mean_and_std_over_seeds_per_epoch(tmp_path):
    make_run(tmp_path, "s0", seed=0, curve=(50.0, 80.0))
    make_run(tmp_path, "s1", seed=1, curve=(60.0, 90.0))
    make_run(tmp_path, "s1-again", seed=1, curve=(70.0, 90.0))  # averaged into seed 1 first: (65, 90)
    (group,) = group_runs(find_runs([tmp_path]).runs)
    curve = group_curve(group, "test_top1", group.label)
    assert curve.epochs == [1.0, 2.0] and curve.mean == [57.5, 85.0]
    assert curve.std == pytest.approx([statistics.stdev([50, 65]), statistics.stdev([80, 90])])


def test_unevaluated_epochs_are_left_out_of_the_curve(tmp_path):
    run = make_run(tmp_path, "s0", curve=(50.0, 80.0))
    lines = (run / "log.csv").read_text().splitlines()
    lines[1] = "1,0.05,0.5,70,,,,1000,1.0,2000"  # epoch 1 not evaluated
    (run / "log.csv").write_text("\n".join(lines) + "\n")
    (group,) = group_runs(find_runs([tmp_path]).runs)
    curve = group_curve(group, "test_top1", group.label)
    assert curve.epochs == [2.0] and curve.mean == [80.0] and curve.std is None


def test_reliability_bins_are_pooled_over_seeds(tmp_path):
    make_run(tmp_path, "s0", seed=0, top1=80.0)
    make_run(tmp_path, "s1", seed=1, top1=90.0)
    (group,) = group_runs(find_runs([tmp_path]).runs)
    pooled = pooled_reliability(group)
    assert pooled["count"][13] == 200 and pooled["correct"][13] == 170 and pooled["confidence_sum"][13] == 180.0
    make_run(tmp_path, "s2", seed=2, with_rel=False)
    (group,) = group_runs(find_runs([tmp_path]).runs)
    assert pooled_reliability(group) is None


# ----------------------------------------------------------------------------- bad run directories
@pytest.mark.parametrize("content, match", [
    ("{oops", "metrics.json is not valid JSON"),
    ("[1, 2]", "metrics.json must hold a JSON object"),
    ('{"test_top1": 1}', "metrics.json lacks 'test_nll'"),
    ("drop:images_per_s", "metrics.json lacks 'images_per_s'"),
    ("set:test_top1:\"high\"", "'test_top1' is 'high', not a finite number"),
    ("set:wall_s:true", "'wall_s' is True, not a finite number"),
    ("set:eval_split:\"val\"", "metrics.json lacks 'val_top1'"),
    ("set:reliability:{\"bins\": 2, \"count\": [1]}", "'reliability' must be"),
])
def test_malformed_metrics_are_one_line_errors_naming_the_run_and_file(tmp_path, content, match):
    run = make_run(tmp_path, "bad", old=True)
    metrics = json.loads((run / "metrics.json").read_text())
    if content.startswith("drop:"):
        del metrics[content[5:]]
        content = json.dumps(metrics)
    elif content.startswith("set:"):
        _, key, value = content.split(":", 2)
        content = json.dumps({**metrics, key: json.loads(value)})
    (run / "metrics.json").write_text(content)
    message = user_error(match, find_runs, [tmp_path])
    assert str(run) in message and "metrics.json" in message


@pytest.mark.parametrize("damage, match", [
    ("rm:log.csv", "log.csv is missing"),
    ("rm:config.yaml", "config.yaml is missing"),
    ("dir:log.csv", "log.csv is a directory, not a regular file"),
    ("write:log.csv:epoch,lr\n", "log.csv has no epoch rows"),
    ("write:log.csv:epoch,lr\n1,0.1\n", "log.csv has no 'test_top1' column"),
    ("write:log.csv:epoch,test_top1\n1,abc\n", "log.csv line 2, column 'test_top1': 'abc' is not a number"),
    ("bytes:log.csv", "log.csv is not UTF-8"),
    ("write:config.yaml:optim: [unclosed\n", "config.yaml: not valid YAML"),
    ("write:config.yaml:- a list\n", "config.yaml must be a mapping"),
    ("write:config.yaml:optim: {speed: 1}\n", "config.yaml: unknown config key 'optim.speed'"),
])
def test_missing_or_unreadable_log_and_config_name_the_run_and_file(tmp_path, damage, match):
    run = make_run(tmp_path, "bad")
    action, name, *text = damage.split(":", 2)
    (run / name).unlink()
    if action == "dir":
        (run / name).mkdir()
    elif action == "write":
        (run / name).write_text(text[0])
    elif action == "bytes":
        (run / name).write_bytes(b"epoch\n\xff\xfe\n")
    message = user_error(match, find_runs, [tmp_path])
    assert str(run) in message


def test_paths_without_runs(tmp_path):
    user_error("nothing: no such file or directory", find_runs, [tmp_path / "nothing"])
    user_error("no finished runs", find_runs, [tmp_path])
    (tmp_path / "notes.txt").write_text("")
    user_error("is a file", find_runs, [tmp_path / "notes.txt"])


def test_an_unwritable_out_is_a_one_line_error(tmp_path):
    make_run(tmp_path, "a")
    (tmp_path / "file").write_text("")
    message = user_error("cannot write the report there", build_report, [str(tmp_path / "a")], tmp_path / "file" / "x")
    assert str(tmp_path / "file" / "x") in message


def test_runs_on_other_devices_or_process_counts_are_not_merged(tmp_path):
    for seed, device, processes in ((0, "cpu", 1), (1, "cpu", 1), (0, "cuda:0", 1), (0, "cpu", 2)):
        run = make_run(tmp_path, f"{device}-{processes}-s{seed}", seed=seed)
        metrics = json.loads((run / "metrics.json").read_text())
        metrics.update(device=device, world_size=processes, amp=device != "cpu", channels_last=device != "cpu")
        (run / "metrics.json").write_text(json.dumps(metrics))
    groups = group_runs(find_runs([tmp_path]).runs)
    assert sorted(len(g.seeds()) for g in groups) == [1, 1, 2]
    table = markdown_table(summarize(find_runs([tmp_path]).runs))
    assert "| device |" in table and "| processes |" in table and "| bf16 |" in table


# ----------------------------------------------------------------------------- runs with teachers
FIDELITY_HEADERS = ("agree %", "KL(T‖S)", "T top-1 %", "T non-target H")


def test_fidelity_columns_appear_only_for_runs_with_teachers(tmp_path):
    for seed in (0, 1):
        make_run(tmp_path, f"ce-s{seed}", seed=seed, top1=80.0 + seed)
    text = build_report([str(tmp_path)], None)
    assert not any(h in text for h in FIDELITY_HEADERS) and "agree" not in text

    # each seed's student against its own teacher (another path, the same architecture): one group
    make_run(tmp_path, "kd-s0", seed=0, method="tf_kd_self", teachers=[("t/s0", "mlp")],
             fidelity=(90.0, 0.2, 82.0, 1.9))
    make_run(tmp_path, "kd-s1", seed=1, method="tf_kd_self", teachers=[("t/s1", "mlp")],
             fidelity=(94.0, 0.3, 84.0, 2.1))
    text = build_report([str(tmp_path)], None)
    rows = {r["method"]: r for r in table_rows(text)}
    assert list(rows["ce"])[-6:] == [*FIDELITY_HEADERS, "images/s", "wall s"]
    assert list(rows["ce"])[-9:-6] == ["top-1 %", "NLL", "ECE %"]
    kd = rows["tf_kd_self"]
    assert kd["seeds"] == "2" and kd["agree %"] == f"92.00 ± {statistics.stdev([90.0, 94.0]):.2f}"
    assert kd["KL(T‖S)"] == f"0.2500 ± {statistics.stdev([0.2, 0.3]):.4f}"
    assert kd["T top-1 %"] == f"83.00 ± {statistics.stdev([82.0, 84.0]):.2f}"
    assert kd["T non-target H"] == f"2.000 ± {statistics.stdev([1.9, 2.1]):.3f}"
    assert all(rows["ce"][h] == "—" for h in FIDELITY_HEADERS)
    assert "predictive KL(teacher ‖ student)" in text and "`—`: trained without a teacher" in text


def test_the_teachers_architecture_separates_groups(tmp_path):
    make_run(tmp_path, "mlp-t", method="tf_kd_self", teachers=[("a", "mlp")], fidelity=(90.0, 0.2, 82.0, 1.9))
    make_run(tmp_path, "cnn-t", method="tf_kd_self", teachers=[("a", "cnn")], fidelity=(70.0, 0.5, 88.0, 1.5))
    rows = table_rows(build_report([str(tmp_path)], None))
    assert sorted((r["teachers"], r["agree %"], r["T top-1 %"]) for r in rows) == \
        [("[cnn]", "70.00", "88.00"), ("[mlp]", "90.00", "82.00")]


@pytest.mark.parametrize("change, match", [
    ("drop:test_agreement", "lacks 'test_agreement' \\(a run with teachers records it\\)"),
    ("drop:teacher_test_top1", "lacks 'teacher_test_top1'"),
    ("set:test_teacher_kl:null", "'test_teacher_kl' is None, not a finite number"),
    ("set:teachers:\"mlp\"", "'teachers' must be a list"),
])
def test_a_run_with_teachers_needs_its_fidelity_figures(tmp_path, change, match):
    run = make_run(tmp_path, "kd", method="tf_kd_self", teachers=[("t", "mlp")], fidelity=(90.0, 0.2, 82.0, 1.9))
    metrics = json.loads((run / "metrics.json").read_text())
    action, key, *value = change.split(":", 2)
    if action == "drop":
        del metrics[key]
    else:
        metrics[key] = json.loads(value[0])
    (run / "metrics.json").write_text(json.dumps(metrics))
    user_error(match, find_runs, [tmp_path])


def test_report_of_real_runs_with_a_teacher(tmp_path):
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    train(small_config(train={"epochs": 1, "progress": False, "threads": 1}), teacher)
    metrics = train(small_config(method={"name": "tf_kd_self"}, teachers=[str(teacher)],
                                 train={"epochs": 1, "progress": False, "threads": 1, "seed": 1}), student)
    rows = {r["method"]: r for r in table_rows(build_report([str(tmp_path)], None))}
    kd = rows["tf_kd_self"]
    assert kd["agree %"] == f"{metrics['test_agreement']:.2f}" and kd["KL(T‖S)"] == f"{metrics['test_teacher_kl']:.4f}"
    assert kd["T top-1 %"] == f"{metrics['teacher_test_top1']:.2f}" == rows["ce"]["top-1 %"]
    assert kd["T non-target H"] == f"{metrics['teacher_test_nontarget_entropy']:.3f}"
    assert rows["ce"]["agree %"] == "—"
