"""A run's config, checked against the registries: the one ``resolve`` that commands and the trainer use.

:func:`selfdistill.config.build_config` checks every key, type and range but knows no registry (the
config module is a leaf). The names it cannot judge are checked here by the layer that owns each
registry: the dataset by ``data``, the architecture and its options by ``models``, the method and its
options by ``methods``, the teachers by ``models.teachers``. The result lists every option the run uses
(the method's and the architecture's defaults filled in), so ``config.yaml`` in a run directory says
everything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import Config, build_config
from ..data import check_dataset_name
from ..errors import UserError
from ..methods import check_method_fits, resolve_method
from ..models import is_model_name, resolve_model_options
from ..models.teachers import parse_teacher


def resolve(layers: list[dict[str, Any]], recorded: bool = False) -> Config:
    """Merge override layers onto the defaults, build the config and check it whole (one ``UserError``
    naming the first field that is wrong).

    ``recorded``: the config of a finished run, read for its settings (``report``, ``eval``), which builds no
    network: an architecture this process cannot build (a name added with ``register_model`` in the process
    that trained it, a user's module not importable here) keeps the options the run recorded instead of
    failing."""
    config = build_config(layers)
    config.method = resolve_method(config.method)
    config.teachers = [parse_teacher(entry, f"teachers[{k}]").to_dict() for k, entry in enumerate(config.teachers)]
    check_dataset_name(config.data.dataset)
    if not (recorded and not is_model_name(config.model.name)):
        config.model.options = resolve_model_options(config.model.name, config.model.options)  # checks the name too
    check_method_fits(config.method, len(config.teachers), config.data.batch_size)
    return config


def resolve_saved_config(saved: dict[str, Any], where: Path) -> Config:
    """The config stored in a checkpoint, resolved; one that no longer resolves is a ``UserError``."""
    try:
        return resolve([saved])
    except UserError as exc:
        raise UserError(f"{where} holds a config this version cannot use ({exc})") from None
