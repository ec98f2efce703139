"""The KD benchmark's published CIFAR-100 teachers, mapped onto our key names.

The files are RepDistiller's ``save/models/<arch>_vanilla/ckpt_epoch_240.pth`` (HobbitLong/RepDistiller;
mdistiller's ``download_ckpts/cifar_teachers`` are the same files). RepDistiller's ``train_teacher.py``
(commit 1143dfea41686c15a7a21c6f8959d7e074f043c3) saves ``{"epoch", "model": model.state_dict(),
"accuracy", "optimizer"}`` every ``save_freq`` epochs, ``{"epoch", "model", "best_acc", "optimizer"}`` as
``<arch>_best.pth`` and ``{"opt", "model", "optimizer"}`` as ``<arch>_last.pth`` (``opt`` is an argparse
Namespace, so only that file needs ``weights_only=False``). No DataParallel wrapper is used there; a
``module.`` prefix on every key is removed all the same.

The state dicts hold the keys of RepDistiller's model definitions (``models/resnet.py``,
``resnetv2.py``, ``wrn.py``, ``vgg.py``, ``ShuffleNetv1.py``, ``ShuffleNetv2.py`` at commit
eedab9d1450cafbc7afbb19f616be0ac08d8aa3b, ``mobilenetv2.py`` at b13aecc3ede5b073640a40a37187e5e3ec4f466b).
Our models compute the same functions with the same parameter shapes (see each model file); only
names differ, by the rename rules of :data:`RULES`, one list per reference file. A rule is a regular
expression and its replacement, applied in order to every key; a key no rule touches has the same name
in both. BatchNorm's ``num_batches_tracked`` buffers are renamed like the rest.

RepDistiller's ``vgg16``/``vgg19`` are our ``vgg16_bn``/``vgg19_bn`` (our ``vgg16``/``vgg19`` are the DLB
form, see ``vgg.py``); :data:`REFERENCE_NAMES` gives our name for each of its ``model_dict`` names.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn as nn

from ..errors import UserError
from .mobilenetv2 import STAGE_GROUPS

Rule = tuple[str, str | Callable[[re.Match[str]], str]]

# RepDistiller's MobileNetV2 group index -> our (stage, position) prefix.
_MOBILENET_PREFIX = {g: f"layer{s + 1}.{p}." for s, groups in enumerate(STAGE_GROUPS) for p, g in enumerate(groups)}

RULES: dict[str, list[Rule]] = {
    "resnet.py": [                   # resnet8 ... resnet110, resnet8x4, resnet32x4
        (r"^conv1\.", "stem.0."),
        (r"^bn1\.", "stem.1."),
        (r"\.downsample\.", ".shortcut."),
    ],
    "resnetv2.py": [                 # ResNet50
        (r"^conv1\.", "stem.0."),
        (r"^bn1\.", "stem.1."),
        (r"^linear\.", "fc."),
    ],
    "wrn.py": [                      # wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2
        (r"^conv1\.", "stem."),
        (r"^block(\d)\.layer\.", r"layer\1."),
        (r"\.convShortcut\.", ".shortcut."),
        (r"^bn1\.", "pool.0."),      # the BN before the final ReLU and pooling
    ],
    "vgg.py": [                      # vgg8, vgg11, vgg13, vgg16, vgg19 (the *_bn models)
        (r"^block(\d)\.", lambda m: f"layer{int(m[1]) + 1}.body."),
        (r"^classifier\.", "fc."),
    ],
    "mobilenetv2.py": [              # MobileNetV2 (mobile_half)
        (r"^blocks\.(\d)\.", lambda m: _MOBILENET_PREFIX[int(m[1])]),
        (r"^classifier\.0\.", "fc."),
    ],
    "ShuffleNetv1.py": [(r"^linear\.", "fc.")],
    "ShuffleNetv2.py": [(r"^linear\.", "fc.")],
}

# Our model name -> the reference file its checkpoints come from.
ARCH_SOURCE: dict[str, str] = {
    **{f"resnet{d}": "resnet.py" for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": "resnet.py", "resnet32x4": "resnet.py",
    "ResNet50": "resnetv2.py", "resnet50_cifar": "resnetv2.py",
    **{name: "wrn.py" for d, k in ((16, 1), (16, 2), (40, 1), (40, 2)) for name in (f"wrn_{d}_{k}", f"wrn{d}_{k}")},
    **{name: "vgg.py" for name in ("vgg8", "vgg11", "vgg13", "vgg16_bn", "vgg19_bn")},
    "MobileNetV2": "mobilenetv2.py", "mobilenetv2_x0_5": "mobilenetv2.py",
    "ShuffleV1": "ShuffleNetv1.py", "shufflenetv1": "ShuffleNetv1.py",
    "ShuffleV2": "ShuffleNetv2.py", "shufflenetv2": "ShuffleNetv2.py",
}

# RepDistiller's model_dict name -> ours (the same name, but for the two VGGs whose names the DLB form holds).
REFERENCE_NAMES: dict[str, str] = {
    **{f"resnet{d}": f"resnet{d}" for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": "resnet8x4", "resnet32x4": "resnet32x4", "ResNet50": "ResNet50",
    **{f"wrn_{d}_{k}": f"wrn_{d}_{k}" for d, k in ((16, 1), (16, 2), (40, 1), (40, 2))},
    "vgg8": "vgg8", "vgg11": "vgg11", "vgg13": "vgg13", "vgg16": "vgg16_bn", "vgg19": "vgg19_bn",
    "MobileNetV2": "MobileNetV2", "ShuffleV1": "ShuffleV1", "ShuffleV2": "ShuffleV2",
}


def reference_source(keys: Any) -> str | None:
    """The reference file whose state-dict layout the keys have, or None (as for our own models' keys).

    Told apart by keys only one layout has: the classifier's name (``fc``, ``linear``, ``classifier``,
    ``classifier.0``), a fourth stage (ResNet50), a top-level ``conv2`` (ShuffleV2), bottleneck ``conv3``s
    in three stages (ShuffleV1), ``blockN``/``blocks`` containers (VGG, WRN, MobileNetV2)."""
    keys = {k.removeprefix("module.") for k in keys}
    if "linear.weight" in keys:
        if "layer4.0.conv1.weight" in keys:
            return "resnetv2.py"
        if "conv2.weight" in keys:
            return "ShuffleNetv2.py"
        if "layer1.0.conv3.weight" in keys:
            return "ShuffleNetv1.py"
        return None
    if {"blocks.0.0.conv.0.weight", "classifier.0.weight"} <= keys:
        return "mobilenetv2.py"
    if {"block0.0.weight", "classifier.weight"} <= keys:
        return "vgg.py"
    if {"block1.layer.0.conv1.weight", "fc.weight"} <= keys:
        return "wrn.py"
    if {"conv1.weight", "layer3.0.conv1.weight", "fc.weight"} <= keys and "layer1.0.conv3.weight" not in keys:
        return "resnet.py"
    return None


def is_foreign_checkpoint(obj: Any) -> bool:
    """Whether ``obj`` is a RepDistiller-style checkpoint: a dict whose ``"model"`` is a state dict with
    the keys of one of the reference models (our own checkpoints also keep a ``"model"``, with our keys)."""
    state = obj.get("model") if isinstance(obj, Mapping) else None
    return (isinstance(state, Mapping) and bool(state) and all(isinstance(k, str) for k in state)
            and reference_source(state) is not None)


def to_our_keys(arch: str, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` (a reference state dict for the model we call ``arch``) under our key names."""
    if arch in ("vgg16", "vgg19"):
        raise UserError(f"model {arch} is the DLB-form VGG, which RepDistiller has no checkpoints of; "
                        f"RepDistiller's {arch} is our {arch}_bn")
    if arch not in ARCH_SOURCE:
        raise UserError.bad_value("model", arch, ", ".join(ARCH_SOURCE), ARCH_SOURCE)
    rules = RULES[ARCH_SOURCE[arch]]
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    mapped = {}
    for key, value in state.items():
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        mapped[key] = value
    return mapped


def check_state_fits(model: nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """Raise a one-line ``UserError`` naming the first key of ``model`` (in its order) that the file lacks
    or holds with another shape, else the first key of the file that the model lacks. BatchNorm's
    ``num_batches_tracked`` counters are not compared. ``where`` opens the message ("teacher runs/x.pth");
    the model is named by ``model.arch`` (set by ``build_model``), else its class."""
    name = getattr(model, "arch", type(model).__name__)
    prefix = f"{where} does not fit {name}"
    expected = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    for key, tensor in expected.items():
        if key not in state:
            raise UserError(f"{prefix}: {key} is in the model but not in the file")
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise UserError(f"{prefix}: {key} has shape {list(state[key].shape)} in the file, "
                            f"{list(tensor.shape)} in the model")
    for key in state:
        if key not in expected and not key.endswith("num_batches_tracked"):
            raise UserError(f"{prefix}: {key} is in the file but not in the model")
