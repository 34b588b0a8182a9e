"""The ViT parts of ``transfer``: block layout, head width, new blocks, what is inexact.

A ViT transfer runs the CNN transfer's three passes (:mod:`jnet2net.reuse.plan`) with:

* Depth: the blocks are one stage: destination block ``k`` copies source block
  ``stage_slots(src.depth, dst.depth)[k]``; a gap is a new block from the destination's
  initialisation whose ``out`` and ``mlp_out`` kernels and biases are zero (it adds nothing
  to the residual stream, as ``jnet2net.deepen`` makes it), or with ``fill='repeat'`` a copy
  of the nearest block.
* Width, by ``ViT.unit_groups()``: the stream (``embed``, ``uniform_only``) grows by uniform
  replication when the new width is a multiple (exact: every LayerNorm sees each unit ``k``
  times), else by a random one (the LayerNorm statistics change: reported); heads and MLP
  units replicate (consumers split) or shrink (kept by norm, the rest folded in).
* ``head_dim`` (query/key/value ``(embed, heads, head_dim)``, out ``(heads, head_dim,
  embed)``): zero-padded, with the query multiplied by ``sqrt(new / old)`` so that the
  logits ``q·k / sqrt(head_dim)`` keep their values (exact), or cropped (reported).

``patch_size``, ``pool`` and the token grid must match: they fix ``patch_embed``'s kernel,
the class token and ``pos_embed``.
"""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp

from jnet2net.models.vit import ViT
from jnet2net.reuse.layout import DepthMap, Shrink, stage_slots

Path = tuple[str, ...]
#: ``(layer, leaf) -> head_dim axis`` of the attention leaves.
HEAD_DIM_AXES = {
    ("query", "kernel"): 2,
    ("key", "kernel"): 2,
    ("value", "kernel"): 2,
    ("query", "bias"): 1,
    ("key", "bias"): 1,
    ("value", "bias"): 1,
    ("out", "kernel"): 1,
}
#: The leaves of a new block that are zero, so that it adds nothing to the stream.
ZERO_LEAVES = (("out", "kernel"), ("out", "bias"), ("mlp_out", "kernel"), ("mlp_out", "bias"))


def check_vit_pair(src: ViT, dst: ViT, pair: str) -> None:
    """Raises ValueError (naming ``pair``) when the patch size or pooling differ."""
    if src.patch_size != dst.patch_size:
        raise ValueError(
            f"cannot transfer {pair}: patch_size {src.patch_size} -> {dst.patch_size}; the "
            "patch embedding and the token grid depend on it, so both need the same patch_size"
        )
    if src.pool != dst.pool:
        raise ValueError(
            f"cannot transfer {pair}: pool {src.pool!r} -> {dst.pool!r}; only 'cls' has a "
            "class token (and a row of pos_embed for it), so both need the same pool"
        )


def vit_layout(
    src: ViT, dst: ViT, depth_map: DepthMap, shrink: Shrink
) -> tuple[ViT, dict[str, Any], list[list[str]], list[str]]:
    """``(mid_model, layout, stages, changes)`` as ``plan._layout`` returns them; layout
    values are ``('copy', source_layer)`` pairs or ``None`` (a gap), made into
    ``LayerSource``s by the caller."""
    layout: dict[str, Any] = {"patch_embed": "patch_embed", "pos_embed": "pos_embed"}
    if src.pool == "cls":
        layout["cls_token"] = "cls_token"
    slots = stage_slots(src.depth, dst.depth, depth_map=depth_map, shrink=shrink)
    names = [f"block{k}" for k in range(dst.depth)]
    for name, j in zip(names, slots, strict=True):
        layout[name] = None if j is None else f"block{j}"
    layout["norm"], layout["head"] = "norm", "head"
    changes = []
    if dst.depth < src.depth:
        dropped = [f"block{j}" for j in range(src.depth) if j not in slots]
        changes.append(
            f"depth {src.depth} -> {dst.depth} blocks (shrink={shrink!r}): dropped "
            f"{', '.join(dropped)}"
        )
    return src.clone(depth=dst.depth), layout, [names], changes


def vit_changes(src: ViT, dst: ViT) -> list[str]:
    """The ViT size changes that alter the function (the groups' narrowing aside)."""
    changes = []
    if dst.embed_dim > src.embed_dim and dst.embed_dim % src.embed_dim:
        changes.append(
            f"embed_dim {src.embed_dim} -> {dst.embed_dim} is not a multiple: some units are "
            "copied more often than others, so every LayerNorm's mean and variance change"
        )
    old, new = src.resolved_head_dim(), dst.resolved_head_dim()
    if new < old:
        changes.append(
            f"head_dim {old} -> {new}: query/key/value/out cropped to the first {new} "
            "dimensions of each head"
        )
    return changes


def zero_leaves(layer: str) -> list[Path]:
    """The leaves of new block ``layer`` that are zero (its writes to the stream)."""
    return [("params", layer, *leaf) for leaf in ZERO_LEAVES]


def head_dim_axis(path: Path) -> int | None:
    """The ``head_dim`` axis of an attention leaf at ``path``, else ``None``."""
    if len(path) != 4 or path[0] != "params":
        return None
    return HEAD_DIM_AXES.get(path[2:])


def resize_head_dim(flat: dict[Path, Any], src: ViT, dst: ViT, *, rescale: bool) -> dict:
    """Every attention leaf with its ``head_dim`` axis zero-padded or cropped to ``dst``'s.

    Args:
      flat: flat leaves at ``src``'s head width (others pass through).
      src: the source ViT; ``dst``: the destination ViT.
      rescale: multiply query kernels and biases by ``sqrt(new / old)`` (values, so that
        ``q·k / sqrt(head_dim)`` keeps its value); ``False`` for optimizer moments.

    Returns:
      A new flat dict.
    """
    old, new = src.resolved_head_dim(), dst.resolved_head_dim()
    if old == new:
        return flat
    out = dict(flat)
    for path, leaf in flat.items():
        axis = head_dim_axis(path)
        if axis is None:
            continue
        if new < old:
            leaf = jnp.take(leaf, jnp.arange(new), axis=axis)
        else:
            widths = [(0, 0)] * leaf.ndim
            widths[axis] = (0, new - old)
            leaf = jnp.pad(leaf, widths)
        if rescale and path[2] == "query":
            leaf = leaf * jnp.asarray(math.sqrt(new / old), leaf.dtype)
        out[path] = leaf
    return out


def head_dim_note(path: Path, src: ViT, dst: ViT) -> tuple[float, str] | None:
    """``(fraction of the leaf from the source, note)`` of an attention leaf whose head
    width changes, else ``None``."""
    old, new = src.resolved_head_dim(), dst.resolved_head_dim()
    if old == new or head_dim_axis(path) is None:
        return None
    how = "cropped" if new < old else "zero-padded"
    if new > old and path[2] == "query":
        how += f", times sqrt({new}/{old}) (logit scale)"
    return min(old, new) / new, f"head_dim {old} -> {new}: {how}"
