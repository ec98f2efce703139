"""The model card: ``model.json`` beside ``model.pt``, saying how to rebuild and feed the model.

``model.pt`` is a plain ``state_dict``; by itself it does not say which architecture it fits, how
many classes it predicts, what size of image it takes or how images were normalised. The card
records exactly that, plus the SHA-256 of the weights it describes, so ``selfdistill eval`` needs
nothing else and refuses a card that belongs to other weights::

    {"format": "selfdistill-model", "version": 1, "model": "cnn", "num_classes": 10, "in_channels": 1,
     "image_size": 28, "pad_to": null, "mean": [0.286], "std": [0.353],
     "dataset": "fashion-mnist-mini", "method": "dlb", "weights_sha256": "...", "options": {"width": 32},
     "class_names": ["T-shirt/top", "Trouser", ...]}

``image_size`` is the side of the square input the model sees, after zero padding raw images to
``pad_to`` (when set); ``mean`` and ``std`` are per channel on the [0, 1] scale; ``options`` are the
architecture's options (``model.options``, every one with its value), so the same network is rebuilt
(a card without them, from before they existed, means the defaults); ``class_names`` name the outputs in
label order (an image folder's class folders, say), null where the dataset has only numbers. Keys a later
version of version 1 may add are ignored when reading.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..errors import UserError, one_line
from ..fileio import atomic_write_json, open_regular, read_small_file

FORMAT = "selfdistill-model"
VERSION = 1
SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class ModelCard:
    """What inference needs besides the weights (see the module docstring)."""

    format: ClassVar[str] = FORMAT
    version: ClassVar[int] = VERSION

    model: str
    num_classes: int
    in_channels: int
    image_size: int
    pad_to: int | None
    mean: list[float]
    std: list[float]
    dataset: str
    method: str
    weights_sha256: str
    options: dict[str, Any] = field(default_factory=dict)
    class_names: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        fields = dataclasses.asdict(self)
        fields["mean"], fields["std"] = [float(m) for m in self.mean], [float(s) for s in self.std]
        return {"format": self.format, "version": self.version, **fields}


def card_path(model_path: Path) -> Path:
    """The card beside the weights: ``runs/x/model.pt`` -> ``runs/x/model.json``."""
    return Path(model_path).with_suffix(".json")


def weights_sha256(model_path: Path) -> str:
    """SHA-256 of the weights file's bytes, as hex (a file that is not a regular one is a ``UserError``)."""
    digest = hashlib.sha256()
    with open_regular(model_path, str(model_path)) as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_model_card(model_path: Path, card: ModelCard) -> None:
    """Write ``card`` atomically beside ``model_path`` (the caller supplies ``weights_sha256``)."""
    atomic_write_json(card_path(model_path), card.to_dict())


def read_model_card(model_path: Path) -> ModelCard:
    """The card beside ``model_path``, checked field by field and against the weights' SHA-256.

    Every problem is a one-line :class:`UserError` naming the card and how to go on."""
    path = card_path(model_path)
    if not path.exists():
        raise UserError(f"{path}: no model card (the model.json written beside model.pt, which says how to "
                        f"rebuild and feed the model; runs from older versions lack it): pass --model and --dataset")
    raw = _read_json(path)
    _check_format(path, raw)
    card = ModelCard(**{f.name: _field(path, raw, f.name) for f in dataclasses.fields(ModelCard)})
    if card.class_names is not None and len(card.class_names) != card.num_classes:
        raise UserError(f"{path}: 'class_names' has {len(card.class_names)} names for num_classes={card.num_classes}; "
                        "the card is damaged: rewrite it or pass --model and --dataset")
    for name in ("mean", "std"):
        if len(getattr(card, name)) != card.in_channels:
            raise UserError(f"{path}: '{name}' has {len(getattr(card, name))} values for in_channels="
                            f"{card.in_channels}; the card is damaged: rewrite it or pass --model and --dataset")
    try:
        actual = weights_sha256(model_path)
    except OSError as exc:
        raise UserError(f"{model_path}: cannot read the weights ({exc.strerror or one_line(exc)})") from None
    if actual != card.weights_sha256:
        raise UserError(f"{path} describes other weights: its weights_sha256 {card.weights_sha256[:12]}... does not "
                        f"match {Path(model_path).name} ({actual[:12]}...); restore the matching weights, or delete "
                        f"the card and pass --model and --dataset")
    return card


def _read_json(path: Path) -> Any:
    raw = read_small_file(path, f"the model card {path}")
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a model card (not UTF-8 text)") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not a model card (not valid JSON: {exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise UserError(f"{path}: not a model card (JSON nested too deeply)") from None


def _check_format(path: Path, raw: Any) -> None:
    if not isinstance(raw, dict):
        raise UserError(f"{path}: not a model card (a JSON object is expected, found {type(raw).__name__})")
    if raw.get("format") != FORMAT:
        raise UserError(f"{path}: format {raw.get('format')!r} is not {FORMAT!r}; this is not a selfdistill model card")
    version = raw.get("version")
    if not _is_int(version) or version < 1:
        raise UserError(f"{path}: version {version!r} is not a card version (an integer >= 1)")
    if version > VERSION:
        raise UserError(f"{path}: card version {version} is newer than this selfdistill reads ({VERSION}); "
                        f"upgrade selfdistill")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# field -> (check, what is allowed)
CHECKS: dict[str, tuple[Any, str]] = {
    "model": (lambda v: isinstance(v, str) and v != "", "a model name"),
    "num_classes": (lambda v: _is_int(v) and v >= 2, "an integer >= 2"),
    "in_channels": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "image_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "pad_to": (lambda v: v is None or (_is_int(v) and v >= 1), "null or an integer >= 1"),
    "mean": (lambda v: isinstance(v, list) and v != [] and all(map(_is_number, v)), "a list of numbers"),
    "std": (lambda v: isinstance(v, list) and v != [] and all(_is_number(s) and s > 0 for s in v),
            "a list of numbers > 0"),
    "dataset": (lambda v: isinstance(v, str) and v != "", "a dataset name"),
    "method": (lambda v: isinstance(v, str), "a method name"),
    "weights_sha256": (lambda v: isinstance(v, str) and SHA256.match(v) is not None, "64 lower-case hex digits"),
    "options": (lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v), "a mapping of option names"),
    "class_names": (lambda v: v is None or (isinstance(v, list) and all(isinstance(n, str) for n in v)),
                    "null or a list of names, one per class"),
}
# fields a card may lack (written by earlier versions): their default
OPTIONAL = {"options": dict, "class_names": lambda: None}


def _field(path: Path, raw: dict[str, Any], name: str) -> Any:
    if name not in raw and name in OPTIONAL:
        return OPTIONAL[name]()
    if name not in raw:
        raise UserError(f"{path}: the model card lacks '{name}'; rewrite it or pass --model and --dataset")
    check, allowed = CHECKS[name]
    if not check(raw[name]):
        raise UserError(f"{path}: {name}={raw[name]!r} is not allowed; allowed: {allowed}")
    return raw[name]
