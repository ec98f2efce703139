"""One typed configuration for a training run.

A run is described by a :class:`Config` made of small dataclasses. It is assembled in layers, each
overriding the one before: the defaults below, a YAML file (``--config``), the command-line flags,
then ``--set key=value`` overrides with dotted keys (``--set method.alpha=0.5``). Values given to
``--set`` are parsed as YAML, so ``--set schedule.milestones=[150,180,210]`` works.

Every key is checked: a key that does not exist, a value of the wrong type or out of range raises
:class:`~selfdistill.errors.UserError` naming the field and what is allowed. The options of the
chosen method live under ``method`` next to its ``name`` and are checked against that method's own
options dataclass, so ``config.yaml`` in a run directory always lists every value that was used.

YAML is read with a strict safe loader (``yaml_io.py``): a key given twice in one mapping is an error
(PyYAML would keep the last silently), and a number field accepts every spelling Python's ``float()``
accepts (PyYAML reads ``1e-3`` as a string, since YAML 1.1 wants ``1.0e-3``; ``typed.py``); non-finite
numbers, and numbers beyond what torch computes in (float32, int64), are refused. Range checks are in
``ranges.py``.

This package is a leaf: it imports nothing of selfdistill but ``errors``. It knows no registry, so the
names of the dataset, model, method and teachers, and the method's and the model's options, are checked
by the layers that own them (:func:`selfdistill.engine.validate.resolve`).
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Union

import yaml

from ..errors import UserError, did_you_mean, require
from .ranges import validate
from .typed import build_dataclass
from .yaml_io import BUNDLED_RECIPES, load_yaml, parse_yaml, read_yaml_file

# read by the layers above through this package
__all__ = ["BUNDLED_RECIPES", "Config", "DataConfig", "ModelConfig", "OptimConfig", "ScheduleConfig",
           "SyntheticConfig", "TrainConfig", "build_config", "build_dataclass", "differences", "load_yaml", "merge",
           "nested", "parse_assignment", "parse_yaml", "read_yaml_file"]

Auto = Union[Literal["auto"], bool]  # "auto" or an explicit on/off


@dataclass
class SyntheticConfig:
    """Shape of the ``synthetic`` dataset (learnable class prototypes plus noise; for tests)."""

    num_classes: int = 10
    channels: int = 1
    size: int = 28
    train_size: int = 2000
    test_size: int = 500


@dataclass
class AugmentConfig:
    """Training-time augmentation; ``None`` means the dataset's default."""

    crop_padding: int | None = None  # random crop after zero padding by this many pixels
    flip: bool | None = None  # random horizontal flip
    resized_crop: bool | None = None  # random resized crop (scale 0.08-1) instead of padded crop


@dataclass
class MixConfig:
    """Mixup or CutMix on every training batch (with probability ``prob``)."""

    name: Literal["none", "mixup", "cutmix"] = "none"
    alpha: float = 1.0  # lam ~ Beta(alpha, alpha)
    prob: float | None = None  # None: 1.0 for mixup, 0.5 for CutMix (the CutMix paper's CIFAR setting)

    def probability(self) -> float:
        return self.prob if self.prob is not None else (0.5 if self.name == "cutmix" else 1.0)


@dataclass
class DataConfig:
    dataset: str = "fashion-mnist-mini"
    data_dir: str | None = None
    # dataset `folder`: the user's image folder or archive (`--dataset folder --data-dir PATH` records PATH here)
    folder: str | None = None
    download: bool = True
    batch_size: int = 64
    eval_batch_size: int = 128  # measured on a CPU: 0.28x (cnn) / 0.43x (resnet20) the time of batch 1000 in NCHW
    train_subset: int | None = None  # class-balanced subset of the training set
    validation_split: int | None = None  # hold out this many training images and evaluate on them, not on test
    label_noise: float = 0.0  # symmetric: this fraction of training labels moved to another class
    pad_to: int | None = None  # zero-pad images to this size, e.g. 28 -> 32
    image_size: int = 32  # image-folder datasets (Tiny-ImageNet) are decoded at this size
    drop_last: bool = False
    # refuse a teacher whose model card (or checkpoint) says it was trained on another dataset
    teacher_dataset_check: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class ModelConfig:
    name: str = "cnn"  # ours (`selfdistill models`), an entry point's, or package.module:function
    # the architecture's knobs (e.g. an MLP's hidden widths), checked by the models layer; a resolved config
    # lists every one with its default, and the model card records them
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class ScheduleConfig:
    name: Literal["multistep", "cosine", "constant"] = "cosine"  # the paper recipes set multistep
    milestones: list[int] = field(default_factory=list)  # epochs at which multistep multiplies by gamma
    gamma: float = 0.1
    warmup_epochs: float = 0.0  # linear warm-up from 0, counted in (fractional) epochs
    min_lr: float = 0.0  # cosine end point


