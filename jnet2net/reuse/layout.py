"""Which source layer fills each destination layer: pair checks, stage slots, options.

A transfer maps stages one to one. Within a stage the first layer (the one that changes the
width and, past stage 0, the resolution) always comes from the source's first layer; the
others come from the source by ``depth_map`` (deeper) or ``shrink`` (shallower), and gaps
are filled by ``fill``.
"""

from __future__ import annotations

import numbers
from typing import Any, Literal

import numpy as np

from jnet2net.models import VGG, ResNet, ViT, model_config

DepthMap = Literal["proportional", "append"]
Fill = Literal["identity", "repeat"]
Shrink = Literal["evenly", "first", "last"]
DEPTH_MAPS = ("proportional", "append")
FILLS = ("identity", "repeat")
SHRINKS = ("evenly", "first", "last")


def describe(model: Any) -> str:
    """A one-line architecture name, e.g. ``'VGG(stage_depths=(1, 2), ...)'`` (no dtype)."""
    if not isinstance(model, (VGG, ResNet, ViT)):
        return type(model).__name__
    config = model_config(model)
    family = config.pop("family")
    config.pop("dtype", None)
    fields = ", ".join(
        f"{name}={tuple(value) if isinstance(value, list) else value!r}"
        for name, value in config.items()
    )
    return f"{family}({fields})"


