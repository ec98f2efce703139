"""PNG figures for ``eval``, ``report`` and the demo: metric curves per epoch and reliability diagrams.

Figures are built with matplotlib's object API (no pyplot, so no global backend or figure state) and
written through :func:`~selfdistill.fileio.atomic_write_bytes`. Reliability diagrams take the raw
bins of :meth:`~selfdistill.analysis.metrics.EvalAccumulator.reliability`.
"""

from __future__ import annotations

import io
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_bytes
from .metrics import ece_from_reliability

LEGEND_INSIDE = (4, 30)  # more curves or longer labels than this: the legend moves outside, to the right


@dataclass
class Curve:
    """One line: a value per epoch, with an optional ± band (the std over seeds)."""

    label: str
    epochs: list[float]
    mean: list[float]
    std: list[float] | None = None


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


def curve_panels(path: str | Path, panels: list[tuple[str, list[Curve]]], title: str) -> None:
    """One axes per ``(y label, curves)`` side by side, x = epoch, one shared legend.

    Beyond 20 curves colours repeat with another line style; with many curves or long labels the
    legend goes outside, to the right, in a smaller font, so it never hides the lines."""
    from matplotlib.ticker import MaxNLocator

    curves = panels[0][1]
    longest = max((len(c.label) for c in curves), default=0)
    outside = len(curves) > LEGEND_INSIDE[0] or longest > LEGEND_INSIDE[1]
    width = 4.6 * len(panels) + (min(0.07 * longest, 5.0) + 0.5 if outside else 0.0)
    fig = _figure(width, 4.0)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    colours = _colours(len(curves))
    for ax, (ylabel, panel_curves) in zip(axes, panels):
        for i, curve in enumerate(panel_curves):
            style = ("-", "--", ":", "-.")[(i // 20) % 4]
            ax.plot(curve.epochs, curve.mean, style, color=colours[i], marker="o", markersize=3, label=curve.label)
            if curve.std is not None:
                low = [m - s for m, s in zip(curve.mean, curve.std)]
                high = [m + s for m, s in zip(curve.mean, curve.std)]
                ax.fill_between(curve.epochs, low, high, color=colours[i], alpha=0.2, linewidth=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    if outside:
        axes[-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False)
    else:
        axes[-1].legend(fontsize=8)
    fig.suptitle(title)
    save_png(fig, path)


def draw_reliability(ax: Any, reliability: dict[str, Any], title: str, counts_ax: Any = None,
                     legend: bool = True) -> None:
    """Per-bin accuracy bars and mean confidence against the diagonal of perfect calibration, ECE in
    the title. With ``counts_ax`` the share of images per bin goes into that second panel; without it
    the bars' shading says it (pale = few images)."""
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
    ax.set_title(f"{title}\nECE {ece_from_reliability(reliability):.2f}%", fontsize=9)
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


def reliability_grid(path: str | Path, diagrams: list[tuple[str, dict[str, Any]]]) -> None:
    """One shaded reliability diagram per ``(title, bins)``, up to four per row; the legend in the first."""
    cols = min(4, len(diagrams))
    rows = math.ceil(len(diagrams) / cols)
    fig = _figure(3.4 * cols, 3.6 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for i, (ax, (title, reliability)) in enumerate(zip(axes, diagrams)):
        draw_reliability(ax, reliability, textwrap.fill(title, 44), legend=i == 0)
    for ax in axes[len(diagrams):]:
        ax.set_visible(False)
    save_png(fig, path)
