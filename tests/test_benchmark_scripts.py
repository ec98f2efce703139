"""The benchmark scripts run end to end (on tiny settings), so they cannot rot unnoticed."""

import argparse
import json
import subprocess
import sys

from conftest import ROOT

BENCH = ROOT / "benchmarks"


def run(script, *args):
    return subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)


def test_selfkd_table_runs_a_two_stage_grid_and_writes_the_table(tmp_path):
    result = run("selfkd_table.py", "--dataset", "fashion-mnist-mini", "--train-subset", "300", "--epochs", "1",
                 "--seeds", "0", "1", "--noise", "0", "--methods", "tf_kd_self", "dsr", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    table = (tmp_path / "selfkd_table.md").read_text()
    rows = {line.split("|")[3].strip(): line for line in table.splitlines()[2:]}
    assert set(rows) == {"ce", "dsr", "tf_kd_self"}  # CE trained first, as Tf-KD_self's teacher
    assert "±" in rows["dsr"] and (tmp_path / "cnn" / "noise0" / "ce" / "seed1" / "model.pt").is_file()
    again = run("selfkd_table.py", "--dataset", "fashion-mnist-mini", "--train-subset", "300", "--epochs", "1",
                "--seeds", "0", "1", "--noise", "0", "--methods", "tf_kd_self", "dsr", "--out", str(tmp_path))
    assert again.returncode == 0 and "done" not in again.stdout  # finished runs are not trained again


def test_timing_scripts_report_a_ratio():
    for script in ("engine_overhead.py", "dlb_cost.py", "mix_cost.py"):
        result = run(script, "--dataset", "fashion-mnist-mini", "--images", "400", "--repeats", "1")
        assert result.returncode == 0, result.stderr[-2000:]
        assert "ratio" in result.stdout.splitlines()[-1]


def test_table_labels_validation_figures_as_such(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    from grid import Grid, table

    grid = Grid(tmp_path, ["cnn"], [0.0], [0], [], epochs=1)
    assert "| top-1 % |" in table(grid) and "val" not in table(grid)
    grid.sets = ["data.validation_split=1000"]
    assert "| val top-1 % | Δ val top-1 vs CE | val NLL | val ECE % |" in table(grid)


def test_teacher_cost_reports_kd_against_ce_plus_teacher():
    result = run("teacher_cost.py", "--dataset", "fashion-mnist-mini", "--images", "128", "--batch-size", "32",
                 "--student", "cnn", "--teacher", "cnn", "--method", "kd", "--repeats", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    last = result.stdout.splitlines()[-1]
    assert "teacher alone" in last and "ratio (CE + teacher) / kd" in last


def test_kd_table_distils_from_the_teacher_of_each_kind(tmp_path):
    result = run("kd_table.py", "--dataset", "fashion-mnist-mini", "--train-subset", "200", "--epochs", "1",
                 "--teacher-epochs", "1", "--teacher", "cnn", "--seeds", "0", "--methods", "kd", "kd_ls_teacher",
                 "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    table = (tmp_path / "kd_table.md").read_text()
    assert "| cnn | teacher_ce | 1 |" in table and "| cnn | teacher_ls | 1 |" in table
    rows = {line.split("|")[1].strip(): line.split("|") for line in table.splitlines() if line.startswith("| kd")}
    assert set(rows) == {"kd", "kd_ls_teacher"} and rows["kd_ls_teacher"][2].strip() == "1 x cnn (LS)"
    assert float(rows["kd"][8]) > 0  # agreement with the teacher, read from the run's metrics
    for variant, teacher in (("kd", "teacher_ce"), ("kd_ls_teacher", "teacher_ls")):
        metrics = json.loads((tmp_path / "cnn" / "noise0" / variant / "seed0" / "metrics.json").read_text())
        assert metrics["teachers"][0]["path"] == str(tmp_path / "cnn" / "noise0" / teacher / "seed0")


def test_kd_table_gives_ca_mkd_the_next_seeds_teachers_in_turn(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    from grid import Grid, Variant
    from kd_table import student_variants, teacher_seeds

    assert teacher_seeds([0, 1, 2], 2) == [0, 1, 2] and teacher_seeds([5], 3) == [5, 6, 7]
    ce = Grid(tmp_path, ["resnet20"], [0.0], [0, 1, 2], [Variant("teacher_ce", "ce")], epochs=1)
    ls = Grid(tmp_path, ["resnet20"], [0.0], [0, 1, 2], [Variant("teacher_ls", "ls")], epochs=1)
    (ca,) = student_variants(["ca_mkd"], 5, ce, ls, "resnet20", [0, 1, 2], 2)
    folder = tmp_path / "resnet20" / "noise0" / "teacher_ce"
    assert ca.sets_for(2) == (f"teachers=[{folder / 'seed2'}, {folder / 'seed0'}]",)
    (dkd,) = student_variants(["dkd"], 24, ce, ls, "resnet20", [0], 2)
    assert dkd.sets == ("method.warmup_epochs=2",)  # DKD's 20 of 240 epochs, scaled to the run


def test_torchdistill_side_by_side_dry_run_plans_without_installing(tmp_path):
    venv = tmp_path / "venv"
    result = run("torchdistill_side_by_side.py", "--dry-run", "--venv", str(venv), "--out", str(tmp_path / "out"),
                 "--threads", "1", "2", "--epochs", "2", "--train-subset", "500")
    assert result.returncode == 0, result.stderr[-2000:]
    plan = [line.removeprefix("would run: ") for line in result.stdout.splitlines()]
    assert "torchdistill==1.1.5" in plan[1] and plan[1].startswith(f"{venv}/bin/python -m pip install")
    assert "--train-subset 500" in plan[2] and "--method ce --model resnet20" in plan[2]  # the teacher, once
    jobs = [json.loads(line.split("--worker ", 1)[1]) for line in plan[3:]]
    assert [(j["job"], j["threads"]) for j in jobs] == [("ce", 1), ("kd", 1), ("ce", 2), ("kd", 2)]
    assert all(j["epochs"] == 2 and j["train_subset"] == 500 for j in jobs)
    assert not venv.exists() and not (tmp_path / "out").exists()


def test_online_cost_times_dml_against_two_ce_steps_and_both_switokd_modes():
    result = run("online_cost.py", "--dataset", "fashion-mnist-mini", "--images", "128", "--batch-size", "32",
                 "--repeats", "1")
    assert result.returncode == 0, result.stderr[-2000:]  # it also checks that each forced mode was taken
    rows = {line.split("|")[1].strip() for line in result.stdout.splitlines() if line.startswith("| ")}
    assert {"ce A", "ce B", "dml", "switokd learning", "switokd expert"} <= rows
    last = result.stdout.splitlines()[-1]
    assert "switokd expert / learning time" in last and "ratio (ce A + ce B) / dml" in last


def test_online_table_pairs_each_network_with_the_ce_of_its_architecture(tmp_path):
    figure = tmp_path / "figures" / "reliability.png"
    result = run("online_table.py", "--dataset", "fashion-mnist-mini", "--train-subset", "200", "--epochs", "1",
                 "--seeds", "0", "--teacher", "resnet8", "--methods", "dml", "bd_kd", "sokd", "--out",
                 str(tmp_path), "--figure", str(figure))
    assert result.returncode == 0, result.stderr[-2000:]
    table = (tmp_path / "online_table.md").read_text()
    rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    main = {(r[0].strip(), r[1].strip()): [c.strip() for c in r] for r in rows if len(r) == 12}
    assert set(main) - {("method", "other network")} == {
        ("ce", "—"), ("ce", "resnet8 alone"), ("dml", "peer1 (resnet8)"), ("bd_kd", "teacher (resnet8)"),
        ("sokd", "branch (resnet8)")}
    ce_alone = json.loads((tmp_path / "resnet8" / "noise0" / "ce" / "seed0" / "metrics.json").read_text())
    assert float(main[("ce", "resnet8 alone")][7]) == round(ce_alone["test_top1"], 2)
    dml = json.loads((tmp_path / "cnn" / "noise0" / "dml" / "seed0" / "metrics.json").read_text())
    assert float(main[("dml", "peer1 (resnet8)")][8]) == round(dml["peer1_test_top1"] - ce_alone["test_top1"], 2)
    sokd = json.loads((tmp_path / "cnn" / "noise0" / "sokd" / "seed0" / "metrics.json").read_text())
    assert sokd["teachers"][0]["path"] == str(tmp_path / "resnet8" / "noise0" / "ce" / "seed0")  # same seed's CE
    assert "| student (cnn) |" in table and "| teacher/peer (resnet8) |" in table and figure.stat().st_size > 0


def test_gpu_throughput_cases_cover_the_checklist_once_each_most_wanted_first(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    from gpu_throughput import cases

    todo = cases(["resnet18", "resnet20"], [128, 256], 64)
    assert len(set(todo)) == len(todo)
    precision = {(m, model, b, v) for m in ("ce", "dlb") for model in ("resnet18", "resnet20") for b in (128, 256)
                 for v in ("fp32", "bf16", "bf16+cl")}
    others = {(m, model, b, "bf16+cl") for m in ("kd", "dml") for model in ("resnet18", "resnet20") for b in (128, 256)}
    compiled = {(m, model, 256, "bf16+cl+compile") for m in ("ce", "dlb") for model in ("resnet18", "resnet20")}
    recipe = {(m, "resnet18", 64, "bf16+cl") for m in ("ce", "dlb")}
    assert set(todo) == precision | others | compiled | recipe
    # the first model's precision variants and the recipe batch come before anything of the second model
    first_other = min(k for k, case in enumerate(todo) if case[1] == "resnet20")
    assert set(todo[:first_other]) == {c for c in precision if c[1] == "resnet18"} | recipe
    assert max(todo.index(c) for c in compiled) < min(todo.index(c) for c in others if c[2] == 128)


def test_gpu_throughput_writes_a_json_line_per_case_and_stops_at_its_deadline(tmp_path):
    out = tmp_path / "t.jsonl"
    common = ["--device", "cpu", "--dataset", "fashion-mnist-mini", "--models", "mlp", "--batches", "16",
              "--recipe-batch", "8", "--steps", "1", "--repeats", "1", "--out", str(out)]
    result = run("gpu_throughput.py", *common, "--only", "1,4,7")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["method"], r["batch_size"], r["variant"]) for r in rows] == [("ce", 16, "fp32"), ("dlb", 16, "fp32"),
                                                                            ("ce", 8, "bf16+cl")]
    assert [r["rows_per_step"] for r in rows] == [16, 32, 8]  # DLB's replayed half counted
    assert rows[2]["amp"] and rows[2]["channels_last"] and rows[0]["peak_memory_mib"] is None  # no GPU here
    assert result.stdout.splitlines()[-1].split()[:4] == ["ce", "mlp", "8", "bf16+cl"]  # the table's last row
    late = run("gpu_throughput.py", *common, "--deadline-s", "0")
    assert late.returncode == 0 and "deadline: 12 case(s) not run, from #1" in late.stdout
    assert len(out.read_text().splitlines()) == 3  # nothing added


def test_gpu_paper_regime_plans_to_its_budget_and_scales_the_step_schedule(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))

    from gpu_paper_regime import plan

    rates = tmp_path / "rates.jsonl"
    rates.write_text("\n".join(json.dumps({"method": m, "model": "resnet18", "batch_size": 64, "variant": "bf16+cl",
                                           "train_images_per_s": speed, "rows_per_step": rows})
                               for m, speed, rows in (("ce", 6000.0, 64), ("dlb", 10000.0, 128))))
    args = argparse.Namespace(throughput=str(rates), model="resnet18", batch_size=64, overhead=1.0, contention=0.5,
                              epochs=60, seeds=[0, 1, 2], noise=[0.0])
    epoch_s = 60000 / 5000  # DLB, the slower: 5,000 new images/s
    for budget, expected in ((60 * epoch_s * 2.0, (60, [0, 1, 2])), (60 * epoch_s * 1.5, (60, [0, 1])),
                             (60 * epoch_s, (60, [0])), (30 * epoch_s, (30, [0]))):
        args.budget_s = budget
        assert plan(args) == expected, budget
    result = run("gpu_paper_regime.py", "--dataset", "fashion-mnist-mini", "--model", "mlp", "--train-subset", "200",
                 "--epochs", "4", "--seeds", "0", "--eval-every", "2", "--out", str(tmp_path / "regime"))
    assert result.returncode == 0, result.stderr[-2000:]
    summary = (tmp_path / "regime" / "summary.md").read_text()
    assert "| mlp | 0 | ce | 4 |" in summary and "| mlp | 0 | dlb | 4 |" in summary
    config = (tmp_path / "regime" / "mlp" / "noise0" / "dlb" / "seed0" / "config.yaml").read_text()
    assert "milestones:\n  - 2\n  - 3\n" in config and "temperature: 3.0" in config and "nesterov: true" in config


def test_teacher_inference_times_the_three_ways_and_checks_they_agree():
    result = run("teacher_inference.py", "--models", "cnn", "--channels", "1", "--size", "12", "--batch-size", "4",
                 "--steps", "1", "--repeats", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    for way in ("engine (channels_last, inference_mode)", "batch norms folded", "torch.compile"):
        assert any(line.startswith("cnn") and way in line and "ratio" in line for line in lines), way
    gaps = [float(line.split("difference|")[1]) for line in lines if "max |logit difference|" in line]
    assert len(gaps) == 3 and max(gaps) < 1e-4


def test_cpu_compile_times_a_compiled_student_against_eager():
    result = run("cpu_compile.py", "--dataset", "fashion-mnist-mini", "--images", "128", "--batch-size", "32",
                 "--models", "mlp", "--methods", "ce", "--repeats", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    last = result.stdout.splitlines()[-1].split()
    assert last[:2] == ["mlp", "ce"] and len(last) == 6 and float(last[4]) > 0  # speed-up column


def test_busy_threads_times_every_setting_under_load():
    result = run("busy_threads.py", "--models", "cnn", "--busy", "1", "--repeats", "1", "--seconds", "0.2")
    assert result.returncode == 0, result.stderr[-2000:]
    header, row = result.stdout.splitlines()[-2:]
    assert "passive" in header and "spin 10k" in header
    model, busy, *speeds = row.split()
    assert (model, busy, len(speeds)) == ("cnn", "1", 4) and all(float(s.replace(",", "")) > 0 for s in speeds)
