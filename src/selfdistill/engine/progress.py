"""What a run says while it trains: a start line (warnings beside it, on stderr), a live bar on a terminal
(or, off a terminal, a status line every ``train.status_every`` seconds), and one line per epoch. Only
rank 0 speaks.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from tqdm import tqdm

from ..errors import printable_line


def _duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class Progress:
    def __init__(self, enabled: bool | str, is_main: bool, status_every: float = 0.0, split: str = "test") -> None:
        interactive = sys.stderr.isatty() if enabled == "auto" else bool(enabled)
        self.bar_enabled = interactive and is_main
        self.is_main = is_main
        self.status_every = status_every if is_main and not self.bar_enabled else 0.0
        self.split = split
        self._bar: tqdm | None = None
        self._epoch = self._epochs = self._steps = 0
        self._epoch_start = self._last_status = 0.0

    def say(self, line: str) -> None:
        """Print one line on rank 0 (stdout, flushed)."""
        if self.is_main:
            print(line, flush=True)

    def warn(self, line: str) -> None:
        """Print one warning line on rank 0 (stderr, flushed), as ``selfdistill: <line>`` (a path with a line
        break in it stays on the line, escaped)."""
        if self.is_main:
            print(f"selfdistill: {printable_line(line)}", file=sys.stderr, flush=True)

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        self._epoch, self._epochs, self._steps = epoch, epochs, steps
        self._epoch_start = time.monotonic()
        if self._last_status == 0.0:
            self._last_status = self._epoch_start
        if self.bar_enabled:
            self._bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{epochs}", unit="step", leave=False,
                             dynamic_ncols=True)

    def status_due(self) -> bool:
        """True when a status line is due (off a terminal, every ``status_every`` seconds)."""
        return self.status_every > 0 and time.monotonic() - self._last_status >= self.status_every

    def status(self, steps_done: int, values: dict[str, float]) -> None:
        """Print a status line: ``values`` holds the running ``loss``, train ``acc`` and ``images`` forwarded."""
        now = time.monotonic()
        self._last_status = now
        elapsed = now - self._epoch_start
        per_step = elapsed / max(steps_done, 1)
        left = (self._steps - steps_done + self._steps * (self._epochs - self._epoch - 1)) * per_step
        self.say(f"epoch {self._epoch + 1}/{self._epochs} step {steps_done}/{self._steps} | loss {values['loss']:.4f} "
                 f"| train {values['acc']:.2f}% | {values['images'] / max(elapsed, 1e-9):,.0f} img/s | "
                 f"about {_duration(left)} of training left")

    def update(self, steps_done: int, stats: dict[str, float]) -> None:
        """Move the bar to ``steps_done`` and show the running ``stats``."""
        if self._bar is not None:
            self._bar.set_postfix({k: f"{v:.3f}" for k, v in stats.items()}, refresh=False)
            self._bar.update(steps_done - self._bar.n)

    def end_epoch(self, row: dict[str, Any], terms: tuple[str, ...], epochs: int, stats: tuple[str, ...] = (),
                  roles: tuple[str, ...] = ()) -> None:
        """One line for the epoch: the loss terms, the method's step statistics, the student's figures and,
        in an online run, the other networks' and the ensemble's top-1 (``roles``: the other networks)."""
        self.close()
        s = self.split
        parts = [f"epoch {row['epoch']}/{epochs}", f"lr {row['lr']:.4g}",
                 "loss " + " ".join(f"{t} {row[t]:.4f}" for t in terms), f"train {row['train_top1']:.2f}%"]
        if stats:
            parts.insert(3, " ".join(f"{name} {row[name]:.3f}" for name in stats))
        if row.get(f"{s}_top1") is not None:
            parts.append(f"{s} {row[f'{s}_top1']:.2f}% nll {row[f'{s}_nll']:.4f} ece {row[f'{s}_ece']:.2f}%")
            if roles:
                parts.append(" ".join(f"{role} {row[f'{role}_{s}_top1']:.2f}%" for role in (*roles, "ensemble")))
        parts.append(f"{row['images_per_s']:,.0f} img/s {row['seconds']:.1f}s")
        self.say(" | ".join(parts))
        self._last_status = time.monotonic()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    @property
    def wants_stats(self) -> bool:
        return self._bar is not None
