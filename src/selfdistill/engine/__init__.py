"""The training engine: one loop, optimisers and schedules, evaluation, checkpoints, DDP.

What happens when: :mod:`.validate` checks a config against the registries, :mod:`.assemble` builds a
run from it (data, networks, teachers, method; resume state), :mod:`.loop` trains an epoch step by step,
:mod:`.outputs` evaluates, logs and writes checkpoints and final files, and :mod:`.trainer` runs the
epochs and says what happened.
"""

from .evaluate import evaluate_networks
from .trainer import Trainer, train
from .validate import resolve

__all__ = ["Trainer", "evaluate_networks", "resolve", "train"]
