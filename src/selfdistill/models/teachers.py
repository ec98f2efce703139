"""Frozen teachers: where their weights come from, and the network each becomes.

A teacher is given (``--teacher``, repeatable, or ``teachers:`` in YAML) as one of

* a finished selfdistill run directory: its ``model.pt`` (the student, also of an online run), with the
  architecture, classes, channels and input normalisation from its model card (``model.json``);
* another network of a finished online run, by its weights file: ``runs/x/peer1.pt`` (or ``teacher.pt``,
  ``branch.pt``, ...), whose card ``peer1.json`` beside it says all the above, so no architecture is
  given (the card beside any weights file is read the same way);
* a weights file of ours (``model.pt``, with or without its card beside it; ``checkpoint.pt`` of a run)
  plus its architecture when no card says it: ``--teacher PATH:resnet56`` or ``{path: ..., model: ...}``;
* a published CIFAR-100 teacher of the KD literature, the RepDistiller/mdistiller ``cifar_teachers`` files
  (``resnet32x4_vanilla/ckpt_epoch_240.pth``: a dict with the state_dict under ``"model"``), plus its
  architecture; their keys are mapped onto ours by :mod:`selfdistill.models.foreign`.

Every file is read with ``torch.load(weights_only=True)``, torch's own warnings held back: a pickle that would
run code is refused, and so is a plain Python pickle (``pickle.dump``, not ``torch.save``). The weights must
fit the architecture exactly (the first key or shape that disagrees is named) and hold real, finite numbers
(no NaN or infinity, no integers, complex numbers, sparse or meta tensors where the model has floating-point
weights: the first such key is named), and the teacher must predict the data's classes from images with the
data's channels. A teacher whose card records another input normalisation than the student's data gets its
inputs re-normalised (one per-channel affine map), so it sees the same augmented rows as it saw in its own
training; a published checkpoint is assumed to use the data's own normalisation (true for CIFAR-100 to 3
decimals). The dataset a card or checkpoint records is kept (:attr:`LoadedTeacher.trained_on`) for the
engine to compare with the student's.

A run records each teacher's source and the SHA-256 of its weights file (:class:`TeacherSource`), never
the weights; ``--resume`` refuses a teacher whose file changed.
"""

from __future__ import annotations

import dataclasses
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import UserError, did_you_mean, one_line
from ..fileio import open_regular
from . import build_model, check_model_name, model_names, resolve_model_options
from .card import ModelCard, card_path, read_model_card, weights_sha256
from .foreign import check_state_fits, is_foreign_checkpoint, to_our_keys
from .user import is_spec


@dataclass(frozen=True)
class TeacherSpec:
    """One ``teachers:`` entry: a path, the architecture when the path does not say it, and the
    architecture's options when they are not the defaults and no model card says them."""

    path: str
    model: str | None = None
    options: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "model": self.model, "options": self.options}


@dataclass(frozen=True)
class TeacherSource:
    """What a run records of a teacher: the entry it was given, the file read and its SHA-256."""

    path: str
    model: str
    weights: str
    sha256: str

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


def parse_teacher(entry: Any, where: str) -> TeacherSpec:
    """``"PATH"``, ``"PATH:ARCH"`` or ``{path: PATH, model: ARCH, options: {...}}`` as a :class:`TeacherSpec`.
    ARCH may be a user's ``package.module:function``: the path ends at the first colon after which comes
    an architecture (a name, or such a spec), so ``t.pt:pkg.nets:wide`` is ``t.pt`` and ``pkg.nets:wide``."""
    options = None
    if isinstance(entry, dict):
        unknown = sorted(set(entry) - {"path", "model", "options"}, key=str)
        if unknown:
            raise UserError(f"unknown key {f'{where}.{unknown[0]}'!r}; a teacher has path, model and options")
        path, model, options = entry.get("path"), entry.get("model"), entry.get("options")
    elif isinstance(entry, str):
        path, model = entry, None
        if not _exists(Path(entry)):
            path, model = _split_arch(entry)
    else:
        raise UserError(f"{where}={entry!r} is not allowed; allowed: a path, PATH:ARCH, or a mapping with path "
                        "and model")
    if not isinstance(path, str) or not path:
        raise UserError(f"{where}.path={path!r} is not allowed; allowed: the path of a run directory or weights file")
    if model is not None and (not isinstance(model, str) or not (is_spec(model) or model in model_names())):
        raise UserError(f"{where}: unknown architecture {model!r}{did_you_mean(str(model), model_names())}; "
                        f"allowed: {', '.join(model_names())}, or package.module:function for your own")
    if options is not None and not isinstance(options, dict):
        raise UserError(f"{where}.options must be a mapping of the architecture's options, got {options!r}")
    if model is not None and options is not None:
        options = resolve_model_options(model, options, f"{where}.options", f"{where}.model")
    elif model is not None:
        check_model_name(model, f"{where}.model")  # imports a user's factory now, so that a broken one ends here
    return TeacherSpec(path, model, options)


