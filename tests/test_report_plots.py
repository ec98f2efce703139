"""``report``'s figures, read back as matplotlib Figures: legend labels that name only what tells groups apart,
top-1/NLL/ECE panels, the frozen teacher as a labelled reference line, one figure per dataset, "mean ± std"
only with several seeds, and reliability diagrams that say when their ECE is that of pooled bins.

Run directories are fabricated by hand (:func:`test_report.make_run`); online runs' figures are tested on
real runs in ``test_online_outputs.py``.
"""

import re

from hypothesis import given
from hypothesis import strategies as st

from selfdistill.analysis import report_plots
from selfdistill.analysis.report import build_report, group_runs
from selfdistill.analysis.report_plots import curves_figure, diagrams_figure, file_suffixes
from selfdistill.analysis.runs import find_runs
from test_report import make_run

TEACHER = (90.0, 0.2, 86.0, 1.9)  # agreement, KL, teacher top-1, non-target entropy


def legend(fig):
    """The legend's texts (on the last axes)."""
    return [t.get_text() for t in fig.axes[-1].get_legend().get_texts()]


def lines(ax):
    """The axes' labelled lines by label."""
    return {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}


def groups_of(root):
    return group_runs(find_runs([root]).runs)


# ----------------------------------------------------------------------------- legend labels
def test_labels_show_only_options_that_differ_within_a_method_qualified_by_the_method(tmp_path):
    make_run(tmp_path, "ce")
    make_run(tmp_path, "dlb", method="dlb")
    make_run(tmp_path, "dlb-a2", method="dlb", sets=["method.alpha=2"])
    make_run(tmp_path, "dsr", method="dsr")
    make_run(tmp_path, "dsr-b2", method="dsr", sets=["method.beta=2"])  # DSR's beta and DKD's are other things
    make_run(tmp_path, "dkd", method="dkd", teachers=[("t", "mlp")], fidelity=TEACHER)
    make_run(tmp_path, "dkd-b4", method="dkd", sets=["method.beta=4"], teachers=[("t", "mlp")], fidelity=TEACHER)
    make_run(tmp_path, "cs_kd", method="cs_kd")  # one group of its method: none of its defaults shows
    labels = [g.label for g in groups_of(tmp_path)]
    assert labels == ["ce", "cs_kd", "dkd dkd.beta=4", "dkd dkd.beta=8", "dlb dlb.alpha=1", "dlb dlb.alpha=2",
                      "dsr dsr.beta=1", "dsr dsr.beta=2"]
    assert legend(curves_figure(groups_of(tmp_path))) == [*labels, "teacher of dkd dkd.beta=4, dkd dkd.beta=8 (top-1 "
                                                                     "86.00%)"]


def test_labels_of_model_options_teachers_composed_methods_and_shared_fields(tmp_path):
    make_run(tmp_path, "mlp")
    make_run(tmp_path, "cnn", sets=["model.name=cnn"])  # the MLP's and the CNN's options never show
    make_run(tmp_path, "cnn-w8", sets=["model.name=cnn", "model.options={width: 8}"])
    make_run(tmp_path, "kd-mlp", method="kd", teachers=[("t", "mlp")], fidelity=TEACHER)
    make_run(tmp_path, "kd-cnn", method="kd", teachers=[("t", "cnn")], fidelity=TEACHER)
    make_run(tmp_path, "dist", method="dist", teachers=[("t", "mlp")], fidelity=TEACHER)  # one group: no teachers=
    make_run(tmp_path, "mix", method="dlb+dsr", sets=["method.dsr.beta=3"])
    make_run(tmp_path, "mix-lr", method="dlb+dsr", sets=["method.dsr.beta=2", "optim.lr=0.2"])
    assert sorted(g.label for g in groups_of(tmp_path)) == [
        "cnn ce cnn.width=32 lr=0.05", "cnn ce cnn.width=8 lr=0.05", "mlp ce lr=0.05", "mlp dist lr=0.05",
        "mlp dlb+dsr dsr.beta=2 lr=0.2", "mlp dlb+dsr dsr.beta=3 lr=0.05", "mlp kd teachers=[cnn] lr=0.05",
        "mlp kd teachers=[mlp] lr=0.05"]


# ----------------------------------------------------------------------------- curves
def test_top1_nll_and_ece_panels_of_the_mean_over_seeds_and_mean_std_only_with_several_seeds(tmp_path):
    for seed, curve in ((0, (50.0, 80.0)), (1, (60.0, 90.0))):
        make_run(tmp_path / "two", f"s{seed}", seed=seed, curve=curve)
        make_run(tmp_path / "two", f"dlb-s{seed}", seed=seed, method="dlb", curve=curve)
    fig = curves_figure(groups_of(tmp_path / "two"))
    assert [ax.get_ylabel() for ax in fig.axes] == ["test top-1 (%)", "test NLL", "test ECE (%)"]
    assert fig.get_suptitle() == "mlp on synthetic: mean ± std over 2 seeds"
    assert legend(fig) == ["ce", "dlb"]
    ce = lines(fig.axes[0])["ce"]
    assert list(ce.get_xdata()) == [1.0, 2.0] and list(ce.get_ydata()) == [55.0, 85.0]
    assert list(lines(fig.axes[1])["ce"].get_ydata()) == [0.5, 0.5]  # the log's NLL column
    assert len(fig.axes[0].collections) == 2  # a std band per group

    make_run(tmp_path / "one", "ce")
    make_run(tmp_path / "one", "dlb", method="dlb")
    fig = curves_figure(groups_of(tmp_path / "one"))
    assert fig.get_suptitle() == "mlp on synthetic: one seed per line" and not fig.axes[0].collections
    make_run(tmp_path / "one", "dlb-s1", seed=1, method="dlb")
    fig = curves_figure(groups_of(tmp_path / "one"))
    assert legend(fig) == ["ce (1 seed)", "dlb (2 seeds)"] and "over each line's seeds" in fig.get_suptitle()


