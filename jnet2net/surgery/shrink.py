"""Making a unit group narrower: keep the important units, fold the rest into them."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jnet2net.surgery._checks import check_positive, normalize_axis


def select_units(producer: jax.Array, axis: int, keep: int) -> tuple[jax.Array, jax.Array]:
    """Chooses the ``keep`` units with the largest producer weight norm.

    Args:
      producer: a weight whose ``axis`` indexes the units, e.g. a kernel ``(kh, kw, c_in, n)``.
      axis: the unit axis.
      keep: how many units to keep, ``<= n``.

    Returns:
      ``(kept, assignment)``: ``kept`` is ``(keep,)`` sorted unit indices; ``assignment`` is
      ``(n,)`` and gives, for every unit, the position in ``kept`` of the kept unit whose
      producer weights are most similar (cosine) to it. Kept units are assigned to themselves.
      Replicas (a unit whose producer weights equal an earlier unit's) are kept only after
      every distinct unit, so a Net2Net-widened group shrinks back to one copy per unit.
    """
    axis = normalize_axis(axis, producer.ndim, f"producer of shape {producer.shape}")
    n = producer.shape[axis]
    check_positive("keep", keep)
    if keep > n:
        raise ValueError(
            f"select_units cannot keep {keep} of {n} units (producer of shape {producer.shape}, "
            f"axis {axis})"
        )
    rows = jnp.moveaxis(producer, axis, 0).reshape(n, -1).astype(jnp.float32)
    norms = jnp.linalg.norm(rows, axis=1)
    unit = rows / jnp.maximum(norms[:, None], 1e-12)
    cosine = unit @ unit.T  # (n, n)
    same_norm = jnp.abs(norms[:, None] - norms[None, :]) <= 1e-6 * jnp.maximum(
        norms[:, None], 1e-12
    )
    earlier = jnp.arange(n)[None, :] < jnp.arange(n)[:, None]
    replica = jnp.any((cosine >= 1.0 - 1e-6) & same_norm & earlier, axis=1)
    order = jnp.lexsort((-norms, replica))  # distinct units first, then by decreasing norm
    kept = jnp.sort(order[:keep])
    similarity = cosine[:, kept]  # (n, keep)
    similarity = similarity.at[kept, jnp.arange(keep)].set(jnp.inf)
    return kept, jnp.argmax(similarity, axis=1).astype(jnp.int32)


def fold_dropped_units(
    consumer: jax.Array, assignment: jax.Array, keep: int, axis: int
) -> jax.Array:
    """Sums a consumer's input weights of every unit into its assigned kept unit.

    When a dropped unit's activation equals its kept unit's (as for Net2Net replicas), the
    consumer's output is unchanged; otherwise it is approximated.

    Args:
      consumer: weight whose input-unit ``axis`` has size ``n``.
      assignment: ``(n,)`` positions in ``[0, keep)`` from :func:`select_units`.
      keep: the new number of units.
      axis: the input-unit axis.

    Returns:
      ``consumer`` with ``shape[axis] == keep``.
    """
    axis = normalize_axis(axis, consumer.ndim, f"consumer of shape {consumer.shape}")
    moved = jnp.moveaxis(consumer, axis, 0)
    folded = jax.ops.segment_sum(moved, assignment, num_segments=keep)
    return jnp.moveaxis(folded, 0, axis)
