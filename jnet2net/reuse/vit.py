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

* The token grid (the destination's images, ``input_shape``, cut into its patches): when it
  differs from the source's, ``pos_embed``'s ``(gh, gw, embed)`` grid is resized by bilinear
  interpolation (:func:`resize_pos_embed`; the class token's row is kept), and a new
  ``patch_size`` resizes ``patch_embed``'s kernel by the pseudo-inverse of bilinear resizing
  (:func:`resize_patch_kernel`, as FlexiViT does: a patch upsampled to the new size gets the
  embedding the old one had). Neither keeps the function on the same images: both are
  reported as approximations.

``pool`` must match: only ``'cls'`` has a class token (and a row of ``pos_embed`` for it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jnet2net.models.vit import ViT
from jnet2net.reuse.layout import DepthMap, Shrink, stage_slots

Path = tuple[str, ...]
Grid = tuple[int, int]
POS_EMBED: Path = ("params", "pos_embed")
PATCH_KERNEL: Path = ("params", "patch_embed", "kernel")
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
    """Raises ValueError (naming ``pair``) when the pooling differs."""
    if src.pool != dst.pool:
        raise ValueError(
            f"cannot transfer {pair}: pool {src.pool!r} -> {dst.pool!r}; only 'cls' has a "
            "class token (and a row of pos_embed for it), so both need the same pool"
        )


def vit_layout(
    src: ViT, dst: ViT, depth_map: DepthMap, shrink: Shrink
) -> tuple[ViT, dict[str, Any], list[list[str]], list[str]]:
    """``(mid_model, layout, stages, changes)`` as ``reuse.layers.mid_layout`` returns them; layout
    values are ``('copy', source_layer)`` pairs or ``None`` (a gap), made into
    ``LayerSource``s by the caller. ``mid_model`` has ``dst``'s patch size, so it traces at
    the destination's images (its patch and position embeddings are resized last)."""
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
    return src.clone(depth=dst.depth, patch_size=dst.patch_size), layout, [names], changes


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


# --- the token grid: position embedding and patch embedding --------------------------------


def _check_grid(name: str, grid: Any) -> Grid:
    values = tuple(grid) if isinstance(grid, (tuple, list)) else ()
    if len(values) != 2 or any(
        isinstance(g, bool) or not isinstance(g, (int, np.integer)) or g < 1 for g in values
    ):
        raise ValueError(f"{name} must be two positive ints (rows, columns); got {grid!r}")
    return int(values[0]), int(values[1])


def _grid_str(grid: Grid) -> str:
    return f"{grid[0]}x{grid[1]}"


def token_grids(
    src: ViT, dst: ViT, src_tokens: int, input_shape: Sequence[int]
) -> tuple[Grid, Grid]:
    """``(source grid, destination grid)`` of patches, each ``(rows, columns)``.

    The destination's grid is ``input_shape``'s images cut into its patches. The source's is
    the same images cut into the source's patches when that gives its number of patches
    (``src_tokens`` rows of ``pos_embed``, less the class token), else the most nearly
    square grid of that many patches (the grid ``ViT.example_input`` assumes).
    """
    h, w = int(input_shape[1]), int(input_shape[2])
    patches = src_tokens - (1 if src.pool == "cls" else 0)
    p = src.patch_size
    if h % p == 0 and w % p == 0 and (h // p) * (w // p) == patches:
        src_grid = (h // p, w // p)
    else:
        rows = max(d for d in range(1, math.isqrt(patches) + 1) if patches % d == 0)
        src_grid = (rows, patches // rows)
    return src_grid, (h // dst.patch_size, w // dst.patch_size)


def resize_pos_embed(
    pos_embed: jax.Array, src_grid: Sequence[int], dst_grid: Sequence[int], *, class_token: bool
) -> jax.Array:
    """A position embedding for another patch grid, by bilinear interpolation.

    The patch rows are a row-major ``(gh, gw, embed)`` grid, resized with
    ``jax.image.resize(..., 'linear', antialias=False)`` (half-pixel centres: a linear ramp
    stays a ramp, clamped at the border when upsampling); a class token's row (the first) is
    kept as it is. Not function-preserving: the network sees other positions.

    Args:
      pos_embed: ``(1, class_token + gh * gw, embed)``.
      src_grid: ``(gh, gw)`` of ``pos_embed``.
      dst_grid: ``(gh2, gw2)`` wanted.
      class_token: whether the first row belongs to a class token.

    Returns:
      ``(1, class_token + gh2 * gw2, embed)`` of ``pos_embed``'s dtype; ``pos_embed`` itself
      when the grids are equal.

    Raises:
      ValueError: a grid is not two positive ints, or ``pos_embed``'s shape does not fit
        ``src_grid`` (the message names both).
    """
    src_grid = _check_grid("src_grid", src_grid)
    dst_grid = _check_grid("dst_grid", dst_grid)
    extra = 1 if class_token else 0
    shape = tuple(getattr(pos_embed, "shape", ()))
    if len(shape) != 3 or shape[0] != 1 or shape[1] != extra + src_grid[0] * src_grid[1]:
        token = " and a class token" if class_token else ""
        raise ValueError(
            f"params/pos_embed has shape {shape}, not that of a {_grid_str(src_grid)} "
            f"grid{token}: (1, {extra + src_grid[0] * src_grid[1]}, d)"
        )
    if src_grid == dst_grid:
        return pos_embed
    dtype = pos_embed.dtype
    grid = jnp.asarray(pos_embed[0, extra:], jnp.float32).reshape(*src_grid, shape[2])
    grid = jax.image.resize(grid, (*dst_grid, shape[2]), "linear", antialias=False)
    resized = grid.reshape(1, -1, shape[2]).astype(dtype)
    if not extra:
        return resized
    return jnp.concatenate([jnp.asarray(pos_embed[:, :extra]), resized], axis=1)


def _linear_resize_matrix(old: int, new: int) -> np.ndarray:
    """``(new, old)``: 1-d linear resizing with half-pixel centres, clamped at the border
    (``jax.image.resize(..., 'linear', antialias=False)``)."""
    x = np.clip((np.arange(new) + 0.5) * old / new - 0.5, 0, old - 1)
    lo = np.floor(x).astype(int)
    hi = np.minimum(lo + 1, old - 1)
    matrix = np.zeros((new, old))
    np.add.at(matrix, (np.arange(new), lo), 1 - (x - lo))
    np.add.at(matrix, (np.arange(new), hi), x - lo)
    return matrix


def _pinv_resize_matrix(old: int, new: int) -> np.ndarray:
    """``(new * new, old * old)``: ``pinv(B.T)`` where ``B`` bilinearly resizes a row-major
    flattened ``old`` x ``old`` patch to ``new`` x ``new``."""
    line = _linear_resize_matrix(old, new)
    return np.linalg.pinv(np.kron(line, line).T)


def resize_patch_kernel(kernel: jax.Array, patch_size: int) -> jax.Array:
    """The patch embedding's kernel for another patch size (FlexiViT's pseudo-inverse resize).

    With ``B`` the bilinear resize of an ``old`` x ``old`` patch to ``patch_size`` x
    ``patch_size`` (no antialiasing), the new kernel is ``pinv(B.T) @ kernel`` (per input
    channel and unit): for a larger patch, ``<B x, new> = <x, kernel>`` for every patch ``x``
    (the resized image's patches get the old embedding); for a smaller one, the least-squares
    fit. On the same images the tokens change: not function-preserving.

    Args:
      kernel: ``(old, old, c, embed)``.
      patch_size: the new side, ``>= 1``.

    Returns:
      ``(patch_size, patch_size, c, embed)`` of ``kernel``'s dtype; ``kernel`` itself when the
      size is unchanged.

    Raises:
      ValueError: ``kernel`` is not a square 4-d kernel, or ``patch_size`` is not a positive
        int.
    """
    shape = tuple(getattr(kernel, "shape", ()))
    if len(shape) != 4 or shape[0] != shape[1]:
        raise ValueError(
            f"params/patch_embed/kernel has shape {shape}; a square (p, p, c, embed) kernel "
            "is needed"
        )
    if (
        isinstance(patch_size, bool)
        or not isinstance(patch_size, (int, np.integer))
        or patch_size < 1
    ):
        raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
    old, new = shape[0], int(patch_size)
    if old == new:
        return kernel
    matrix = jnp.asarray(_pinv_resize_matrix(old, new), jnp.float32)
    flat = jnp.asarray(kernel, jnp.float32).reshape(old * old, -1)
    out = jnp.matmul(matrix, flat, precision=jax.lax.Precision.HIGHEST)
    return out.reshape(new, new, *shape[2:]).astype(kernel.dtype)


def resize_grid(
    flat: dict[Path, Any], src: ViT, dst: ViT, input_shape: Sequence[int], *, values: bool
) -> dict:
    """``pos_embed`` at the destination's token grid and ``patch_embed``'s kernel at its patch
    size (other leaves pass through).

    Args:
      flat: flat leaves with the source's grid and patch size (and any embed width).
      src: the source ViT; ``dst``: the destination ViT.
      input_shape: ``(n, h, w, c)`` images of the destination.
      values: ``True`` for values; ``False`` for optimizer moments, whose resized patch
        kernel is zero (the pseudo-inverse has negative weights, which a second moment must
        not get) and whose ``pos_embed`` is interpolated like the values (non-negative
        weights).

    Returns:
      A new flat dict.
    """
    out = dict(flat)
    if POS_EMBED in flat:
        src_grid, dst_grid = token_grids(src, dst, flat[POS_EMBED].shape[1], input_shape)
        out[POS_EMBED] = resize_pos_embed(
            flat[POS_EMBED], src_grid, dst_grid, class_token=src.pool == "cls"
        )
    kernel = flat.get(PATCH_KERNEL)
    if kernel is not None and src.patch_size != dst.patch_size:
        if values:
            out[PATCH_KERNEL] = resize_patch_kernel(kernel, dst.patch_size)
        else:
            p = dst.patch_size
            out[PATCH_KERNEL] = jnp.zeros((p, p, *kernel.shape[2:]), kernel.dtype)
    return out


def grid_changes(src: ViT, dst: ViT, src_tokens: int, input_shape: Sequence[int]) -> list[str]:
    """The approximations of another patch size or token grid (empty when both match)."""
    src_grid, dst_grid = token_grids(src, dst, src_tokens, input_shape)
    changes = []
    if src.patch_size != dst.patch_size:
        changes.append(
            f"patch_size {src.patch_size} -> {dst.patch_size}: params/patch_embed/kernel "
            "resized by the pseudo-inverse of bilinear resizing (FlexiViT): a patch's "
            "embedding is kept only for images resized the same way"
        )
    if src_grid != dst_grid:
        token = ", the class token's row kept" if src.pool == "cls" else ""
        changes.append(
            f"token grid {_grid_str(src_grid)} -> {_grid_str(dst_grid)} "
            f"({input_shape[1]}x{input_shape[2]} images in {dst.patch_size}x{dst.patch_size} "
            f"patches): params/pos_embed interpolated bilinearly{token}"
        )
    return changes


def grid_note(
    path: Path, src: ViT, dst: ViT, src_tokens: int, input_shape: Sequence[int]
) -> tuple[float, str] | None:
    """``(fraction from the source, note)`` of ``pos_embed`` on another grid or of the patch
    kernel of another patch size, else ``None``."""
    if path == PATCH_KERNEL and src.patch_size != dst.patch_size:
        return 1.0, (
            f"patch_size {src.patch_size} -> {dst.patch_size}: pseudo-inverse bilinear resize "
            "(approximate)"
        )
    if path != POS_EMBED:
        return None
    src_grid, dst_grid = token_grids(src, dst, src_tokens, input_shape)
    if src_grid == dst_grid:
        return None
    token = ", class token kept" if src.pool == "cls" else ""
    return 1.0, (
        f"token grid {_grid_str(src_grid)} -> {_grid_str(dst_grid)}: bilinear "
        f"interpolation{token} (approximate)"
    )
