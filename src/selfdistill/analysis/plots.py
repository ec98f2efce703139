"""PNG figures for ``eval``, ``report`` and the demo: metric curves per epoch and reliability diagrams.

Figures are built with matplotlib's object API (no pyplot, so no global backend or figure state) and
written through :func:`~selfdistill.fileio.atomic_write_bytes`. Reliability diagrams take the raw
bins of :meth:`~selfdistill.analysis.metrics.EvalAccumulator.reliability`.
"""

from __future__ import annotations

import io
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_bytes
from .metrics import ece_from_reliability

LEGEND_INSIDE = (4, 30)  # more entries or longer labels than this: the legend moves outside, to the right
MARKERS = ("o", "s", "^", "D")  # beyond 20 colours, colours repeat with another marker


@dataclass
class Curve:
    """One line: a value per epoch, with an optional ± band (the std over seeds). ``colour`` indexes the
    figure's palette (the lines of one group share it; None: the curve's position in its panel)."""

    label: str
    epochs: list[float]
    mean: list[float]
    std: list[float] | None = None
    colour: int | None = None
    style: Any = "-"  # a matplotlib line style: "-", "--", ":", "-." or a dash tuple


@dataclass
class Reference:
    """A horizontal line at a fixed value, such as a frozen teacher's top-1, named in the legend."""

    label: str
    value: float
    colour: int | None = None  # None: black


@dataclass
class Panel:
    """One axes: its y label, its curves and its reference lines."""

    ylabel: str
    curves: list[Curve]
    references: list[Reference] = field(default_factory=list)


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def save_png(fig: Any, path: str | Path) -> None:
    """Render ``fig`` to PNG bytes and write them atomically to ``path``."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def _colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def curve_figure(panels: list[Panel], title: str) -> Any:
    """A matplotlib Figure: one axes per panel side by side, x = epoch, one legend for all of them (each
    label once), on the last axes.

    Beyond 20 colours they repeat with another marker; with many entries or long labels the legend goes
    outside, to the right, in a smaller font, so it never hides the lines."""
    from matplotlib.ticker import MaxNLocator

    def colour_of(i: int, item: Curve | Reference) -> int:
        return i if item.colour is None else item.colour

    entries = {x.label for p in panels for x in (*p.curves, *p.references)}
    longest = max(map(len, entries), default=0)
    outside = len(entries) > LEGEND_INSIDE[0] or longest > LEGEND_INSIDE[1]
    width = 4.6 * len(panels) + (min(0.07 * longest, 5.0) + 0.5 if outside else 0.0)
    fig = _figure(width, 4.0)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    palette = _colours(1 + max([colour_of(i, c) for p in panels for i, c in enumerate(p.curves)]
                               + [r.colour for p in panels for r in p.references if r.colour is not None], default=0))
    for ax, panel in zip(axes, panels):
        for i, curve in enumerate(panel.curves):
            c = colour_of(i, curve)
            ax.plot(curve.epochs, curve.mean, linestyle=curve.style, color=palette[c], marker=MARKERS[(c // 20) % 4],
                    markersize=3, label=curve.label)
            if curve.std is not None:
                low = [m - s for m, s in zip(curve.mean, curve.std)]
                high = [m + s for m, s in zip(curve.mean, curve.std)]
                ax.fill_between(curve.epochs, low, high, color=palette[c], alpha=0.2, linewidth=0)
        for ref in panel.references:
            ax.axhline(ref.value, color="black" if ref.colour is None else palette[ref.colour],
                       linestyle=(0, (1, 1.5)), linewidth=1.3, label=ref.label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(panel.ylabel)
        ax.grid(alpha=0.3)
    legend: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    if outside:
        axes[-1].legend(legend.values(), legend.keys(), loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7,
                        frameon=False)
    else:
        axes[-1].legend(legend.values(), legend.keys(), fontsize=8)
    fig.suptitle(title)
    return fig


def curve_panels(path: str | Path, panels: list[Panel], title: str) -> None:
    """:func:`curve_figure`, written as a PNG to ``path``."""
    save_png(curve_figure(panels, title), path)


def draw_reliability(ax: Any, reliability: dict[str, Any], title: str, counts_ax: Any = None,
                     legend: bool = True, note: str = "") -> None:
    """Per-bin accuracy bars and mean confidence against the diagonal of perfect calibration, ECE in
    the title (then ``note``, such as how the bins were pooled). With ``counts_ax`` the share of images per
    bin goes into that second panel; without it the bars' shading says it (pale = few images)."""
    from matplotlib.colors import to_rgba

    bins, counts = reliability["bins"], reliability["count"]
    total = sum(counts) or 1
    width = 1.0 / bins
    filled = [i for i in range(bins) if counts[i]]
    centres = [(i + 0.5) * width for i in filled]
    accuracy = [reliability["correct"][i] / counts[i] for i in filled]
    confidence = [reliability["confidence_sum"][i] / counts[i] for i in filled]
    most = max(counts) or 1
    shades = [to_rgba("tab:blue", 1.0 if counts_ax is not None else 0.25 + 0.75 * counts[i] / most) for i in filled]
    ax.bar(centres, accuracy, width=width, color=shades, edgecolor="black", linewidth=0.4, label="accuracy")
    ax.hlines(confidence, [c - width / 2 for c in centres], [c + width / 2 for c in centres], color="tab:red",
              linewidth=1.2, label="mean confidence")
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="calibrated")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}\nECE {ece_from_reliability(reliability):.2f}%" + (f"\n{note}" if note else ""), fontsize=9)
    if legend:
        ax.legend(loc="upper left", fontsize=7)
    if counts_ax is None:
        ax.set_xlabel("confidence (pale bars: few images)")
        return
    counts_ax.bar([(i + 0.5) * width for i in range(bins)], [c / total for c in counts], width=width,
                  color="grey", edgecolor="black", linewidth=0.4)
    counts_ax.set_xlim(0, 1)
    counts_ax.set_xlabel("confidence")
    counts_ax.set_ylabel("share of images")


def reliability_figure(path: str | Path, reliability: dict[str, Any], title: str) -> None:
    """A reliability diagram with the share of images per bin in a small panel below."""
    fig = _figure(5.0, 5.6)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    draw_reliability(top, reliability, title, counts_ax=bottom)
    save_png(fig, path)


@dataclass
class Diagram:
    """One diagram of a grid: its title, its bins and a note shown under its ECE."""

    title: str
    reliability: dict[str, Any]
    note: str = ""


def reliability_grid_figure(diagrams: list[Diagram]) -> Any:
    """A matplotlib Figure: one shaded reliability diagram per :class:`Diagram`, up to four per row; the
    legend in the first."""
    cols = min(4, len(diagrams))
    rows = math.ceil(len(diagrams) / cols)
    fig = _figure(3.4 * cols, 3.6 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for i, (ax, diagram) in enumerate(zip(axes, diagrams)):
        draw_reliability(ax, diagram.reliability, textwrap.fill(diagram.title, 44), legend=i == 0,
                         note=textwrap.fill(diagram.note, 48))
    for ax in axes[len(diagrams):]:
        ax.set_visible(False)
    return fig


def reliability_grid(path: str | Path, diagrams: list[Diagram]) -> None:
    """:func:`reliability_grid_figure`, written as a PNG to ``path``."""
    save_png(reliability_grid_figure(diagrams), path)
