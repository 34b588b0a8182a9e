"""Stored outputs of the dropped prefix, computed once per example and extended as the cut moves.

A cache holds the input of layer ``cut`` for every training example, for one or two
*views*: the image as it is and, with flips, its mirror image, as one array
``(n, views, h', w', c')`` so that a batch is a single gather. When the cut moves from
``a`` to ``b`` only the newly dropped layers ``[a, b)`` run, on the stored activations:
the prefix forward of every earlier layer is never paid again.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jnet2net.data.dataset import normalize
from jnet2net.models.common import compute_dtype
from jnet2net.scale_down.split import check_cut, prefix_apply
from jnet2net.train.sharding import batch_sharding, replicated
from jnet2net.variables import Variables


class ActivationCache(NamedTuple):
    """Inputs of layer ``cut`` for every training example.

    Attributes:
      cut: the layer these activations feed.
      activations: ``(n, views, h', w', c')``; view 0 is the image as it is, view 1 (if
        any) its mirror image.
    """

    cut: int
    activations: jax.Array

    @property
    def num_views(self) -> int:
        """1 (plain) or 2 (plain and mirrored)."""
        return self.activations.shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes held on the device."""
        return int(self.activations.size) * self.activations.dtype.itemsize


def cache_nbytes(shape: tuple[int, ...], dtype: Any, num_views: int) -> int:
    """Bytes of a cache of ``num_views`` views of ``shape`` and ``dtype`` each."""
    return num_views * math.prod(shape) * np.dtype(dtype).itemsize


def device_cache_budget(device: jax.Device | None = None) -> int | None:
    """Half the free memory the device reports, or ``None`` if it reports none (e.g. CPU)."""
    device = device or jax.devices()[0]
    try:
        stats = device.memory_stats()
    except (AttributeError, NotImplementedError, RuntimeError):
        return None
    if not stats or "bytes_limit" not in stats:
        return None
    return max(0, int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))) // 2


def map_in_chunks(
    fn: Callable[[jax.Array], Any],
    xs: jax.Array | np.ndarray,
    chunk: int,
    *,
    sharding: jax.sharding.Sharding | None = None,
) -> Any:
    """``fn`` over the leading axis of ``xs``, ``chunk`` examples at a time, into one array.

    The outputs are allocated once and written in place, so the peak memory is the output
    plus one chunk. The last chunk is padded to ``chunk`` examples (one compile).

    Args:
      fn: jax-traceable ``(chunk, ...) -> array or pytree of arrays``, each with one row
        per input row.
      xs: ``(n, ...)`` inputs (host or device).
      chunk: examples per call.
      sharding: placement of the outputs (e.g. replicated over a mesh).

    Returns:
      ``fn``'s structure with ``(n, ...)`` arrays.
    """
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk <= 0:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    n = xs.shape[0]
    chunk = min(chunk, n)
    jitted = jax.jit(fn)
    spec = jax.eval_shape(jitted, jax.ShapeDtypeStruct((chunk, *xs.shape[1:]), xs.dtype))
    for leaf in jax.tree.leaves(spec):
        if leaf.shape[:1] != (chunk,):
            raise ValueError(f"fn must keep the leading axis: {chunk} rows in, {leaf.shape} out")
    out = jax.tree.map(lambda s: jnp.zeros((n, *s.shape[1:]), s.dtype, device=sharding), spec)
    for start in range(0, n, chunk):
        piece = xs[start : start + chunk]
        rows = piece.shape[0]
        if rows < chunk:
            pad = [(0, chunk - rows)] + [(0, 0)] * (piece.ndim - 1)
            piece = np.pad(piece, pad) if isinstance(piece, np.ndarray) else jnp.pad(piece, pad)
        out = _write(out, jitted(piece), jnp.int32(start), rows, sharding)
    return out


@functools.partial(jax.jit, donate_argnums=0, static_argnums=(3, 4))
def _write(
    out: Any, result: Any, start: jax.Array, rows: int, sharding: jax.sharding.Sharding | None
) -> Any:
    """``result[:rows]`` written into ``out`` at ``start``, kept on ``sharding`` if given."""

    def put(o: jax.Array, r: jax.Array) -> jax.Array:
        o = jax.lax.dynamic_update_slice_in_dim(o, r[:rows].astype(o.dtype), start, axis=0)
        return o if sharding is None else jax.lax.with_sharding_constraint(o, sharding)

    return jax.tree.map(put, out, result)


