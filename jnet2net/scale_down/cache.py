"""Stored outputs of the dropped prefix, computed once per example and extended as the cut moves.

A cache holds the input of layer ``cut`` for every training example, for one or two
*views*: the image as it is and, with flips, its mirror image. When the cut moves from
``a`` to ``b`` only the newly dropped layers ``[a, b)`` run, on the stored activations:
the prefix forward of every earlier layer is never paid again.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class ActivationCache(NamedTuple):
    """Inputs of layer ``cut`` for every training example.

    Attributes:
      cut: the layer these activations feed.
      views: one ``(n, h', w', c')`` array per view: ``(plain,)`` or ``(plain, mirrored)``.
    """

    cut: int
    views: tuple[jax.Array, ...]

    @property
    def nbytes(self) -> int:
        """Bytes held on the device."""
        return sum(int(v.size) * v.dtype.itemsize for v in self.views)


def cache_nbytes(shape: tuple[int, ...], dtype: Any, num_views: int) -> int:
    """Bytes of a cache of ``num_views`` arrays of ``shape`` and ``dtype``."""
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


@jax.jit(donate_argnums=0)
def _write(out: jax.Array, chunk: jax.Array, start: jax.Array) -> jax.Array:
    return jax.lax.dynamic_update_slice_in_dim(out, chunk.astype(out.dtype), start, axis=0)


def map_in_chunks(
    fn: Callable[[jax.Array], jax.Array],
    xs: jax.Array | np.ndarray,
    chunk: int,
    *,
    sharding: jax.sharding.Sharding | None = None,
) -> jax.Array:
    """``fn`` over the leading axis of ``xs``, ``chunk`` examples at a time, into one array.

    The output is allocated once and written in place, so the peak memory is the output
    plus one chunk. The last chunk is padded to ``chunk`` examples (one compile).

    Args:
      fn: jax-traceable ``(chunk, ...) -> (chunk, ...)``, one output row per input row.
      xs: ``(n, ...)`` inputs (host or device).
      chunk: examples per call.
      sharding: placement of the output (e.g. split over the data axis of a mesh).

    Returns:
      ``(n, ...)`` outputs, ``fn``'s dtype.
    """
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk <= 0:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    n = xs.shape[0]
    chunk = min(chunk, n)
    jitted = jax.jit(fn)
    spec = jax.eval_shape(jitted, jax.ShapeDtypeStruct((chunk, *xs.shape[1:]), xs.dtype))
    if spec.shape[0] != chunk:
        raise ValueError(f"fn must keep the leading axis: {chunk} rows in, {spec.shape[0]} out")
    out = jnp.zeros((n, *spec.shape[1:]), spec.dtype, device=sharding)
    for start in range(0, n, chunk):
        piece = xs[start : start + chunk]
        rows = piece.shape[0]
        if rows < chunk:
            pad = [(0, chunk - rows)] + [(0, 0)] * (piece.ndim - 1)
            piece = np.pad(piece, pad) if isinstance(piece, np.ndarray) else jnp.pad(piece, pad)
        result = jitted(piece)[:rows]
        out = _write(out, result, jnp.int32(start))
    return out


def mirrored(images: jax.Array) -> jax.Array:
    """Left-right mirror images ``(n, h, w, c)``."""
    return images[:, :, ::-1, :]


def gather_views(cache: ActivationCache, indices: jax.Array, view: jax.Array | None) -> jax.Array:
    """The cached activations of ``indices (b,)``, view ``view (b,)`` (0 plain, 1 mirrored).

    ``view=None`` (or a one-view cache) takes the plain view.
    """
    plain = jnp.take(cache.views[0], indices, axis=0)
    if view is None or len(cache.views) == 1:
        return plain
    other = jnp.take(cache.views[1], indices, axis=0)
    return jnp.where((view == 1).reshape(-1, *([1] * (plain.ndim - 1))), other, plain)
