"""The layers of a transfer's intermediate network: which source layer each one copies,
repeats or composes, or whether it is new (an identity layer, a zero-output block)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jnet2net.engine.layers import plain_leaf
from jnet2net.models import VGG, ViT
from jnet2net.models.resnet import LAST_NORM
from jnet2net.reuse.layout import DepthMap, Fill, Shrink, describe, stage_slots
from jnet2net.reuse.vit import vit_layout, zero_leaves
from jnet2net.variables import FlatVariables

Path = tuple[str, ...]
LayerKind = Literal["copy", "repeat", "identity", "zero_block", "composed"]


class LayerSource(NamedTuple):
    """Where one layer of the intermediate (and destination) network comes from.

    Attributes:
      kind: ``'copy'`` (source layer ``source``, possibly moved to another slot),
        ``'repeat'`` (a copy of source layer ``source`` filling a gap), ``'identity'`` (a VGG
        identity layer), ``'zero_block'`` (a ResNet block from the destination's
        initialisation, last BatchNorm scale zero) or ``'composed'`` (Dense ``source``
        multiplied with the dropped Dense layers ``folded`` before it).
      source: the source layer's name.
      folded: dropped source layers composed into this one, input first.
    """

    kind: LayerKind
    source: str | None = None
    folded: tuple[str, ...] = ()


def layer_name(model: nn.Module, stage: int, index: int) -> str:
    return f"stage{stage}_layer{index}" if isinstance(model, VGG) else f"stage{stage}_block{index}"


def mid_layout(
    src: nn.Module,
    dst: nn.Module,
    src_flat: FlatVariables,
    depth_map: DepthMap,
    shrink: Shrink,
) -> tuple[nn.Module, dict[str, LayerSource | None], list[list[str]], list[str]]:
    """The intermediate module, its layers' sources (``None``: a gap), stages, changes."""
    if isinstance(src, ViT):
        mid, names, stages, changes = vit_layout(src, dst, depth_map, shrink)
        sources = {k: None if v is None else LayerSource("copy", v) for k, v in names.items()}
        return mid, sources, stages, changes
    layout: dict[str, LayerSource | None] = {}
    stages: list[list[str]] = []
    changes: list[str] = []
    if not isinstance(src, VGG):
        layout["stem"] = LayerSource("copy", "stem")
    for s, (n, m) in enumerate(zip(src.stage_depths, dst.stage_depths, strict=True)):
        slots = stage_slots(n, m, depth_map=depth_map, shrink=shrink)
        names = [layer_name(src, s, k) for k in range(m)]
        for name, j in zip(names, slots, strict=True):
            layout[name] = None if j is None else LayerSource("copy", layer_name(src, s, j))
        stages.append(names)
        if m < n:
            dropped = [layer_name(src, s, j) for j in range(n) if j not in slots]
            changes.append(
                f"stage {s}: {n} -> {m} layers (shrink={shrink!r}): dropped {', '.join(dropped)}"
            )
    if not isinstance(src, VGG):
        layout["head"] = LayerSource("copy", "head")
        return src.clone(stage_depths=dst.stage_depths), layout, stages, changes
    hidden = vgg_dense_layout(src, dst, src_flat, depth_map, shrink, layout, changes)
    mid = src.clone(stage_depths=dst.stage_depths, hidden_widths=hidden)
    return mid, layout, stages, changes


def vgg_dense_layout(
    src: VGG,
    dst: VGG,
    src_flat: FlatVariables,
    depth_map: DepthMap,
    shrink: Shrink,
    layout: dict[str, LayerSource | None],
    changes: list[str],
) -> tuple[int, ...]:
    """Fills ``layout`` for the hidden Dense layers and the head; returns their widths."""
    n, m = len(src.hidden_widths), len(dst.hidden_widths)
    features = src_flat[("params", "hidden0" if n else "head", "kernel")].shape[0]
    widths: list[int] = []
    if m >= n:  # new hidden layers are identities of the width before them
        for k, j in enumerate(stage_slots(n, m, depth_map=depth_map)):
            if j is None:
                layout[f"hidden{k}"] = LayerSource("identity")
                widths.append(widths[-1] if widths else features)
            else:
                layout[f"hidden{k}"] = LayerSource("copy", f"hidden{j}")
                widths.append(src.hidden_widths[j])
        layout["head"] = LayerSource("copy", "head")
        return tuple(widths)
    kept = stage_slots(n, m, shrink=shrink)
    previous = -1
    for k, j in enumerate((*kept, n)):
        folded = tuple(f"hidden{i}" for i in range(previous + 1, j))
        name, source = (f"hidden{k}", f"hidden{j}") if j < n else ("head", "head")
        layout[name] = LayerSource("composed" if folded else "copy", source, folded)
        if folded:
            changes.append(
                f"dense head: {n} -> {m} hidden layers (shrink={shrink!r}): "
                f"{', '.join(folded)} multiplied into {source}, the ReLU between them ignored"
            )
        if j < n:
            widths.append(src.hidden_widths[j])
        previous = j
    return tuple(widths)