@dataclass
class TrainConfig:
    epochs: int = 10
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    eval_every: int = 1  # the final epoch is always evaluated
    amp: Auto = "auto"  # bf16 autocast; auto = on for CUDA
    channels_last: Auto = "auto"  # auto = on for CUDA, and on a CPU for the architectures measured faster in it
    compile: bool = False  # torch.compile the model
    deterministic: bool = False  # torch.use_deterministic_algorithms
    # torch.set_num_threads: auto = the CPUs this process may use / local processes; null = torch's default.
    # Part of the result (float sums): a run records the resolved count and resumes only with the same.
    threads: Union[Literal["auto"], int, None] = "auto"
    progress: Auto = "auto"  # progress bar; auto = only on a terminal
    status_every: float = 30.0  # seconds between status lines when there is no progress bar; 0 = none
    tensorboard: Auto = "auto"  # TensorBoard event files in the run directory; auto = when tensorboard is installed
    dist_timeout: float = 600.0  # seconds a process waits for the others (torchrun) before giving up


@dataclass
class Config:
    method: dict[str, Any] = field(default_factory=lambda: {"name": "ce"})
    # frozen teachers: {path, model, options}, see models/teachers.py
    teachers: list[dict[str, Any]] = field(default_factory=list)
    # per-role overrides of optim/schedule for the trainable networks of online methods, e.g.
    # {"teacher": {"optim": {"lr": 0.1}}}; a role without an entry uses optim/schedule as they are
    roles: dict[str, dict[str, Any]] = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def role_optim(self, role: str) -> OptimConfig:
        """The optimiser settings of network ``role``: ``optim`` with ``roles.<role>.optim`` over it."""
        return _role_section(self, role, "optim", OptimConfig)

    def role_schedule(self, role: str) -> ScheduleConfig:
        """The schedule of network ``role``: ``schedule`` with ``roles.<role>.schedule`` over it."""
        return _role_section(self, role, "schedule", ScheduleConfig)


ROLE_SECTIONS = ("optim", "schedule")
ROLE_NAME = re.compile(r"[a-z][a-z0-9]*")  # student, peer1, teacher, branch, ...


def _role_section(config: Config, role: str, section: str, cls: type) -> Any:
    base = dataclasses.asdict(getattr(config, section))
    return build_dataclass(cls, merge(base, config.roles.get(role, {}).get(section, {})), f"roles.{role}.{section}")


# Fields that never change what a run computes (where files come from, what is shown, how long to wait for
# other processes): they may change on --resume. So may the device and the thread count as they are written
# (`auto` or a number): the trainer compares what they resolve to, recorded in the checkpoint's runtime. So may
# a check, which refuses or lets a run start.
RESUMABLE_FIELDS = ("data.data_dir", "data.download", "data.teacher_dataset_check", "train.device", "train.threads",
                    "train.progress", "train.status_every", "train.tensorboard", "train.dist_timeout")
# Fields that change a run's numbers only as another seed or float rounding would: `report` treats runs that
# differ only in these as seeds of one experiment.
REPORT_IGNORED_FIELDS = (*RESUMABLE_FIELDS, "train.seed", "train.deterministic", "train.compile",
                         "train.eval_every", "data.eval_batch_size")


# ----------------------------------------------------------------------------- layering


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``override`` into a copy of ``base``. A new method name drops the old method's options,
    a new model name the old model's options."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if key == "method" and isinstance(value, dict) and "name" in value:
            previous = out.get("method")
            if not isinstance(previous, dict) or value["name"] != previous.get("name"):
                out["method"] = {}
        if key == "model" and isinstance(value, dict) and "name" in value and isinstance(out.get("model"), dict):
            if value["name"] != out["model"].get("name"):
                out["model"] = {k: v for k, v in out["model"].items() if k != "options"}
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_assignment(text: str) -> dict[str, Any]:
    """Turn ``a.b.c=value`` into ``{"a": {"b": {"c": value}}}`` with the value parsed as YAML."""
    if "=" not in text:
        raise UserError(f"--set {text!r}: expected KEY=VALUE in one word, e.g. --set method.alpha=0.5")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise UserError(f"--set {text!r}: empty key")
    try:
        value = parse_yaml(raw, f"--set {text!r}") if raw.strip() else ""
    except UserError:
        if any(c in raw for c in "[]{}\n") or raw.lstrip().startswith("!"):
            raise  # meant as a YAML list, mapping or tagged value, but malformed
        value = raw  # a plain string that happens not to be valid YAML (e.g. "a: b")
    return nested(".".join(parts), value)


