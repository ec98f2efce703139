"""Progress reporting: a live bar on a terminal, one plain line per epoch otherwise."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


class Progress:
    def __init__(self, enabled: bool | str, is_main: bool) -> None:
        interactive = sys.stderr.isatty() if enabled == "auto" else bool(enabled)
        self.bar_enabled = interactive and is_main
        self.is_main = is_main
        self._bar: tqdm | None = None

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        if self.bar_enabled:
            self._bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{epochs}", unit="step", leave=False,
                             dynamic_ncols=True)

    def update(self, steps_done: int, stats: dict[str, float]) -> None:
        """Move the bar to ``steps_done`` and show the running ``stats``."""
        if self._bar is not None:
            self._bar.set_postfix({k: f"{v:.3f}" for k, v in stats.items()}, refresh=False)
            self._bar.update(steps_done - self._bar.n)

    def end_epoch(self, row: dict[str, Any], terms: tuple[str, ...], epochs: int) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if not self.is_main:
            return
        parts = [f"epoch {row['epoch']}/{epochs}", f"lr {row['lr']:.4g}",
                 "loss " + " ".join(f"{t} {row[t]:.4f}" for t in terms), f"train {row['train_top1']:.2f}%"]
        if row["test_top1"] is not None:
            parts.append(f"test {row['test_top1']:.2f}% nll {row['test_nll']:.4f} ece {row['test_ece']:.2f}%")
        parts.append(f"{row['images_per_s']:,.0f} img/s {row['seconds']:.1f}s")
        print(" | ".join(parts), flush=True)

    @property
    def wants_stats(self) -> bool:
        return self._bar is not None
