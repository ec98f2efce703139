"""What may change when a run is resumed.

A resumed run must end where the uninterrupted run would have ended, so every result-defining field of
the config must equal the saved one; only :data:`~selfdistill.config.RESUMABLE_FIELDS` (where data is
found, what is printed or checked, timeouts) may differ, and ``train.epochs`` under three conditions:

* it is not below the number of epochs already done;
* the learning rate of an epoch does not depend on ``train.epochs``: schedules ``multistep`` and
  ``constant`` (``cosine`` decays over ``train.epochs``, so a longer run would have used other learning
  rates from its first epoch on, and the epochs already done would belong to another run);
* no method depends on ``train.epochs`` (PS-KD ramps its weight over the whole run).

A run extended this way (``--resume --epochs 300`` on a finished 240-epoch run) trains exactly as a
300-epoch run would have, bit for bit on a CPU; its log differs only in that epoch 240 was evaluated
as the final epoch even where ``train.eval_every`` would have skipped it.
"""

from __future__ import annotations

from typing import Any

from ..config import RESUMABLE_FIELDS, Config, ScheduleConfig, differences
from ..errors import UserError
from ..methods import build_method

EPOCH_INDEPENDENT_SCHEDULES = ("multistep", "constant")


def can_extend(saved: dict[str, Any]) -> bool:
    """Whether a finished run whose ``config.yaml`` holds ``saved`` could be extended with ``--resume
    --epochs N`` (see the module docstring); False where the file does not say."""
    schedule, method = saved.get("schedule"), saved.get("method")
    name = schedule.get("name", ScheduleConfig.name) if isinstance(schedule, dict) else None
    if name not in EPOCH_INDEPENDENT_SCHEDULES or not isinstance(method, dict):
        return False
    try:
        return not build_method(method).uses_total_epochs
    except (UserError, KeyError, TypeError):
        return False


def check_resume(saved: Config, now: Config, epochs_done: int, method_uses_total_epochs: bool) -> None:
    """Refuse, with one line, a resume whose config would not continue the saved run."""
    diff = differences(saved, now, ignore=(*RESUMABLE_FIELDS, "train.epochs"))
    if diff:
        raise UserError(f"--resume: the config differs from the saved run in {diff[0]}; resume with the saved "
                        "settings, or start a new --out")
    if now.train.epochs == saved.train.epochs or epochs_done == 0:
        return
    change = f"--resume: train.epochs cannot change from {saved.train.epochs} to {now.train.epochs}"
    if now.train.epochs < epochs_done:
        raise UserError(f"{change}: {epochs_done} epochs are already done")
    if saved.schedule.name not in EPOCH_INDEPENDENT_SCHEDULES:
        raise UserError(f"{change}: schedule {saved.schedule.name} depends on train.epochs, so the epochs already "
                        "done would differ; only multistep and constant schedules can be extended, start a new --out")
    if method_uses_total_epochs:
        raise UserError(f"{change}: method {saved.method['name']} depends on train.epochs; start a new --out")