def _split_arch(entry: str) -> tuple[str, str | None]:
    """``PATH:ARCH`` split at the first colon after which an architecture follows (no ``/``, and a plain
    name or ``package.module:function``); without one, the whole entry is the path."""
    for k, char in enumerate(entry):
        tail = entry[k + 1:]
        if char == ":" and k > 0 and tail and "/" not in tail and (":" not in tail or is_spec(tail)):
            return entry[:k], tail
    return entry, None


def _exists(path: Path) -> bool:
    """``path.exists()``, False for a name the file system cannot even look up (too long, ...)."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def teacher_roles(count: int) -> list[str]:
    """``teacher`` for one, ``teacher1``, ``teacher2``, ... for several."""
    return ["teacher"] if count == 1 else [f"teacher{k + 1}" for k in range(count)]


class Renormalize(nn.Module):
    """Maps inputs normalised with the student's data statistics to the teacher's own normalisation
    (zero padding stays zero only when the statistics agree, so ``pad_to`` with another dataset's
    statistics pads with the teacher's equivalent of the student's zero)."""

    def __init__(self, data_mean: list[float], data_std: list[float], mean: list[float], std: list[float]) -> None:
        super().__init__()
        shape = (1, -1, 1, 1)
        scale = torch.tensor(data_std) / torch.tensor(std)
        self.register_buffer("scale", scale.view(shape), persistent=False)
        self.register_buffer("shift", ((torch.tensor(data_mean) - torch.tensor(mean)) / torch.tensor(std)).view(shape),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


@dataclass
class DataShape:
    """What the student's data gives a teacher: classes, channels, input side and normalisation."""

    num_classes: int
    in_channels: int
    image_size: int
    mean: list[float]
    std: list[float]


def _load(path: Path, where: str) -> Any:
    """The objects in a weights file, read with ``weights_only`` and torch's warnings held back (they are not
    the user's business: a failure is one line); a FIFO or device there is refused before it is read (it would
    block, or never end, while the run directory is locked)."""
    with open_regular(path, f"{where}: {path}") as handle:
        head = handle.read(len(LEGACY_TORCH_START))
        handle.seek(0)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return torch.load(handle, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated, not a torch file, or a pickle that would run code
            raise _unloadable(exc, head, path, where) from None


# torch.save writes a zip archive, or in its legacy format a pickle that opens with this magic number
LEGACY_TORCH_START = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)[:-1]


def _unloadable(exc: Exception, head: bytes, path: Path, where: str) -> UserError:
    """The one line saying why ``torch.load`` failed on ``path``, whose first bytes are ``head``."""
    if head[:1] == b"\x80" and not head.startswith(LEGACY_TORCH_START):  # a pickle, not torch.save's
        return UserError(f"{where}: {path} is a plain Python pickle (pickle.dump), not a file written by torch.save; "
                         "save the weights with torch.save(model.state_dict(), PATH)")
    why = one_line(exc)
    if "global" in why.lower():  # weights_only met a class or function; torch names other faults too
        return UserError(f"{where}: {path} holds Python objects beyond tensors, which could run code when loaded; "
                         "refused (weights_only). Save its state_dict instead")
    if "WeightsUnpickler error:" in why:  # the detail, without torch's paragraph about its defaults
        why = why.split("WeightsUnpickler error:", 1)[1].split(" Check the documentation", 1)[0].strip()
    why = why or ("the file ends early" if isinstance(exc, EOFError) else "no detail")
    return UserError(f"{where}: {path} is not a readable checkpoint ({type(exc).__name__}: {why[:120]})")


def _is_state(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                       for k, v in obj.items())


PUBLISHED = "cifar_teachers"  # the folder that mdistiller's released CIFAR-100 teachers unpack into


