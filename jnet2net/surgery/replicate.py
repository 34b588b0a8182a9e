"""Replicating producers and splitting consumers along a unit axis."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jnet2net.surgery._checks import normalize_axis


def _check_mapping(mapping: jax.Array, what: str) -> None:
    """Raises unless ``mapping`` is a ``(new_size,)`` integer array."""
    shape = jnp.shape(mapping)
    if len(shape) != 1:
        raise ValueError(f"mapping of shape {shape} must be (new_size,) to index {what}")
    dtype = jnp.result_type(mapping)
    if not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"mapping of dtype {dtype} must hold ints to index {what}")


def replicate(x: jax.Array, mapping: jax.Array, axis: int) -> jax.Array:
    """Gathers units of ``x`` along ``axis`` by ``mapping``.

    Use it for everything that *produces* a unit or describes one: a kernel's output axis, a
    bias, BatchNorm scale/bias/mean/var.

    Args:
      x: any array; ``x.shape[axis]`` is the old number of units.
      mapping: ``(new_size,)`` ints in ``[0, x.shape[axis])``.
      axis: the unit axis.

    Returns:
      ``x`` with ``shape[axis] == new_size``; new unit ``j`` is old unit ``mapping[j]``.
    """
    axis = normalize_axis(axis, x.ndim, f"array of shape {x.shape}")
    _check_mapping(mapping, f"axis {axis} of an array of shape {x.shape}")
    return jnp.take(x, mapping, axis=axis)


def _along(v: jax.Array, axis: int, ndim: int) -> jax.Array:
    """Reshapes a ``(n,)`` vector to broadcast along ``axis`` of a rank-``ndim`` array."""
    shape = [1] * ndim
    shape[axis] = v.shape[0]
    return v.reshape(shape)


def split_among_replicas(
    w: jax.Array,
    mapping: jax.Array,
    counts: jax.Array,
    axis: int,
    *,
    key: jax.Array | None = None,
    noise_scale: float = 0.0,
) -> jax.Array:
    """Gathers a *consumer* weight along its input ``axis`` and splits it among replicas.

    Every replica of old unit ``i`` gets a share ``a`` of ``w[..., i, ...]`` with the shares
    of the replicas of ``i`` summing to one, elementwise. The consumer's output is therefore
    unchanged (replicas carry equal values). Without ``key`` the shares are ``1 / counts[i]``
    (Net2Net). With ``key`` and ``noise_scale > 0`` each share is ``(1 + e) / counts[i]``
    with zero-sum noise ``e`` within each replica set: the replicas differ (symmetry is
    broken) and the function is still exact. Units with one copy get no noise.

    The noise is rank one, ``e[j, t] = u[j] * v[t]`` for new unit ``j`` and position ``t`` of
    the other axes, with ``u ~ N(0, 1)`` centred within each replica set and
    ``v ~ N(0, noise_scale**2)``: replicas of a unit then differ by ``w_i * v`` times a random
    factor, and only ``new_size + w.size / old_size`` numbers are drawn instead of ``w.size``
    (random bits dominate the cost of widening a large network on a CPU).

    Args:
      w: consumer weight, e.g. a conv kernel ``(kh, kw, c_in, c_out)`` with ``axis=2``.
      mapping: ``(new_size,)`` ints in ``[0, w.shape[axis])``.
      counts: ``(w.shape[axis],)`` replication counts of ``mapping``.
      axis: the input-unit axis of ``w``.
      key: randomness for the zero-sum noise; ``None`` for the plain split.
      noise_scale: standard deviation of the relative noise ``e``.

    Returns:
      ``w`` with ``shape[axis] == new_size``.
    """
    axis = normalize_axis(axis, w.ndim, f"consumer weight of shape {w.shape}")
    _check_mapping(mapping, f"axis {axis} of a consumer weight of shape {w.shape}")
    if jnp.shape(counts) != (w.shape[axis],):
        raise ValueError(
            f"counts of shape {jnp.shape(counts)} must have one entry per unit on axis {axis} of "
            f"a consumer weight of shape {w.shape}"
        )
    gathered = jnp.take(w, mapping, axis=axis)
    inverse_counts = 1.0 / counts[mapping].astype(w.dtype)
    share = _along(inverse_counts, axis, w.ndim)
    if key is None or (isinstance(noise_scale, (int, float)) and noise_scale == 0.0):
        return gathered * share  # a traced noise_scale (under jit) takes the noisy path
    moved = jnp.moveaxis(gathered, axis, 0)  # (new_size, *rest)
    unit_key, rest_key = jax.random.split(key)
    per_unit = jax.random.normal(unit_key, moved.shape[:1], w.dtype)
    group_sum = jax.ops.segment_sum(per_unit, mapping, num_segments=counts.shape[0])
    per_unit = per_unit - (group_sum / counts.astype(w.dtype))[mapping]  # zero-sum per set
    per_rest = noise_scale * jax.random.normal(rest_key, moved.shape[1:], w.dtype)
    centred = _along(per_unit, 0, moved.ndim) * per_rest
    split = moved * (1.0 + centred) * _along(inverse_counts, 0, moved.ndim)
    return jnp.moveaxis(split, 0, axis)


def add_paper_noise(w: jax.Array, key: jax.Array, noise_scale: float) -> jax.Array:
    """Adds Gaussian noise with std ``noise_scale * std(w)`` (the paper's option; NOT exact).

    Args:
      w: any weight array.
      key: a ``jax.random`` key.
      noise_scale: noise standard deviation relative to ``w``'s standard deviation.

    Returns:
      ``w + noise``, same shape and dtype.
    """
    spread = jnp.std(w)
    spread = jnp.where(spread > 0, spread, 1.0).astype(w.dtype)
    return w + noise_scale * spread * jax.random.normal(key, w.shape, w.dtype)
