"""Architectures as JSON-ready dicts, so checkpoints and the CLI can name them."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jnet2net.models.common import dtype_name
from jnet2net.models.resnet import ResNet
from jnet2net.models.vgg import VGG
from jnet2net.models.vit import ViT

FAMILIES: dict[str, type[nn.Module]] = {"VGG": VGG, "ResNet": ResNet, "ViT": ViT}
_SKIPPED = {"parent", "name"}


def model_config(model: nn.Module) -> dict[str, Any]:
    """Returns ``{'family': 'VGG'|'ResNet'|'ViT', <field>: value, ...}`` (JSON-serialisable)."""
    family = type(model).__name__
    if family not in FAMILIES:
        raise TypeError(f"model_config knows {sorted(FAMILIES)}, got {family}")
    config: dict[str, Any] = {"family": family}
    for field in dataclasses.fields(model):
        if field.name in _SKIPPED:
            continue
        value = getattr(model, field.name)
        if field.name == "dtype":
            value = dtype_name(value)
        elif isinstance(value, tuple):
            value = list(value)
        config[field.name] = value
    return config


def model_from_config(config: dict[str, Any]) -> nn.Module:
    """Inverse of :func:`model_config`; lists become tuples, dtype names dtypes."""
    config = dict(config)
    family = config.pop("family", None)
    if family not in FAMILIES:
        raise ValueError(
            f"architecture config needs 'family' in {sorted(FAMILIES)}, got {family!r}"
        )
    cls = FAMILIES[family]
    known = {f.name for f in dataclasses.fields(cls)} - _SKIPPED
    unknown = set(config) - known
    if unknown:
        raise ValueError(f"unknown {family} fields {sorted(unknown)}; known: {sorted(known)}")
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    if "dtype" in fields:
        fields["dtype"] = jnp.dtype(fields["dtype"])
    return cls(**fields)