def _published_hint(path: Path) -> str:
    """Where a missing published CIFAR-100 teacher comes from, and what its relative path is relative to."""
    if PUBLISHED not in path.parts:
        return ""
    where = "" if path.is_absolute() else f"; the path is relative to the working directory, {Path.cwd()}"
    return (f"; the published CIFAR-100 teachers are mdistiller's cifar_teachers.tar (its release 'checkpoints'; "
            f"RepDistiller's scripts/fetch_pretrained_teachers.sh fetches the same files into save/models/), "
            f"unpacked so that {PUBLISHED}/<teacher>/ckpt_epoch_240.pth exists{where}")


def _weights_file(spec: TeacherSpec, where: str) -> Path:
    path = Path(spec.path)
    if not _exists(path):
        raise UserError(f"{where}: {spec.path} does not exist (expected a run directory or a weights file)"
                        + _published_hint(path))
    if not path.is_dir():
        return path
    weights = path / "model.pt"
    if weights.is_file() and (path / "metrics.json").is_file():
        return weights
    if weights.is_file() or (path / "checkpoint.pt").exists():
        raise UserError(f"{where}: the run {path} has not finished (no metrics.json); finish it with "
                        f"`selfdistill train --out {path} --resume`, or give its checkpoint.pt (its last saved epoch)")
    raise UserError(f"{where}: {path} is not a run directory (no model.pt inside)")


def _state_and_arch(spec: TeacherSpec, weights: Path, where: str) -> tuple[
        dict[str, torch.Tensor], str, dict[str, Any] | None, ModelCard | None, str | None]:
    """The state_dict in our key names, the architecture, its options (the entry's, else those recorded
    with the weights for that architecture; None: the defaults), the model card when there is one and the
    dataset the weights were trained on when their card or checkpoint says it."""
    obj = _load(weights, where)
    card = read_model_card(weights) if card_path(weights).is_file() and _is_state(obj) else None
    arch = spec.model or (card.model if card is not None else None)
    recorded = card.options if card is not None and card.model == arch else None
    dataset = card.dataset if card is not None else None
    if isinstance(obj, dict) and _is_state(obj.get("model")) and isinstance(obj.get("config"), dict):
        saved = obj["config"].get("model") if isinstance(obj["config"].get("model"), dict) else {}
        arch = arch or saved.get("name")
        recorded = saved.get("options") if saved.get("name") == arch else recorded
        data = obj["config"].get("data")
        dataset = data.get("dataset") if isinstance(data, dict) and isinstance(data.get("dataset"), str) else None
        state = obj["model"]  # a checkpoint.pt of ours
    elif is_foreign_checkpoint(obj):
        if arch is None:
            raise UserError(f"{where}: {weights} is a RepDistiller/mdistiller checkpoint; say its architecture: "
                            f"--teacher {spec.path}:ARCH (e.g. resnet32x4)")
        state = to_our_keys(arch, obj["model"])
    elif _is_state(obj):
        state = obj
    else:
        raise UserError(f"{where}: {weights} is not a checkpoint (neither a state_dict nor a dict with one under "
                        "'model')")
    if arch is None:
        raise UserError(f"{where}: nothing says which architecture {weights} fits (no model.json beside it); give "
                        f"it: --teacher {spec.path}:ARCH")
    return state, arch, spec.options if spec.options is not None else recorded, card, dataset


def _check_fits_data(state: dict[str, torch.Tensor], card: ModelCard | None, data: DataShape, arch: str,
                     weights: Path, where: str) -> None:
    """The classes the weights predict and the channels they take, against the data: from the model card
    when there is one (an MLP's weights do not show their channels), else from the weights."""
    fc = state.get("fc.weight")
    classes = card.num_classes if card is not None else fc.shape[0] if fc is not None and fc.dim() == 2 else None
    if classes is not None and classes != data.num_classes:
        raise UserError(f"{where}: {weights} ({arch}) predicts {classes} classes, the data has "
                        f"{data.num_classes}; a teacher must be trained on the student's classes")
    first = next((t for t in state.values() if t.dim() == 4), None)
    channels = card.in_channels if card is not None else first.shape[1] if first is not None else None
    if channels is not None and channels != data.in_channels:
        raise UserError(f"{where}: {weights} ({arch}) takes {channels}-channel images, the data has "
                        f"{data.in_channels} channels")


