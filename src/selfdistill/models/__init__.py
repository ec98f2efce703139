"""Architectures by name, each built as ``build_model(name, num_classes, in_channels, image_size, options)``.

A name is one of ours (below), one added by :func:`register_model`, one a package registers in the
``selfdistill.models`` entry-point group, or a user's factory as ``package.module:function`` (``user.py``).
``options`` (``model.options`` in a config) are the architecture's knobs: for ours a typed dataclass each
(``options.py``; e.g. the MLP's ``hidden`` widths and ``dropout``, the CNN's ``width``, a CIFAR ResNet's
``width`` multiplier), for a user's factory its keyword arguments. :func:`resolve_model_options` checks them
and fills in the defaults without building anything; the built model records its name as ``model.arch``
and the resolved options as ``model.arch_options``, which is what rebuilds the same network.

Every model names its stages ``layer1``, ``layer2``, ... (``model.stages``), ends in a linear
classifier ``fc`` and pools adaptively; intermediate features come from :class:`FeatureTaps`.
``model.head(x)`` maps the last stage's output ``x`` to the logits (``model.head(last stage) ==
model(input)``), and ``fc``'s input is the pooled penultimate feature (tap ``"fc:input"``).

The CIFAR-100 KD benchmark's zoo (RepDistiller's ``models/__init__.py`` ``model_dict``, also
mdistiller's ``cifar_model_dict``) is here under its names: ``resnet8`` ... ``resnet110``,
``resnet8x4``, ``resnet32x4``, ``ResNet50``, ``wrn_16_1`` ... ``wrn_40_2``, ``vgg8``, ``vgg11``,
``vgg13``, ``MobileNetV2``, ``ShuffleV1``, ``ShuffleV2``, with lower-case aliases ``resnet50_cifar``,
``mobilenetv2_x0_5``, ``shufflenetv1``, ``shufflenetv2``. The exception: RepDistiller's ``vgg16`` /
``vgg19`` are our ``vgg16_bn`` / ``vgg19_bn``, as ``vgg16`` / ``vgg19`` keep the DLB form (see
``vgg.py``). ``foreign.py`` loads the benchmark's published checkpoints into these models.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch.nn as nn

from ..errors import UserError, did_you_mean
from .densenet import densenet_bc
from .mobilenetv2 import mobilenetv2
from .options import NoOptions, check_dataclass_options, check_keyword_options
from .resnet_bottleneck import resnet50_cifar
from .resnet_cifar import cifar_resnet, resnet18
from .shufflenet import shufflenet_v1, shufflenet_v2
from .small import MLP, SmallCNN
from .taps import FeatureTaps, tap_names
from .user import call_factory, entry_point_names, is_spec, load_entry_point, load_spec, refresh_entry_points
from .vgg import reference_vgg, vgg
from .wrn import wrn

# builder(num_classes, in_channels, image_size, **options) -> nn.Module
Builder = Callable[..., nn.Module]

MODELS: dict[str, Builder] = {
    "mlp": MLP,
    "cnn": SmallCNN,
    **{f"resnet{d}": cifar_resnet(d) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": cifar_resnet(8, 4),
    "resnet32x4": cifar_resnet(32, 4),
    "resnet18": resnet18,
    "ResNet50": resnet50_cifar,
    "vgg16": vgg(16),
    "vgg19": vgg(19),
    **{f"vgg{d}": reference_vgg(d) for d in (8, 11, 13)},
    **{f"vgg{d}_bn": reference_vgg(d) for d in (16, 19)},
    **{f"wrn{d}_{k}": wrn(d, k) for d, k in ((16, 1), (16, 2), (16, 4), (16, 8), (28, 10), (40, 1), (40, 2))},
    **{f"densenet{d}_k{k}": densenet_bc(d, k) for d, k in ((40, 12), (100, 12), (100, 40), (190, 12))},
    "MobileNetV2": mobilenetv2(6, 0.5),
    "ShuffleV1": shufflenet_v1,
    "ShuffleV2": shufflenet_v2,
}
# Second names of the models above (the same builder): RepDistiller's WRN spelling and lower-case names.
ALIASES = {"wrn_16_1": "wrn16_1", "wrn_16_2": "wrn16_2", "wrn_40_1": "wrn40_1", "wrn_40_2": "wrn40_2",
           "resnet50_cifar": "ResNet50", "mobilenetv2_x0_5": "MobileNetV2", "shufflenetv1": "ShuffleV1",
           "shufflenetv2": "ShuffleV2"}
MODELS.update({alias: MODELS[name] for alias, name in ALIASES.items()})
REPDISTILLER_WRNS = ((16, 1), (16, 2), (40, 1), (40, 2))
# What each of our names is and where it comes from, in a few words for `selfdistill models` (the modules say more):
# the same name can mean different networks in the DLB code and in RepDistiller's benchmark.
NOTES = {
    "mlp": "MLP on the flattened image; Hinton et al. (2015)'s MNIST teacher and student through its options",
    "cnn": "three conv-BN-ReLU stages and a linear layer (94k parameters at width 32), fast on a CPU",
    **{f"resnet{d}": f"He et al.'s CIFAR ResNet-{d} (16/32/64 channels, 1x1-conv shortcuts), RepDistiller's "
                     f"resnet{d}" for d in (8, 14, 20, 32, 44, 56)},
    "resnet110": "He et al.'s CIFAR ResNet-110 (BasicBlocks), RepDistiller's resnet110; the DLB code's is a "
                 "bottleneck network",
    **{f"resnet{d}x4": f"CIFAR ResNet-{d} with 4x the channels (64/128/256), RepDistiller's resnet{d}x4"
       for d in (8, 32)},
    "resnet18": "ResNet-18 for 32x32 images (3x3 stem, no max-pool), RepDistiller's ResNet18",
    "ResNet50": "ResNet-50 for 32x32 images (bottlenecks, 3x3 stem, no max-pool), RepDistiller's ResNet50",
    **{f"vgg{d}": f"DLB's VGG-{d}: bias-free convolutions with BN, a 512-512 ReLU classifier without BN or dropout; "
                  "inputs of at least 32x32" for d in (16, 19)},
    **{f"vgg{d}": f"RepDistiller's vgg{d} (vgg{d}_bn): convolutions with bias and BN, global pooling, one linear layer"
       for d in (8, 11, 13)},
    **{f"vgg{d}_bn": f"RepDistiller's vgg{d} (not DLB's vgg{d}): convolutions with bias and BN, global pooling, one "
                     "linear layer" for d in (16, 19)},
    **{f"wrn{d}_{k}": f"Wide ResNet WRN-{d}-{k} (Zagoruyko & Komodakis 2016, pre-activation)" + (
        f", RepDistiller's wrn_{d}_{k}" if (d, k) in REPDISTILLER_WRNS else "")
       for d, k in ((16, 1), (16, 2), (16, 4), (16, 8), (28, 10), (40, 1), (40, 2))},
    **{f"densenet{d}_k{k}": f"DenseNet-BC-{d} with growth rate {k} (Huang et al. 2017), as in the DLB code"
       for d, k in ((40, 12), (100, 12), (100, 40), (190, 12))},
    "MobileNetV2": "MobileNetV2 for 32x32 images at width 0.5, RepDistiller's MobileNetV2 (its mobile_half)",
    "ShuffleV1": "ShuffleNet V1 (3 groups) for 32x32 images, RepDistiller's ShuffleV1",
    "ShuffleV2": "ShuffleNet V2 1x for 32x32 images, RepDistiller's ShuffleV2",
}
NOTES["wrn16_8"] += "; the DLB recipes' stand-in for the DLB code's wide_resnet20_8, a bottleneck ResNet"


# The architectures that train faster in channels_last (NHWC) than in NCHW on a CPU, so ``train.channels_last:
# auto`` uses it there. One training step, batch 64, 2 threads, torch 2.13, this project's 2-core CPU, NHWC/NCHW time
# (benchmarks/layout.py; BENCHMARKS.md "Memory layout on a CPU"): cnn 0.73, resnet20 0.79-0.82, resnet8x4 0.90,
# wrn_16_1 0.82, MobileNetV2 0.66; resnet18 and the other basic-block ResNets and WRNs share those blocks.
# Slower in NHWC: vgg8 1.03, vgg13 1.35, ShuffleV1 2.27, ShuffleV2 1.32; the others (mlp, densenet, ResNet50's
# bottlenecks) stay NCHW on a CPU until measured. A GPU always takes channels_last.
CPU_CHANNELS_LAST = frozenset({"cnn", "resnet18", "resnet8x4", "resnet32x4", "MobileNetV2", "mobilenetv2_x0_5",
                               *(f"resnet{d}" for d in (8, 14, 20, 32, 44, 56, 110)),
                               *(n for n in MODELS if n.startswith("wrn"))})


def faster_in_channels_last_on_cpu(name: str) -> bool:
    """Whether architecture ``name`` trains faster in channels_last on a CPU (measured; see ``CPU_CHANNELS_LAST``)."""
    return name in CPU_CHANNELS_LAST


OURS = frozenset(MODELS.values())  # builders whose failures are bugs in selfdistill, not in a user's code


def model_names() -> list[str]:
    """Every name ``--model`` takes: ours, registered ones and entry points (listed, not imported); a
    ``package.module:function`` spec is accepted as well but not listed."""
    return [*MODELS, *(name for name in entry_point_names() if name not in MODELS)]


def register_model(name: str, builder: Builder) -> None:
    """Make ``builder(num_classes, in_channels, image_size, **options)`` selectable as ``--model name``.

    Its options are checked against its signature (see ``options.py``), or, where the builder has an
    ``Options`` dataclass attribute as ours do (with a ``check(where)`` method), against that."""
    MODELS[name] = builder


def _builder(name: Any, where: str) -> Builder:
    """The builder of architecture ``name``; ``where`` names the field in the one-line error."""
    if isinstance(name, str) and name in MODELS:
        return MODELS[name]
    if is_spec(name):
        return load_spec(name, where)
    factory = load_entry_point(name, where) if isinstance(name, str) else None
    if factory is None:
        names = model_names()
        hint = " (a user model is named as package.module:function)" if isinstance(name, str) and ":" in name else ""
        raise UserError(f"{where}={name!r} is not allowed{did_you_mean(name, names)}{hint}; allowed: "
                        f"{', '.join(names)}, or package.module:function for your own")
    return factory


def check_model_name(name: Any, where: str = "model.name") -> None:
    """Raise a one-line ``UserError`` unless ``name`` names an architecture: ours, a registered one, an entry
    point (imported now, so a broken one fails here) or a ``package.module:function`` spec (imported now)."""
    _builder(name, where)


def is_model_name(name: Any) -> bool:
    """Whether :func:`check_model_name` accepts ``name`` (it may import a spec's module or an entry point)."""
    try:
        _builder(name, "model.name")
    except UserError:
        return False
    return True


def _options_class(builder: Builder) -> type | None:
    """The builder's options dataclass; None where its options are keyword arguments (a user's factory)."""
    cls = getattr(builder, "Options", NoOptions if builder in OURS else None)
    return cls if isinstance(cls, type) and dataclasses.is_dataclass(cls) else None


def _options(builder: Builder, name: str, options: Any, where: str, name_where: str) -> dict[str, Any]:
    cls = _options_class(builder)
    if cls is not None:
        return check_dataclass_options(cls, options, name, where)
    return check_keyword_options(builder, options, f"{name_where} {name!r}", where)


def resolve_model_options(name: str, options: dict[str, Any] | None = None, where: str = "model.options",
                          name_where: str = "model.name") -> dict[str, Any]:
    """Every option of architecture ``name``, ``options`` checked and the rest at their defaults; builds no network.

    A wrong key or value is a one-line ``UserError`` naming ``where.<key>`` (``teachers[0].options.hidden``
    for a teacher); an unknown ``name`` one naming ``name_where``."""
    return _options(_builder(name, name_where), name, options, where, name_where)


def model_note(name: str) -> str:
    """What architecture ``name`` (one of :func:`model_names`) is and where it comes from, in a few words."""
    if name in ALIASES:
        return model_note(ALIASES[name])
    if name in NOTES:
        return NOTES[name]
    return "registered with register_model" if name in MODELS else "entry point"


def default_model_options(name: str) -> dict[str, Any] | None:
    """Every option of architecture ``name`` (one of :func:`model_names`) at its default; None where its options
    are a factory's keyword arguments, whose defaults only the factory knows (an entry point is not imported)."""
    builder = MODELS.get(name)
    return None if builder is None or _options_class(builder) is None else resolve_model_options(name)


def build_model(name: str, num_classes: int, in_channels: int = 3, image_size: int = 32,
                options: dict[str, Any] | None = None, where: str = "model.options",
                name_where: str = "model.name") -> nn.Module:
    """Architecture ``name`` with ``options`` (see :func:`resolve_model_options`) for ``num_classes`` classes
    of ``in_channels`` x ``image_size`` x ``image_size`` images. The model records ``arch`` (its name, which
    messages use, e.g. ``foreign.check_state_fits``) and ``arch_options`` (every option, defaults included)."""
    builder = _builder(name, name_where)
    resolved = _options(builder, name, options, where, name_where)
    if builder in OURS:
        model = builder(num_classes, in_channels, image_size, **resolved)
    else:
        model = call_factory(builder, f"{name_where} {name!r}", num_classes, in_channels, image_size, resolved)
    _record(model, name, resolved, name_where)
    return model


_MISSING = object()


def _record(model: nn.Module, name: str, options: dict[str, Any], name_where: str) -> None:
    """Set ``model.arch`` and ``model.arch_options``, refusing to replace a user model's own attributes."""
    for attribute, value in (("arch", name), ("arch_options", options)):
        current = getattr(model, attribute, _MISSING)
        if current is _MISSING:
            setattr(model, attribute, value)
        elif not (type(current) is type(value) and current == value):
            raise UserError(f"{name_where} {name!r}: the model has an attribute {attribute!r} of its own, where "
                            f"selfdistill records what built it; rename that attribute")


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = ["ALIASES", "CPU_CHANNELS_LAST", "FeatureTaps", "MODELS", "NOTES", "build_model", "check_model_name",
           "count_parameters", "default_model_options", "faster_in_channels_last_on_cpu", "is_model_name",
           "model_names", "model_note", "refresh_entry_points", "register_model", "resolve_model_options",
           "tap_names"]
