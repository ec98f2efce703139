"""What a run checks and says of its frozen teachers before it trains.

A teacher that was never trained, or was trained on other images of the same shape, passes every check of
shape and classes and still teaches nothing. So a run refuses a teacher whose model card (or checkpoint)
records another dataset than the student's (``data.teacher_dataset_check: false`` lets it through), and
shows each teacher's own top-1 on the evaluation split on its start line, with a warning where that is no
better than chance. A published checkpoint records no dataset: only its top-1 speaks for it. An online
method's trainable networks are not teachers: they are trained in the run.
"""

from __future__ import annotations

import math

from ..data import same_images
from ..errors import UserError
from ..models.teachers import LoadedTeacher

CHANCE_SIGMAS = 3.0  # a top-1 within this many binomial standard deviations above 1/classes is chance


def check_trained_on(loaded: list[LoadedTeacher], dataset: str, enabled: bool) -> None:
    """Refuse, with one line, the first teacher recorded as trained on another dataset than ``dataset``."""
    for k, teacher in enumerate(loaded):
        if enabled and teacher.trained_on is not None and not same_images(teacher.trained_on, dataset):
            raise UserError(f"teachers[{k}]: {teacher.source.weights} was trained on {teacher.trained_on} (as "
                            f"recorded with it), the student's data is {dataset}: its predictions on these images "
                            f"would teach nothing; give a teacher trained on {dataset}, or set "
                            "data.teacher_dataset_check=false if this is meant")


def at_chance(top1: float, num_classes: int, images: int) -> bool:
    """Whether ``top1`` (%) on ``images`` images is no better than guessing among ``num_classes`` classes: at
    most ``CHANCE_SIGMAS`` binomial standard deviations of a guess's accuracy above 1/``num_classes``."""
    p = 1.0 / num_classes
    return top1 / 100.0 <= p + CHANCE_SIGMAS * math.sqrt(p * (1.0 - p) / max(images, 1))


def chance_warnings(described: list[str], top1: list[float], num_classes: int, images: int,
                    split: str) -> list[str]:
    """One warning line for each teacher (``described``: its role, architecture and path) at chance level."""
    return [f"warning: {what} scores {score:.2f}% {split} top-1, no better than chance ({100 / num_classes:.2f}% "
            f"for {num_classes} classes, on {images:,} images): it has nothing to teach; check that it is the "
            "trained teacher for this data"
            for what, score in zip(described, top1) if at_chance(score, num_classes, images)]