def test_a_frozen_teacher_is_a_labelled_horizontal_line_in_each_panel(tmp_path):
    make_run(tmp_path, "ce")
    for seed, teacher_top1 in ((0, 86.0), (1, 88.0)):
        make_run(tmp_path, f"kd-s{seed}", seed=seed, method="kd", teachers=[(f"t{seed}", "mlp")],
                 fidelity=(90.0, 0.2, teacher_top1, 1.9))
    fig = curves_figure(groups_of(tmp_path))
    label = "teacher of kd (top-1 87.00%)"  # the mean over seeds, each seed's own teacher
    assert legend(fig) == ["ce (1 seed)", "kd (2 seeds)", label]
    for ax, value in zip(fig.axes, (87.0, 0.7, 3.0)):  # make_run's teachers: NLL 0.7, ECE 3.0
        line = lines(ax)[label]
        assert list(line.get_ydata()) == [value, value] and list(line.get_xdata()) == [0, 1]  # axes-wide

    # two groups taught by the same teachers share one line
    make_run(tmp_path, "kd-t8", method="kd", sets=["method.temperature=8"], teachers=[("t0", "mlp")],
             fidelity=(90.0, 0.2, 86.0, 1.9))
    make_run(tmp_path, "dkd", method="dkd", teachers=[("t0", "mlp")], fidelity=(90.0, 0.2, 86.0, 1.9))
    texts = [t for t in legend(curves_figure(groups_of(tmp_path))) if t.startswith("teacher of")]
    assert texts == ["teacher of dkd, kd kd.temperature=8 (top-1 86.00%)",  # make_run's teachers share a hash
                     "teacher of kd kd.temperature=4 (top-1 87.00%)"]


def test_each_dataset_has_its_own_figures(tmp_path, monkeypatch):
    make_run(tmp_path / "runs", "syn")
    make_run(tmp_path / "runs", "syn-dlb", method="dlb")
    make_run(tmp_path / "runs", "mnist", sets=["data.dataset=mnist", "optim.lr=0.2"])
    drawn = {}
    save_png = report_plots.save_png

    def keep(fig, path):
        drawn[path.name] = fig
        save_png(fig, path)

    monkeypatch.setattr(report_plots, "save_png", keep)
    text = build_report([str(tmp_path / "runs")], tmp_path / "out")
    assert sorted(drawn) == ["accuracy-mnist.png", "accuracy-synthetic.png", "reliability-mnist.png",
                             "reliability-synthetic.png"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([*drawn, "report.md"])
    assert legend(drawn["accuracy-synthetic.png"]) == ["ce", "dlb"]  # lr differs only across datasets
    assert drawn["accuracy-synthetic.png"].get_suptitle() == "mlp on synthetic: one seed per line"
    assert drawn["accuracy-mnist.png"].get_suptitle() == "ce mlp on mnist: one seed"
    assert [ax.get_title().split("\n")[0] for ax in drawn["reliability-synthetic.png"].axes] == \
        ["ce (1 seed)", "dlb (1 seed)"]
    assert [ax.get_title().split("\n")[0] for ax in drawn["reliability-mnist.png"].axes] == ["ce (1 seed)"]
    assert f"{tmp_path / 'out' / 'accuracy-mnist.png'}: mnist: evaluated top-1, NLL and ECE" in text


@given(st.lists(st.text(min_size=1, max_size=12), min_size=2, max_size=6, unique=True))
def test_file_suffixes_are_distinct_and_safe(names):
    suffixes = file_suffixes(names)
    assert len(set(suffixes.values())) == len(names)
    assert all(re.fullmatch(r"-[A-Za-z0-9._-]+", s) and "/" not in s for s in suffixes.values())
    assert file_suffixes(names[:1]) == {names[0]: ""}


# ----------------------------------------------------------------------------- reliability
def test_a_diagram_of_several_runs_says_its_ece_is_of_pooled_bins_unlike_the_tables(tmp_path):
    make_run(tmp_path, "s0", seed=0, top1=80.0)
    make_run(tmp_path, "s1", seed=1, top1=90.0)
    make_run(tmp_path, "dlb", method="dlb", top1=80.0)
    fig, skipped = diagrams_figure(groups_of(tmp_path))
    pooled, single = (ax.get_title() for ax in fig.axes[:2])
    # the bins: 80 and 90 right of 100 at confidence 0.9 each (ECE 10% and 0%); metrics.json: ECE 2.0 each
    assert pooled.startswith("ce (2 seeds)\nECE 5.00%\n") and "pooled over 2 seeds" in pooled
    assert "the table's 2.00% is the mean of per-seed ECEs" in pooled.replace("\n", " ")
    assert single == "dlb (1 seed)\nECE 10.00%" and skipped == []


def test_groups_without_bins_are_left_out_of_the_diagrams(tmp_path):
    make_run(tmp_path, "new")
    make_run(tmp_path, "older", method="dlb", old=True)
    fig, skipped = diagrams_figure(groups_of(tmp_path))
    assert skipped == ["`dlb`"] and [ax.get_title().split("\n")[0] for ax in fig.axes] == ["ce (1 seed)"]