def _fitted(state: dict[str, torch.Tensor], arch: str, options: dict[str, Any] | None, data: DataShape,
            weights: Path, where: str) -> nn.Module:
    """The architecture with the weights loaded; the first key or shape that disagrees is named. BatchNorm's
    ``num_batches_tracked`` counters (absent from files of old PyTorch versions) do not matter for a
    frozen network: the model's own stand in for missing ones."""
    net = build_model(arch, data.num_classes, data.in_channels, data.image_size, options, f"{where}.options",
                      f"{where}.model")
    check_state_fits(net, state, f"{where}: {weights}")
    own = net.state_dict()
    for key, tensor in state.items():
        wrong = _wrong_values(tensor, own[key]) if key in own else None
        if wrong is not None:
            raise UserError(f"{where}: {weights}: {key} {wrong}")
    counters = {k: v for k, v in own.items() if k.endswith("num_batches_tracked")}
    net.load_state_dict({**counters, **{k: v for k, v in state.items() if k in own}})
    return net


@dataclass
class LoadedTeacher:
    """A teacher's network (on the CPU, in eval mode, frozen), the map its inputs need first (None: the
    student's inputs as they are), what the run records of it and the dataset it was trained on (from its
    model card or checkpoint; None where nothing says it, as for a published checkpoint)."""

    net: nn.Module
    input_map: Renormalize | None
    source: TeacherSource
    trained_on: str | None = None


def load_teacher(spec: TeacherSpec, data: DataShape, where: str = "teachers[0]") -> LoadedTeacher:
    """Read, check and build one teacher (see the module docstring)."""
    weights = _weights_file(spec, where)
    state, arch, options, card, trained_on = _state_and_arch(spec, weights, where)
    if not is_spec(arch) and arch not in model_names():
        raise UserError(f"{where}: unknown architecture {arch!r}{did_you_mean(arch, model_names())}")
    _check_fits_data(state, card, data, arch, weights, where)
    if card is not None and card.image_size != data.image_size:
        raise UserError(f"{where}: {weights} was trained on {card.image_size}x{card.image_size} inputs, the student "
                        f"sees {data.image_size}x{data.image_size} (set data.pad_to to match)")
    net = _fitted(state, arch, options, data, weights, where).eval().requires_grad_(False)
    input_map = None
    if card is not None and (_differs(card.mean, data.mean) or _differs(card.std, data.std)):
        input_map = Renormalize(data.mean, data.std, card.mean, card.std)
    source = TeacherSource(spec.path, arch, str(weights), weights_sha256(weights))
    return LoadedTeacher(net, input_map, source, trained_on)


def _wrong_values(tensor: torch.Tensor, expected: torch.Tensor) -> str | None:
    """What is wrong with the values of ``tensor`` from a file, for the model's ``expected`` of the same key,
    and what to do (None: nothing). Loading would silently cast integers and drop an imaginary part, and fails
    with a traceback on sparse and meta tensors; NaN or infinity would only show as a student that diverged."""
    dtype = str(tensor.dtype).removeprefix("torch.")
    if tensor.is_meta:
        return "is a meta tensor, a shape without values: save the trained network's weights"
    if tensor.layout != torch.strided:
        return f"is a sparse tensor ({str(tensor.layout).removeprefix('torch.')}): save it dense (.to_dense())"
    if tensor.is_complex():
        return f"holds complex numbers ({dtype}) where the model's weights are real: save a real network's weights"
    if expected.is_floating_point() and not tensor.is_floating_point():
        return (f"holds {dtype} values where the model has floating-point weights: save the trained network's "
                "weights")
    if tensor.is_floating_point():
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            return (f"holds {bad:,} NaN or infinite values (of {tensor.numel():,}): the teacher diverged or the file "
                    "is damaged; use an earlier checkpoint of it")
    return None


def _differs(a: list[float], b: list[float]) -> bool:
    return len(a) != len(b) or any(abs(x - y) > 1e-6 for x, y in zip(a, b))


def check_unchanged(recorded: list[dict[str, Any]], now: list[TeacherSource]) -> None:
    """``--resume``: each teacher's weights must be the ones the run started with."""
    for k, (old, new) in enumerate(zip(recorded, now)):
        if old.get("sha256") != new.sha256:
            raise UserError(f"--resume: teacher {k + 1} ({new.weights}) is not the file the run was trained with "
                            f"(SHA-256 {new.sha256[:12]}..., recorded {str(old.get('sha256'))[:12]}...); resume with "
                            "the original teacher or start a new run")
    if len(recorded) != len(now):
        raise UserError(f"--resume: the run was trained with {len(recorded)} teacher(s), now {len(now)}")
