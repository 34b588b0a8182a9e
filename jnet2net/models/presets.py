"""Named architectures: VGG-11/13/16/19, CIFAR ResNet-20..110, ResNet-18..152, ViT-Tiny/Small.

Every preset takes field overrides, e.g. ``resnet18(stem='imagenet', num_classes=1000)``
or ``vgg11(stage_widths=(32, 64, 128, 256, 256))`` for a half-width VGG-11.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn

from jnet2net.models.resnet import ResNet
from jnet2net.models.vgg import VGG
from jnet2net.models.vit import ViT

_VGG_WIDTHS = (64, 128, 256, 512, 512)
_VGG_DEPTHS = {
    "vgg11": (1, 1, 2, 2, 2),
    "vgg13": (2, 2, 2, 2, 2),
    "vgg16": (2, 2, 3, 3, 3),
    "vgg19": (2, 2, 4, 4, 4),
}
_CIFAR_RESNET_DEPTHS = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9, "resnet110": 18}
_RESNET_DEPTHS = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
}

# DeiT-Tiny/Small widths with 4x4 patches for CIFAR-sized inputs (16x16: 16 patches, 32x32:
# 64); the position embedding is sized by the first input, so one preset serves both.
_VITS = {
    "vit_tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3, "mlp_dim": 768},
    "vit_small": {"embed_dim": 384, "depth": 12, "num_heads": 6, "mlp_dim": 1536},
}


def _vgg(name: str, **overrides: Any) -> VGG:
    fields = {"stage_depths": _VGG_DEPTHS[name], "stage_widths": _VGG_WIDTHS}
    return VGG(**{**fields, **overrides})


def _cifar_resnet(name: str, **overrides: Any) -> ResNet:
    n = _CIFAR_RESNET_DEPTHS[name]
    fields = {"stage_depths": (n, n, n), "stage_widths": (16, 32, 64)}
    return ResNet(**{**fields, **overrides})


def _resnet(name: str, **overrides: Any) -> ResNet:
    block, depths = _RESNET_DEPTHS[name]
    fields: dict[str, Any] = {"stage_depths": depths, "block": block}
    if block == "basic":
        fields["stage_widths"] = (64, 128, 256, 512)
    else:
        fields.update(stage_widths=(256, 512, 1024, 2048), stem_width=64)
    return ResNet(**{**fields, **overrides})


def _vit(name: str, **overrides: Any) -> ViT:
    return ViT(**{"patch_size": 4, **_VITS[name], **overrides})


vgg11 = functools.partial(_vgg, "vgg11")
vgg13 = functools.partial(_vgg, "vgg13")
vgg16 = functools.partial(_vgg, "vgg16")
vgg19 = functools.partial(_vgg, "vgg19")
resnet20 = functools.partial(_cifar_resnet, "resnet20")
resnet32 = functools.partial(_cifar_resnet, "resnet32")
resnet44 = functools.partial(_cifar_resnet, "resnet44")
resnet56 = functools.partial(_cifar_resnet, "resnet56")
resnet110 = functools.partial(_cifar_resnet, "resnet110")
resnet18 = functools.partial(_resnet, "resnet18")
resnet34 = functools.partial(_resnet, "resnet34")
resnet50 = functools.partial(_resnet, "resnet50")
resnet101 = functools.partial(_resnet, "resnet101")
resnet152 = functools.partial(_resnet, "resnet152")
vit_tiny = functools.partial(_vit, "vit_tiny")
vit_small = functools.partial(_vit, "vit_small")

PRESETS: dict[str, Callable[..., nn.Module]] = {
    **{name: functools.partial(_vgg, name) for name in _VGG_DEPTHS},
    **{name: functools.partial(_cifar_resnet, name) for name in _CIFAR_RESNET_DEPTHS},
    **{name: functools.partial(_resnet, name) for name in _RESNET_DEPTHS},
    **{name: functools.partial(_vit, name) for name in _VITS},
}


def preset(name: str, **overrides: Any) -> nn.Module:
    """Returns the preset ``name`` with field ``overrides``; ValueError lists the names."""
    if name not in PRESETS:
        raise ValueError(f"unknown architecture {name!r}; presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name](**overrides)