def mirrored(images: jax.Array) -> jax.Array:
    """Left-right mirror images ``(n, h, w, c)``."""
    return images[:, :, ::-1, :]


def gather_views(activations: jax.Array, indices: jax.Array, view: jax.Array | None) -> jax.Array:
    """Rows ``indices (b,)`` of a cache's ``activations (n, views, ...)``, one view each.

    Args:
      activations: :attr:`ActivationCache.activations`.
      indices: ``(b,)`` example indices.
      view: ``(b,)`` int view of each (0 plain, 1 mirrored), or ``None`` for the plain one.

    Returns:
      ``(b, ...)`` activations.
    """
    if view is None:
        view = jnp.zeros_like(indices)
    return activations[indices, view]


def _constrained(fn: Callable[[jax.Array], jax.Array], mesh: Mesh | None) -> Callable:
    if mesh is None:
        return fn
    return lambda x: fn(jax.lax.with_sharding_constraint(x, batch_sharding(mesh)))


def _chunk_size(chunk: int, mesh: Mesh | None) -> int:
    size = 1 if mesh is None else mesh.size
    return max(size, chunk // size * size)


def build_cache(
    model: nn.Module,
    frozen: Variables,
    images: jax.Array,
    cut: int,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    flips: bool,
    chunk: int = 512,
    mesh: Mesh | None = None,
) -> ActivationCache:
    """The prefix ``[0, cut)`` (eval mode) of every training image, and of its mirror image.

    Args:
      model: the network in its compute dtype (the cache keeps the prefix's output dtype).
      frozen: variables of (at least) the layers before ``cut``.
      images: ``(n, h, w, c)`` uint8 training images, unaugmented.
      cut: the first trained layer (> 0).
      mean, std: per-channel normalisation (:func:`jnet2net.data.normalize`).
      flips: also store the mirror images' activations (second view).
      chunk: examples per prefix call (rounded to a multiple of the mesh's devices).
      mesh: shard each chunk's work over ``'data'``; the cache itself is replicated.

    Returns:
      the cache at ``cut``.
    """
    if cut <= 0:
        raise ValueError(f"a cache holds the output of at least one layer, got cut={cut}")
    dtype = compute_dtype(model)

    def plain(x: jax.Array) -> jax.Array:
        return prefix_apply(model, frozen, normalize(x, mean, std, dtype), cut)

    def views(x: jax.Array) -> jax.Array:
        return jnp.stack([plain(x), plain(mirrored(x))] if flips else [plain(x)], axis=1)

    out = None if mesh is None else replicated(mesh)
    size = _chunk_size(chunk, mesh)
    return ActivationCache(
        cut, map_in_chunks(_constrained(views, mesh), images, size, sharding=out)
    )


def extend_cache(
    model: nn.Module,
    frozen: Variables,
    cache: ActivationCache,
    cut: int,
    *,
    chunk: int = 512,
    mesh: Mesh | None = None,
) -> ActivationCache:
    """``cache`` moved on to ``cut``: only the newly dropped layers ``[cache.cut, cut)`` run.

    Args:
      model: the network in its compute dtype.
      frozen: variables of (at least) the layers ``[cache.cut, cut)``.
      cache: the cache so far.
      cut: the new cut (>= ``cache.cut``).
      chunk: examples per call.
      mesh: as in :func:`build_cache`.

    Returns:
      the cache at ``cut`` (the old one is left to be freed).
    """
    check_cut(model, cut)
    if cut < cache.cut:
        raise ValueError(f"a cache only moves forward: cut {cut} < cache.cut {cache.cut}")
    if cut == cache.cut:
        return cache

    def layers(h: jax.Array) -> jax.Array:
        rows, views = h.shape[:2]
        flat = h.reshape(rows * views, *h.shape[2:])
        out = model.apply(frozen, flat, train=False, start=cache.cut, stop=cut)
        return out.reshape(rows, views, *out.shape[1:])

    out = None if mesh is None else replicated(mesh)
    size = _chunk_size(chunk, mesh)
    fn = _constrained(layers, mesh)
    return ActivationCache(cut, map_in_chunks(fn, cache.activations, size, sharding=out))


def cache_spec(
    model: nn.Module, frozen: Variables, images: jax.Array, cut: int
) -> jax.ShapeDtypeStruct:
    """Shape ``(n, h', w', c')`` and dtype of one view of the cache at ``cut``."""
    spec = jax.ShapeDtypeStruct(images.shape, compute_dtype(model))
    return jax.eval_shape(lambda f, x: prefix_apply(model, f, x, cut), frozen, spec)
