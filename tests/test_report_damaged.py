"""``report`` over run directories it cannot all use: runs of architectures this process cannot build are
reported, damaged runs are skipped and named under the table (exit 0), and only when no run can be read is
there an error (exit 2, one line). Whatever the JSON fields of ``metrics.json`` hold, no traceback."""

import json
import re
import shutil

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import cli_main
from selfdistill.analysis.report import build_report, group_runs
from selfdistill.analysis.report_plots import group_curve
from selfdistill.analysis.runs import find_runs
from test_report import make_run, table_rows


def set_model(run, name, options):
    """Rewrite the run's config.yaml as if it had trained architecture ``name``."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"] = {"name": name, "options": options}
    (run / "config.yaml").write_text(yaml.safe_dump(config))


def update_metrics(run, **changes):
    metrics = json.loads((run / "metrics.json").read_text())
    metrics.update(changes)
    (run / "metrics.json").write_text(json.dumps(metrics))


# ----------------------------------------------------------------------------- architectures not buildable here
@pytest.mark.parametrize("name", ["tiny", "sd_no_such_module_xyz.nets:tiny"])
def test_a_run_of_an_architecture_unknown_here_is_reported_with_its_recorded_options(tmp_path, capsys, name):
    # "tiny": added with register_model in the process that trained it; the spec: a module not importable here
    make_run(tmp_path, "mlp", seed=0, top1=80.0)
    set_model(make_run(tmp_path, "tiny-s0", seed=0, top1=70.0), name, {"width": 4})
    set_model(make_run(tmp_path, "tiny-s1", seed=1, top1=72.0), name, {"width": 4})
    (run, *_), skipped = find_runs([tmp_path / "tiny-s0"])
    assert skipped == [] and run["config"]["model"] == {"name": name, "options": {"width": 4}}
    code, out, err = cli_main(capsys, "report", str(tmp_path), "--no-plots")
    assert code == 0 and err == []
    rows = {r["model"]: r for r in table_rows(out)}
    assert rows[name]["seeds"] == "2" and rows[name]["top-1 %"] == "71.00 ± 1.41" and rows["mlp"]["seeds"] == "1"
    assert "skipped" not in out


# ----------------------------------------------------------------------------- damaged runs are skipped and named
DAMAGE = {
    "deep metrics": ("metrics.json", "[" * 200_000, "metrics.json is not a metrics file (JSON nested too deeply)"),
    "world_size list": ("metrics.json", {"world_size": [1]}, "metrics.json: 'world_size' is [1]; allowed: an integer"),
    "amp object": ("metrics.json", {"amp": {}}, "metrics.json: 'amp' is {}; allowed: true, false or null"),
    "channels_last": ("metrics.json", {"channels_last": "yes"}, "'channels_last' is 'yes'; allowed: true, false"),
    "device": ("metrics.json", {"device": 0}, "metrics.json: 'device' is 0; allowed: a device name"),
    "teacher model": ("metrics.json", {"teachers": [{"model": ["x"]}]}, "'teachers' must be a list of"),
    "deep config": ("config.yaml", "[" * 200_000, "config.yaml: not valid YAML (nested too deeply)"),
    "bad log": ("log.csv", "epoch,test_top1\n1,abc\n", "log.csv line 2, column 'test_top1'"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_run_is_skipped_and_named_under_the_table(tmp_path, capsys, case):
    name, content, reason = DAMAGE[case]
    make_run(tmp_path, "good", seed=0, top1=80.0)
    bad = make_run(tmp_path, "bad", seed=1, top1=60.0)
    if isinstance(content, dict):
        update_metrics(bad, **content)
    else:
        (bad / name).write_text(content)
    runs, skipped = find_runs([tmp_path])
    assert [r["run_dir"] for r in runs] == [str(tmp_path / "good")] and [s.run_dir for s in skipped] == [str(bad)]
    assert reason in skipped[0].reason and "\n" not in skipped[0].reason
    code, out, err = cli_main(capsys, "report", str(tmp_path), "--out", str(tmp_path / "report"))
    assert code == 0 and err == []
    (row,) = table_rows(out)
    assert row["seeds"] == "1" and row["top-1 %"] == "80.00"
    (note,) = [line for line in out.splitlines() if line.startswith("- skipped ")]
    assert note.startswith(f"- skipped {bad}: ") and reason in note
    assert (tmp_path / "report" / "report.md").read_text() == out.rstrip("\n") + "\n"


def test_when_no_run_can_be_read_report_exits_2_naming_each(tmp_path, capsys):
    for k in range(2):
        update_metrics(make_run(tmp_path, f"bad{k}", seed=k), world_size=[1])
    code, out, err = cli_main(capsys, "report", str(tmp_path), "--out", str(tmp_path / "report"))
    assert code == 2 and out == "" and len(err) == 1
    assert err[0].startswith(f"selfdistill: error: none of the 2 runs under {tmp_path} can be read: {tmp_path}/bad0: ")
    assert f"; {tmp_path}/bad1: metrics.json: 'world_size' is [1]" in err[0]
    assert not (tmp_path / "report").exists()
    (tmp_path / "bad1" / "metrics.json").unlink()
    code, out, err = cli_main(capsys, "report", str(tmp_path))
    assert code == 2 and err == [f"selfdistill: error: {tmp_path}/bad0: metrics.json: 'world_size' is [1]; allowed: "
                                 "an integer >= 1"]


# ----------------------------------------------------------------------------- log.csv rows without an epoch
def test_log_rows_without_an_epoch_are_left_out_of_the_curve_and_said(tmp_path, capsys):
    run = make_run(tmp_path, "s0", curve=(50.0, 60.0, 80.0))
    lines = (run / "log.csv").read_text().splitlines()
    lines[2] = "," + lines[2].split(",", 1)[1]  # epoch 2 lost its number
    lines[3] = "nan," + lines[3].split(",", 1)[1]
    (run / "log.csv").write_text("\n".join(lines) + "\n")
    (group,) = group_runs(find_runs([tmp_path]).runs)
    curve = group_curve(group, "test_top1", group.label)
    assert curve.epochs == [1.0] and curve.mean == [50.0]
    code, out, _ = cli_main(capsys, "report", str(tmp_path), "--out", str(tmp_path / "report"))
    assert code == 0 and f"`{run}`: 2 rows of log.csv without an epoch number left out of the accuracy curve" in out
    assert (tmp_path / "report" / "accuracy.png").is_file()


# ----------------------------------------------------------------------------- fuzzing metrics.json
scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8)
           | st.sampled_from(["test", "val", "cpu", "cuda:0", "peer1", "mlp"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=6) | st.sampled_from(["model", "path", "bins", "count", "peer1"]), inner, max_size=3),
    max_leaves=8)
deep = st.integers(1, 3000).map(lambda n: f"<deep {n}>")  # replaced by n nested lists in the file's text
FIELDS = ["eval_split", "test_top1", "test_nll", "test_ece", "images_per_s", "wall_s", "device", "world_size", "amp",
          "channels_last", "teachers", "networks", "reliability", "test_agreement", "peer1_test_top1", "seed"]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), values | deep, max_size=4),
       dropped=st.lists(st.sampled_from(FIELDS), max_size=2))
def test_any_metrics_fields_give_a_report_or_a_named_skip(tmp_path_factory, changes, dropped):
    root = tmp_path_factory.mktemp("fuzz")
    make_run(root, "good", seed=0)
    bad = make_run(root, "bad", seed=1)
    metrics = {k: v for k, v in json.loads((bad / "metrics.json").read_text()).items() if k not in dropped}
    text = json.dumps({**metrics, **changes})
    text = re.sub(r'"<deep (\d+)>"', lambda m: "[" * int(m[1]) + "]" * int(m[1]), text)
    (bad / "metrics.json").write_text(text)
    read = {r["run_dir"] for r in find_runs([root]).runs}
    report = build_report([str(root)], None)
    assert table_rows(report)
    assert (str(bad) in read) != (f"- skipped {bad}: " in report)
    shutil.rmtree(root)
