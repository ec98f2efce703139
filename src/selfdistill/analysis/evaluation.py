"""``selfdistill eval RUN_DIR|model.pt``: evaluate saved weights on a whole dataset split.

The model card (``model.json``, see :mod:`selfdistill.models.card`) says which architecture the weights
fit, how many classes and channels it has, the input size and the normalisation. ``model=`` replaces
the card's architecture and ``dataset=`` the dataset it is evaluated on; a model saved by an older
version has no card and needs both, and then takes the dataset's standard normalisation and its raw
image size (any ``data.pad_to`` of the run is not known). Weights inside a run directory evaluated on
the run's own dataset use the run's data settings from its ``config.yaml`` (where the files are, the
synthetic shape, the decode size), never its training subset, validation split or label noise.

Evaluation covers the whole split once, unshuffled, in eval mode and fp32, under
``torch.inference_mode()``: top-1, top-5, NLL, ECE, per-class accuracy and the reliability bins.
``split="train"`` is the dataset's full training set with clean labels and no augmentation. Results go
to ``eval.json``, ``per_class.csv`` and ``reliability.png`` in ``out`` (default
``<run dir>/eval-<dataset>-<split>/``; :mod:`.eval_output`), the classes named where the dataset has names.

The card's architecture must be buildable here (ours, an entry point, an importable ``package.module:function``);
one added with ``register_model`` in the training process is evaluated with ``model=`` naming the same factory
(the card's options kept when it takes them), or loaded with :func:`selfdistill.load_model` after ``register_model``.

A run of online distillation trained several networks: the student (``model.pt``) and one more per
role (``peer1``, ``teacher``, ``branch``, ...; ``<role>.pt`` with its card ``<role>.json``, listed under
``networks`` in ``metrics.json``). ``role=`` picks the one a run directory's evaluation is of (the
student by default); another role's results go to ``eval-<role>-<dataset>-<split>/``. The results name
the evaluated network's ``role`` and all of the run's roles (``run_roles``) whenever the weights are a
finished run's, however they were given (the run directory, or ``runs/x/peer1.pt`` itself).

With ``teachers`` (entries as ``train --teacher`` takes them, loaded by :mod:`selfdistill.models.teachers`),
every teacher sees the same normalised images as the model (re-normalised when its card records other
statistics) and the results add the model's fidelity to them (top-1 agreement and predictive
KL(teacher || model), Stanton et al. 2021; several teachers: the mean of their probabilities) and the
teacher's (ensemble's) own top-1, NLL, ECE, entropy and non-target entropy: the figures a training run
with these teachers writes as ``<split>_agreement``, ``<split>_teacher_kl`` and ``teacher_<split>_*``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import textwrap
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..config import DataConfig, SyntheticConfig, read_yaml_file
from ..data import DATASETS, Augment, ImageDataset, eval_batches, load_dataset
from ..engine.evaluate import TeacherPredictions, teacher_predictions
from ..engine.networks import FrozenNetwork
from ..engine.rundir import METRICS, network_files
from ..engine.runtime import Precision
from ..engine.validate import resolve
from ..errors import UserError, one_line
from ..fileio import open_regular, read_small_file
from ..methods.base import ROLE_PATTERN, STUDENT
from ..models import build_model, check_model_name, model_names, resolve_model_options
from ..models.card import ModelCard, card_path, read_model_card, weights_sha256
from ..models.teachers import DataShape, LoadedTeacher, TeacherSpec, load_teacher, parse_teacher, teacher_roles
from ..models.user import is_spec
from .eval_output import write_results
from .metrics import EvalAccumulator, FidelityAccumulator

SPLITS = ("test", "train")
WEIGHT_SUFFIXES = (".pt", ".pth")


def locate_weights(target: str | Path, role: str | None = None) -> Path:
    """The weights of ``role`` (default: the student, ``model.pt``) in a finished run directory (one with
    ``metrics.json``, its completion marker), or the weights file given (then ``role`` must be None)."""
    path = Path(target)
    if not path.exists():
        raise UserError(f"{target}: no such file or directory (expected a run directory or a .pt file)")
    if path.is_dir():
        weights = path / "model.pt"
        if weights.is_file() and (path / METRICS).is_file():
            return weights if role is None else _role_weights(path, role)
        if weights.is_file() or (path / "checkpoint.pt").exists() or (path / "config.yaml").exists():
            raise UserError(f"{path} holds no finished model: the run has not finished (continue it with "
                            f"`selfdistill train --out {path} --resume`)")
        raise UserError(f"{path} is not a run directory (no model.pt inside)")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise UserError(f"{target}: expected a run directory or a .pt file of weights")
    if role is not None:
        raise UserError(f"--role picks a network of a run directory, and {target} is a weights file: give the run "
                        "directory instead, or evaluate the file without --role")
    return path


def run_roles(run: Path) -> list[str]:
    """The trainable networks of a finished run by role: the student, then the other networks of an online
    run in the order its ``metrics.json`` lists them (``networks``)."""
    where = run / METRICS
    raw = read_small_file(where, str(where))
    try:
        metrics = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise UserError(f"{where} cannot be read, so the run's networks are not known ({one_line(exc)})") from None
    networks = metrics.get("networks") if isinstance(metrics, dict) else None
    if networks is not None and not (isinstance(networks, dict) and all(
            isinstance(r, str) and ROLE_PATTERN.fullmatch(r) and r != STUDENT for r in networks)):
        raise UserError(f"{where}: 'networks' must map roles (such as peer1) to their figures")
    return [STUDENT, *(networks or {})]


def _role_weights(run: Path, role: str) -> Path:
    """``model.pt`` for the student, ``<role>.pt`` for another network the run trained."""
    roles = run_roles(run)
    if role not in roles:
        raise UserError.bad_value("--role", role, f"the roles of {run}: {', '.join(roles)}", roles)
    weights = run / network_files(role)[0]
    if not weights.is_file():
        raise UserError(f"{weights} is missing, though {run / METRICS} lists the {role} network; rebuild it with "
                        f"`selfdistill train --out {run} --resume`")
    return weights


def _role_of(weights: Path) -> tuple[str | None, list[str] | None]:
    """The role of ``weights`` and all roles of the run, when the file is a network of a finished run (the
    role whose file it is, as named by the run's ``metrics.json``); else ``(None, None)``."""
    run = weights.parent
    if not (run / METRICS).is_file():
        return None, None
    try:
        roles = run_roles(run)
    except UserError:  # a damaged metrics.json: the weights are still evaluated, only not named
        return None, None
    role = next((r for r in roles if network_files(r)[0] == weights.name), None)
    return (role, roles) if role is not None else (None, None)


def _card_or_overrides(weights: Path, model: str | None, dataset: str | None) -> ModelCard | None:
    """The card, which must exist unless both ``model`` and ``dataset`` are given (then it is optional)."""
    if card_path(weights).exists() or model is None or dataset is None:
        return read_model_card(weights)
    return None


def _run_data(weights: Path) -> DataConfig | None:
    """The data settings of the run that saved ``weights`` (its ``config.yaml`` beside them), if any."""
    saved = weights.parent / "config.yaml"
    if not saved.is_file():
        return None
    try:
        return resolve([read_yaml_file(saved, str(saved))], recorded=True).data
    except UserError as exc:
        message = str(exc)
        raise UserError(message if message.startswith(str(saved)) else f"{saved}: {message}") from None


def _load_data(name: str, data_dir: str | None, card: ModelCard | None, run: DataConfig | None) -> ImageDataset:
    """The dataset, whole: on the run's own data settings when it is the run's dataset (where its files
    are, the synthetic shape, the decode size; never its subset, split or label noise), else decoded
    (image folders) or generated (``synthetic``) at the card's raw size."""
    if name not in DATASETS:
        raise UserError.bad_value("--dataset", name, ", ".join(DATASETS), DATASETS)
    if run is not None and run.dataset == name:
        cfg = dataclasses.replace(run, train_subset=None, validation_split=None, label_noise=0.0,
                                  data_dir=data_dir or run.data_dir)
    else:
        cfg = DataConfig(dataset=name, data_dir=data_dir)
        if card is not None and card.pad_to is None:
            cfg.image_size = card.image_size
            cfg.synthetic = SyntheticConfig(num_classes=card.num_classes, channels=card.in_channels,
                                            size=card.image_size)
    return load_dataset(cfg)


def _check_model(card: ModelCard | None, model: str | None, weights: Path) -> None:
    """The architecture to build, ``model`` or the card's, must be one this process can build."""
    if model is not None:
        check_model_name(model, "--model")
    elif card is not None:
        check_architecture(card.model, weights, "evaluate it with --model package.module:function naming the same "
                           "factory, register that factory as an entry point (group selfdistill.models), or load "
                           f"it in Python with selfdistill.load_model after register_model({card.model!r}, ...)")


def input_spec(card: ModelCard | None, model: str | None, data: ImageDataset, weights: Path) -> ModelCard:
    """What the model expects (the card, with ``model`` as its architecture when given; for weights
    without a card, what the dataset gives), checked against what the dataset gives."""
    name = model or card.model
    if card is None:
        return ModelCard(name, data.num_classes, data.in_channels, data.image_size, None, list(data.mean),
                         list(data.std), data.name, "", weights_sha256(weights))
    where = card_path(weights)
    if card.num_classes != data.num_classes:
        raise UserError(f"{where}: the model predicts {card.num_classes} classes but {data.name} has "
                        f"{data.num_classes}; evaluate it on a dataset with the same classes")
    if card.in_channels != data.in_channels:
        raise UserError(f"{where}: the model takes {card.in_channels}-channel images but {data.name} has "
                        f"{data.in_channels} channels")
    side = max(data.image_size, card.pad_to or 0)
    if side != card.image_size:
        raise UserError(f"{where}: the model was trained on {card.image_size}x{card.image_size} inputs but "
                        f"{data.name} gives {side}x{side}; evaluate it on a dataset of that image size")
    return dataclasses.replace(card, model=name, options=_options_for(name, card))


def _options_for(name: str, card: ModelCard) -> dict[str, Any]:
    """The card's options for architecture ``name``: all of them when it is the card's own or takes them
    (``--model pkg.mod:fn`` naming the factory a card's registered name stood for), else the defaults."""
    if name == card.model:
        return card.options
    try:
        return resolve_model_options(name, card.options)
    except UserError:
        return {}


def check_architecture(name: str, weights: Path, instead: str) -> None:
    """A one-line ``UserError`` naming the card of ``weights`` unless its architecture ``name`` can be built
    here; a name this process does not know (one added with ``register_model`` in the process that trained
    the model) says what to do ``instead``."""
    where = f"{card_path(weights)}: model"
    if not is_spec(name) and name not in model_names():
        raise UserError(f"{where} {name!r} is not an architecture known here (a name added with register_model in "
                        f"the process that trained it?); {instead}")
    check_model_name(name, where)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """A plain ``state_dict`` loaded with ``weights_only=True``."""
    with open_regular(path, str(path)) as handle:
        try:
            state = torch.load(handle, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated, foreign or unsafe file: one line, whatever torch raised
            raise UserError(f"{path} cannot be loaded as model weights ({type(exc).__name__}: "
                            f"{textwrap.shorten(one_line(exc), 160)})") from None
    if isinstance(state, dict) and "model" in state and "optimizer" in state:
        raise UserError(f"{path} is a training checkpoint, not model weights; evaluate the finished run's model.pt")
    if not (isinstance(state, dict) and state and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                      for k, v in state.items())):
        raise UserError(f"{path} is not a state_dict (a mapping of parameter names to tensors)")
    return state


def build_fitted(spec: ModelCard, state: dict[str, torch.Tensor], path: Path) -> nn.Module:
    """The architecture with the weights loaded; the first key that disagrees is named."""
    net = build_model(spec.model, spec.num_classes, spec.in_channels, spec.image_size, spec.options)
    side = spec.image_size
    what = f"{spec.model} ({spec.num_classes} classes, {spec.in_channels}-channel {side}x{side} input)"
    expected = net.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise UserError(f"{path} does not fit {what}: it lacks '{key}' (weights of another --model?)")
        if state[key].shape != tensor.shape:
            raise UserError(f"{path} does not fit {what}: '{key}' has shape {tuple(state[key].shape)} in the file "
                            f"and {tuple(tensor.shape)} in the model (another --model, or other classes or channels?)")
    extra = next((k for k in state if k not in expected), None)
    if extra is not None:
        raise UserError(f"{path} does not fit {what}: it has '{extra}', which the model lacks (another --model?)")
    net.load_state_dict(state)
    return net


def resolve_eval_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if re.fullmatch(r"cpu|cuda(:\d+)?", name) is None:
        raise UserError.bad_value("--device", name, "auto, cpu, cuda, cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError.bad_value("--device", name, "cpu or auto (no CUDA device is available)")
    device = torch.device(name)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError.bad_value("--device", name, f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def eval_augment(spec: ModelCard) -> Augment:
    """The model's test-time transform: its padding and normalisation."""
    return Augment(tuple(spec.mean), tuple(spec.std), pad_to=spec.pad_to)


@torch.inference_mode()
def accumulate(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, spec: ModelCard, batch_size: int,
               device: torch.device, dataset: str,
               teachers: TeacherPredictions | None = None) -> tuple[EvalAccumulator, FidelityAccumulator | None]:
    """Every image of the split once, in order; a size the model cannot take is a one-line error. With
    ``teachers`` (:func:`teacher_outputs`, same batch size), also the model's fidelity to them."""
    net.to(device).eval()
    augment = eval_augment(spec)
    acc = EvalAccumulator(spec.num_classes, device=device)
    fidelity = FidelityAccumulator(device) if teachers is not None else None
    start = 0
    for step, idx in enumerate(eval_batches(len(labels), batch_size)):
        x = augment.eval(images[idx].to(device))
        try:
            logits = net(x)
        except RuntimeError as exc:
            if step:
                raise
            raise UserError(f"{spec.model} cannot take the {x.shape[-2]}x{x.shape[-1]} images of {dataset} "
                            f"({textwrap.shorten(one_line(exc), 160)})") from None
        acc.add(logits, labels[idx].to(device))
        if fidelity is not None and teachers is not None:
            fidelity.add(logits, teachers.probs[start:start + len(idx)].to(device))
        start += len(idx)
    return acc, fidelity


class _TeacherOnDevice:
    """A loaded teacher as :func:`teacher_predictions` calls it: the model's normalised inputs (on the
    CPU, where the split stays) to float32 logits on the CPU, forwarded on ``device`` in fp32 through the
    engine's frozen network (with the teacher's re-normalisation). A size it cannot take is a one-line error."""

    def __init__(self, role: str, teacher: LoadedTeacher, device: torch.device, dataset: str) -> None:
        precision = Precision(amp=False, channels_last=False, device_type=device.type)
        self.network = FrozenNetwork(role, teacher.net, teacher.input_map, precision, device)
        self.device, self.dataset, self.called = device, dataset, False
        self.what = f"{role} {teacher.source.model} ({teacher.source.path})"

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        try:
            logits = self.network.logits(inputs.to(self.device))
        except RuntimeError as exc:
            if self.called:
                raise
            raise UserError(f"--teacher: the {self.what} cannot take the {inputs.shape[-2]}x{inputs.shape[-1]} "
                            f"images of {self.dataset} ({textwrap.shorten(one_line(exc), 160)})") from None
        self.called = True
        return logits.float().cpu()


def teacher_outputs(loaded: list[LoadedTeacher], images: torch.Tensor, labels: torch.Tensor, spec: ModelCard,
                    batch_size: int, device: torch.device, dataset: str) -> TeacherPredictions:
    """The teachers' (ensemble's) probabilities for every image of the split, in :func:`accumulate`'s
    order and on the same normalised inputs, and their own figures (the engine's
    :func:`~selfdistill.engine.evaluate.teacher_predictions`)."""
    nets = [_TeacherOnDevice(role, t, device, dataset) for role, t in zip(teacher_roles(len(loaded)), loaded)]
    precision = Precision(amp=False, channels_last=False, device_type="cpu")
    return teacher_predictions(nets, images, labels.cpu(), spec.num_classes, eval_augment(spec), batch_size, precision)


def teacher_result(loaded: list[LoadedTeacher], predictions: TeacherPredictions,
                   fidelity: FidelityAccumulator) -> dict[str, Any]:
    """The teacher entries of ``eval.json``: the metrics.json names of a run with teachers, without the split."""
    result: dict[str, Any] = {"teachers": [t.source.to_dict() for t in loaded],
                              "agreement": fidelity.agreement(), "teacher_kl": fidelity.predictive_kl(),
                              **{f"teacher_{k}": v for k, v in predictions.diagnostics.items()}}
    if len(loaded) > 1:
        result["teachers_top1"] = predictions.per_teacher_top1
    return result


def evaluate_saved_model(target: str | Path, dataset: str | None = None, data_dir: str | None = None,
                         split: str = "test", model: str | None = None, batch_size: int = 256,
                         device: str = "auto", out: str | Path | None = None,
                         teachers: list[str] | None = None, role: str | None = None) -> dict[str, Any]:
    """Evaluate saved weights (``role``: that network of an online run directory) on ``split`` of ``dataset``
    (with ``teachers``, also the model's fidelity to them and their own figures); write the results into
    ``out``; return them."""
    if split not in SPLITS:
        raise UserError.bad_value("--split", split, ", ".join(SPLITS), SPLITS)
    if batch_size < 1:
        raise UserError.bad_value("--batch-size", batch_size, "an integer >= 1")
    weights = locate_weights(target, role)
    role, roles = _role_of(weights)
    run_device = resolve_eval_device(device)
    specs = [parse_teacher(entry, "--teacher") for entry in teachers or []]
    card = _card_or_overrides(weights, model, dataset)
    _check_model(card, model, weights)
    state = load_weights(weights)  # before the dataset, which may take a download to find
    data = _load_data(dataset or card.dataset, data_dir, card, _run_data(weights))
    spec = input_spec(card, model, data, weights)
    net = build_fitted(spec, state, weights)
    loaded = _load_teachers(specs, spec)
    images, labels = (data.test_images, data.test_labels) if split == "test" else (data.train_images, data.train_labels)
    predictions = (teacher_outputs(loaded, images, labels, spec, batch_size, run_device, data.name)
                   if loaded else None)
    acc, fidelity = accumulate(net, images, labels, spec, batch_size, run_device, data.name, predictions)

    named = f"{role}-" if role not in (None, STUDENT) else ""
    folder = Path(out) if out is not None else weights.parent / f"eval-{named}{data.name}-{split}"
    result = {
        "target": str(weights), "role": role, "run_roles": roles, "model": spec.model, "dataset": data.name,
        "split": split, "images": acc.count,
        "weights_sha256": spec.weights_sha256,
        "model_card": card is not None, "method": card.method if card is not None else None,
        "num_classes": spec.num_classes, "image_size": spec.image_size, "pad_to": spec.pad_to,
        "mean": spec.mean, "std": spec.std, "device": str(run_device),
        "top1": acc.top1(), "top5": acc.top5(), "top5_k": acc.k, "nll": acc.nll(), "ece": acc.ece(),
        "per_class_count": acc.class_counts(), "per_class_accuracy": acc.per_class_accuracy(),
        "class_names": list(data.class_names) if data.class_names else None,
        "reliability": acc.reliability(),
    }
    if predictions is not None and fidelity is not None:
        result |= teacher_result(loaded, predictions, fidelity)
    result["out"] = str(folder)
    write_results(folder, result)
    return result


def _load_teachers(specs: list[TeacherSpec], spec: ModelCard) -> list[LoadedTeacher]:
    """Each teacher, checked against what the evaluated model sees: its classes, channels, input side and
    normalisation."""
    shape = DataShape(spec.num_classes, spec.in_channels, spec.image_size, list(spec.mean), list(spec.std))
    return [load_teacher(teacher, shape, "--teacher") for teacher in specs]