def layer_shapes(flat: FlatVariables, layer: str) -> dict[Path, tuple[int, ...]]:
    return {(p[0], *p[2:]): tuple(v.shape) for p, v in flat.items() if p[1] == layer}


def fill_gaps(
    src: nn.Module,
    layout: dict[str, LayerSource | None],
    stages: list[list[str]],
    src_flat: FlatVariables,
    mid_shapes: FlatVariables,
    fill: Fill,
    changes: list[str],
) -> dict[str, LayerSource]:
    """Resolves every gap: a repeat of the nearest fitting source layer, or a new layer.

    ``'repeat'`` copies the nearest earlier source layer of the stage whose variables have
    the gap's shapes, else the nearest later one, else makes a new layer.
    """
    new_kind: LayerKind = "identity" if isinstance(src, VGG) else "zero_block"
    for s, names in enumerate(stages):
        repeats = []
        for k, name in enumerate(names):
            if layout[name] is not None:
                continue
            layout[name] = LayerSource(new_kind)
            if fill != "repeat":
                continue
            gap_shapes = layer_shapes(mid_shapes, name)
            fits = [
                (k2, layout[other].source)
                for k2, other in enumerate(names)
                if layout[other] is not None
                and layout[other].kind == "copy"
                and layer_shapes(src_flat, layout[other].source) == gap_shapes
            ]
            before = [f for f in fits if f[0] < k]
            after = [f for f in fits if f[0] > k]
            if before or after:
                source = before[-1][1] if before else after[0][1]
                layout[name] = LayerSource("repeat", source)
                repeats.append(f"{name} repeats {source}")
        if repeats:
            changes.append(f"stage {s} (fill='repeat'): {', '.join(repeats)}")
    identities = [name for name, source in layout.items() if source.kind == "identity"]
    convs = [name for name in identities if not name.startswith("hidden")]
    if convs and src.kernel_size % 2 == 0:
        fix = (
            "no layer of the stage has their shapes to repeat; use an odd kernel size"
            if fill == "repeat"
            else "use fill='repeat' or an odd kernel size"
        )
        raise ValueError(
            f"cannot insert identity layers {', '.join(convs)} into {describe(src)}: "
            f"kernel_size={src.kernel_size} is even, so a conv kernel has no centre tap; {fix}"
        )
    return layout


def composed_leaf(src_flat: FlatVariables, source: LayerSource, name: str) -> jax.Array:
    """Kernel or bias of ``x -> (...(x W_a + b_a) W_b + b_b ...)`` over the folded layers."""
    chain = (*source.folded, source.source)
    kernel = src_flat[("params", chain[0], "kernel")]
    bias = src_flat[("params", chain[0], "bias")]
    for layer in chain[1:]:
        next_kernel = src_flat[("params", layer, "kernel")]
        kernel = jnp.matmul(kernel, next_kernel, precision=jax.lax.Precision.HIGHEST)
        bias = jnp.matmul(bias, next_kernel, precision=jax.lax.Precision.HIGHEST)
        bias = bias + src_flat[("params", layer, "bias")]
    return kernel if name == "kernel" else bias


def zero_block_leaves(dst: nn.Module, layer: str) -> list[Path]:
    """The leaves of new block ``layer`` that are zero: a ResNet's last BatchNorm scale, a
    ViT's ``out`` and ``mlp_out`` kernels and biases."""
    if isinstance(dst, ViT):
        return zero_leaves(layer)
    return [("params", layer, LAST_NORM[dst.block], "scale")]


def assemble(
    layout: Mapping[str, LayerSource],
    mid_shapes: FlatVariables,
    src_flat: FlatVariables,
    collections: tuple[str, ...],
    dtype: Any = None,
) -> FlatVariables:
    """The intermediate network's leaves of ``collections`` (new ResNet blocks left out).

    ``dtype`` (moments): identity layers and composed Dense layers are zeros of ``dtype``.
    """
    mid: FlatVariables = {}
    for path, shape in mid_shapes.items():
        if path[0] not in collections:
            continue
        source = layout[path[1]]
        if source.kind in ("copy", "repeat"):
            mid[path] = src_flat[(path[0], source.source, *path[2:])]
        elif source.kind in ("identity", "composed") and dtype is not None:
            mid[path] = jnp.zeros(shape.shape, dtype)
        elif source.kind == "identity":
            mid[path] = plain_leaf(path, jax.ShapeDtypeStruct(shape.shape, jnp.float32))
        elif source.kind == "composed":
            mid[path] = composed_leaf(src_flat, source, path[-1])
    return mid