def check_option(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    """Raises ValueError unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def check_pair(src_model: Any, dst_model: Any) -> None:
    """Raises unless weights can be transferred from ``src_model`` to ``dst_model``.

    Raises:
      TypeError: either model is not a ``VGG``, ``ResNet`` or ``ViT``.
      ValueError: the families, the number of stages, VGG ``batch_norm``, ResNet ``block``,
        the ResNet stem layout (a separate ``stem_width`` or none) or the ViT ``pool``
        differ; the message names both architectures.
    """
    for model, role in ((src_model, "source"), (dst_model, "destination")):
        if not isinstance(model, (VGG, ResNet, ViT)):
            raise TypeError(
                f"transfer maps VGG, ResNet and ViT modules; the {role} is a "
                f"{type(model).__name__} (jnet2net.widen/deepen(target=...) grow any module)"
            )
    pair = f"{describe(src_model)} -> {describe(dst_model)}"
    src_family, dst_family = type(src_model).__name__, type(dst_model).__name__
    if src_family != dst_family:
        raise ValueError(
            f"cannot transfer {pair}: a {src_family} and a {dst_family} have no layers in "
            "common; transfer maps VGG -> VGG, ResNet -> ResNet and ViT -> ViT"
        )
    if isinstance(src_model, ViT):
        from jnet2net.reuse.vit import check_vit_pair  # it builds on this module

        check_vit_pair(src_model, dst_model, pair)
        return
    src_stages, dst_stages = len(src_model.stage_depths), len(dst_model.stage_depths)
    if src_stages != dst_stages:
        raise ValueError(
            f"cannot transfer {pair}: the source has {src_stages} stages and the destination "
            f"{dst_stages}; stages map one to one, so both need the same number of stages"
        )
    if isinstance(src_model, VGG):
        if src_model.batch_norm != dst_model.batch_norm:
            raise ValueError(
                f"cannot transfer {pair}: batch_norm={src_model.batch_norm} -> "
                f"{dst_model.batch_norm}; a conv with BatchNorm has no bias and one without "
                "has no norm, so both need the same batch_norm"
            )
        return
    if src_model.block != dst_model.block:
        raise ValueError(
            f"cannot transfer {pair}: block={src_model.block!r} -> {dst_model.block!r}; "
            "basic and bottleneck blocks have different convs, so both need the same block"
        )
    if (src_model.stem_width is None) != (dst_model.stem_width is None):
        raise ValueError(
            f"incompatible stems in {pair}: stem_width={src_model.stem_width} -> "
            f"{dst_model.stem_width}; with stem_width=None the stem writes stage 0's residual "
            "stream (identity shortcut), with a stem_width stage 0 starts with a projection, "
            "so both need a stem_width or neither"
        )


def stage_slots(
    src_depth: int,
    dst_depth: int,
    *,
    depth_map: DepthMap = "proportional",
    shrink: Shrink = "evenly",
) -> tuple[int | None, ...]:
    """Which source layer of a stage fills each destination slot.

    Deeper (``dst_depth >= src_depth``): source layer ``i`` goes to slot
    ``i * dst_depth // src_depth`` (``'proportional'``: each source layer is followed by its
    share of the new slots) or to slot ``i`` (``'append'``: new slots at the end, as
    ``jnet2net.deepen`` does). Shallower: slot 0 keeps layer 0 and the other slots keep
    ``'evenly'`` spaced layers (first and last included), the ``'first'`` ones or the
    ``'last'`` ones. Layer 0 is always kept: it is the layer that changes width and
    resolution.

    Args:
      src_depth: layers of the source stage, ``>= 0``.
      dst_depth: layers of the destination stage, ``>= 0``.
      depth_map: placement when deeper.
      shrink: selection when shallower.

    Returns:
      ``(dst_depth,)`` source layer indices, increasing; ``None`` marks a gap.

    Example::

        stage_slots(2, 4)                  # (0, None, 1, None)
        stage_slots(5, 3)                  # (0, 2, 4)
        stage_slots(5, 3, shrink="last")   # (0, 3, 4)
    """
    check_option("depth_map", depth_map, DEPTH_MAPS)
    check_option("shrink", shrink, SHRINKS)
    for name, value in (("src_depth", src_depth), ("dst_depth", dst_depth)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    n, m = src_depth, dst_depth
    if m >= n:
        slots: list[int | None] = [None] * m
        for i in range(n):
            slots[i * m // n if depth_map == "proportional" else i] = i
        return tuple(slots)
    if m == 0:
        return ()
    if shrink == "first":
        kept = list(range(m))
    elif shrink == "last":
        kept = [0, *range(n - m + 1, n)]
    else:
        kept = [0] if m == 1 else [i * (n - 1) // (m - 1) for i in range(m)]
    return tuple(kept)


def check_input_shape(src: Any, dst: Any, src_variables: Any, input_shape: Any) -> tuple[int, ...]:
    """``(1, h, w, c)``: the batch-of-one input both networks of a transfer are traced with
    (``input_shape``, else the source's example input).

    Raises:
      ValueError: ``input_shape`` is malformed, or does not fit the source (channels; a
        VGG's image size; a ViT's images must cut into the destination's patches), naming
        both architectures.
    """
    default = tuple(src.example_input(src_variables).shape)
    if input_shape is None:  # the source's images, checked as given ones are
        input_shape = default
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list, np.ndarray)) else ()
    if len(shape) != 4 or any(
        isinstance(d, bool) or not isinstance(d, numbers.Integral) or d <= 0 for d in shape
    ):
        raise ValueError(f"input_shape must be (n, h, w, c) of positive ints, got {input_shape!r}")
    shape = tuple(int(d) for d in shape)
    pair = f"{describe(src)} -> {describe(dst)}"
    if shape[-1] != default[-1]:
        raise ValueError(
            f"cannot transfer {pair}: the source reads {default[-1]} input channels but "
            f"input_shape {shape} has {shape[-1]}; both networks need the same input channels"
        )
    if isinstance(src, ViT):
        h, w, p = shape[1], shape[2], dst.patch_size
        if h % p or w % p:
            raise ValueError(
                f"cannot transfer {pair}: {h}x{w} images do not cut into {p}x{p} patches of "
                f"the destination; give an input_shape (n, h, w, c) with h and w multiples of {p}"
            )
        return (1, *shape[1:])
    if isinstance(src, VGG) and shape[1:3] != default[1:3]:
        raise ValueError(
            f"cannot transfer {pair}: the source's dense head reads the features of "
            f"{default[1]}x{default[2]} images but input_shape {shape} is {shape[1]}x{shape[2]}; "
            "a VGG transfer keeps the image size"
        )
    return (1, *shape[1:])
