"""The benchmark scripts run end to end (on tiny settings), so they cannot rot unnoticed."""

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
    for script in ("engine_overhead.py", "dlb_cost.py"):
        result = run(script, "--dataset", "fashion-mnist-mini", "--images", "400", "--repeats", "1")
        assert result.returncode == 0, result.stderr[-2000:]
        assert "ratio" in result.stdout.splitlines()[-1]


def test_table_labels_validation_figures_as_such(tmp_path):
    sys.path.insert(0, str(BENCH))
    from grid import Grid, table

    grid = Grid(tmp_path, ["cnn"], [0.0], [0], [], epochs=1)
    assert "| top-1 % |" in table(grid) and "val" not in table(grid)
    grid.sets = ["data.validation_split=1000"]
    assert "| val top-1 % | Δ val top-1 vs CE | val NLL | val ECE % |" in table(grid)