def nested(key: str, value: Any) -> dict[str, Any]:
    """``nested("a.b", 1) == {"a": {"b": 1}}``."""
    parts = key.split(".")
    out: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        out = {part: out}
    return out


def build_config(layers: list[dict[str, Any]]) -> Config:
    """Merge override layers onto the defaults, then build the config and check every key, type and range.

    This module is a leaf: it knows no registry. ``method`` comes back as the given mapping (a name and the
    options as written) and ``teachers`` as the given entries; the names of the dataset, model, method and
    teachers, and the method's options, are checked by the layers that own those registries, through
    :func:`selfdistill.engine.validate.resolve`, the one that callers use.
    """
    raw = Config().to_dict()
    for layer in layers:
        raw = merge(raw, layer)
    unknown = set(raw) - {f.name for f in dataclasses.fields(Config)}
    if unknown:
        allowed = ", ".join(f.name for f in dataclasses.fields(Config))
        first = sorted(unknown, key=str)[0]
        raise UserError(f"unknown config section {first!r}{did_you_mean(first, allowed.split(', '))}; allowed: "
                        f"{allowed}")
    method = raw.pop("method")
    teachers = raw.pop("teachers")
    roles = raw.pop("roles")
    for section, value in raw.items():
        if not isinstance(value, dict):
            raise UserError(f"config section {section!r} must be a mapping of keys, got {value!r}")
    config = build_dataclass(Config, raw, "")
    config.method = _method_mapping(method)
    config.teachers = _teacher_entries(teachers)
    config.roles = _resolve_roles(roles)
    d = config.data
    if d.dataset == "folder" and d.data_dir:  # --data-dir names the folder itself: record it as the dataset's
        d.folder, d.data_dir = d.data_dir, None
    validate(config)
    return config


def _resolve_roles(roles: Any) -> dict[str, dict[str, Any]]:
    """Check the shape of ``roles`` (each role's optim/schedule overrides); which roles a run has is
    known only once its method has made its networks (the trainer checks that)."""
    if roles is None:
        return {}
    if not isinstance(roles, dict):
        raise UserError(f"roles must be a mapping of role names to optim/schedule overrides, got {roles!r}")
    resolved: dict[str, dict[str, Any]] = {}
    for role, sections in roles.items():
        require(isinstance(role, str) and ROLE_NAME.fullmatch(role) is not None, "roles", role,
                "role names of lower-case letters and digits (student, peer1, teacher, branch, ...)")
        if not isinstance(sections, dict):
            raise UserError(f"roles.{role} must be a mapping with optim and/or schedule, got {sections!r}")
        stray = [k for k in sections if k not in ROLE_SECTIONS]
        if stray:
            raise UserError(f"unknown config key 'roles.{role}.{stray[0]}'; allowed: {', '.join(ROLE_SECTIONS)}")
        for section, values in sections.items():
            if not isinstance(values, dict):
                raise UserError(f"roles.{role}.{section} must be a mapping of {section} settings, got {values!r}")
        resolved[role] = {section: dict(sections[section]) for section in ROLE_SECTIONS if section in sections}
    return resolved


def _teacher_entries(teachers: Any) -> list[Any]:
    """The ``teachers`` entries as a list (one entry may be given alone); each is checked by the models layer."""
    if teachers is None:
        return []
    return list(teachers) if isinstance(teachers, list) else [teachers]


def _method_mapping(method: Any) -> dict[str, Any]:
    """``method`` as a mapping with a name (a bare name is a method without options)."""
    if isinstance(method, str):
        method = {"name": method}
    require(isinstance(method, dict) and "name" in method, "method", method, "a mapping with a name")
    require(isinstance(method["name"], str), "method.name", method["name"], "a method name (see `selfdistill methods`)")
    return dict(method)


def differences(a: Config, b: Config, ignore: tuple[str, ...] = RESUMABLE_FIELDS) -> list[str]:
    """Dotted keys whose values differ between two configs, except the ``ignore``d ones."""
    out: list[str] = []

    def walk(x: Any, y: Any, prefix: str) -> None:
        if prefix in ignore:
            return
        if isinstance(x, dict) and isinstance(y, dict):
            for key in sorted(set(x) | set(y), key=str):
                walk(x.get(key), y.get(key), f"{prefix}.{key}" if prefix else str(key))
        elif x != y:
            out.append(f"{prefix} (saved {x!r}, now {y!r})")

    walk(a.to_dict(), b.to_dict(), "")
    return out
