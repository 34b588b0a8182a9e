"""Stages of a network: the only places where scale-down may cut it.

A stage is a contiguous span ``[start, stop)`` of ``model.layer_names()``. A ResNet's stage
``s`` is its blocks ``stage{s}_block*`` (stage 0 also holds the stem); a VGG's stage ``s``
is its conv layers ``stage{s}_layer*``, the last of which max-pools. The layers after the
last stage (a VGG's hidden dense layers, the head) form the *head* group, which never
freezes. A network with ``layer_names()`` only has one stage per layer before the head.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn

from jnet2net.models import VGG, ResNet


class Stage(NamedTuple):
    """Layers ``[start, stop)`` of ``model.layer_names()``, called ``name``."""

    name: str
    start: int
    stop: int


def _layer_names(model: nn.Module) -> tuple[str, ...]:
    if not hasattr(model, "layer_names"):
        raise TypeError(f"{type(model).__name__} has no layer_names(): it cannot be cut")
    names = tuple(model.layer_names())
    if len(names) < 2:
        raise ValueError(
            f"scale-down needs at least one layer before the head, got {len(names)} "
            f"({names}) in {type(model).__name__}"
        )
    return names


def _spans(names: tuple[str, ...], sizes: list[int], first: int) -> tuple[Stage, ...]:
    stages, start = [], 0
    for s, size in enumerate(sizes):
        stop = start + size + (first if s == 0 else 0)
        stages.append(Stage(f"stage{s}", start, stop))
        start = stop
    return tuple(stages)


def model_stages(model: nn.Module) -> tuple[Stage, ...]:
    """Every stage of ``model`` in order, the head group left out.

    Args:
      model: a :class:`~jnet2net.models.ResNet`, a :class:`~jnet2net.models.VGG`, or any
        module with ``layer_names()`` whose last layer is the head.

    Returns:
      ``(Stage, ...)``: contiguous, from layer 0 to the first layer of the head group.
    """
    names = _layer_names(model)
    if isinstance(model, ResNet):
        return _spans(names, list(model.stage_depths), first=1)  # the stem joins stage 0
    if isinstance(model, VGG):
        return _spans(names, list(model.stage_depths), first=0)
    return tuple(Stage(name, i, i + 1) for i, name in enumerate(names[:-1]))


def score_groups(model: nn.Module) -> tuple[Stage, ...]:
    """:func:`model_stages` and then the head group (every layer after the last stage)."""
    stages = model_stages(model)
    return (*stages, Stage("head", stages[-1].stop, len(_layer_names(model))))


def candidate_cuts(model: nn.Module, max_stages: int | None = None) -> tuple[int, ...]:
    """The cuts that scale-down may move to: the ends of the first stages.

    Args:
      model: the network.
      max_stages: most stages that may freeze; ``None``: every stage but the last.

    Returns:
      ``(stop of stage 0, stop of stage 1, ...)``, increasing; a cut ``c`` freezes layers
      ``[0, c)``.

    Raises:
      ValueError: ``max_stages`` is more than the network's stages.
    """
    stages = model_stages(model)
    if max_stages is None:
        max_stages = len(stages) - 1
    elif max_stages > len(stages):
        raise ValueError(
            f"ScaleDownConfig.max_stages={max_stages} is more than the {len(stages)} stages "
            f"{type(model).__name__} has ({[s.name for s in stages]})"
        )
    return tuple(stage.stop for stage in stages[:max_stages])
