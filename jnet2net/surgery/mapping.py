"""Random unit mappings for Net2WiderNet."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jnet2net.surgery._checks import check_positive


def random_mapping(key: jax.Array, old_size: int, new_size: int) -> jax.Array:
    """Returns the Net2Net mapping ``g`` from new units to old units.

    The first ``old_size`` new units are the old units in order (``g[j] = j``); every
    further unit copies an old unit drawn uniformly at random.

    Args:
      key: a ``jax.random`` key.
      old_size: number of units now.
      new_size: number of units wanted, ``>= old_size``.

    Returns:
      ``g``: int32 array of shape ``(new_size,)`` with values in ``[0, old_size)``.
    """
    check_positive("old_size", old_size)
    check_positive("new_size", new_size)
    if new_size < old_size:
        raise ValueError(
            f"random_mapping cannot shrink: new_size={new_size} < old_size={old_size}; "
            "use jnet2net.transfer to make a network narrower"
        )
    extra = jax.random.randint(key, (new_size - old_size,), 0, old_size, dtype=jnp.int32)
    return jnp.concatenate([jnp.arange(old_size, dtype=jnp.int32), extra])


def replication_counts(mapping: jax.Array, old_size: int) -> jax.Array:
    """Returns how many new units copy each old unit.

    Args:
      mapping: ``(new_size,)`` int array from :func:`random_mapping`.
      old_size: number of old units.

    Returns:
      ``(old_size,)`` int32 counts, each ``>= 1`` for a mapping from :func:`random_mapping`.
    """
    return jnp.bincount(mapping, length=old_size).astype(jnp.int32)


def uniform_mapping(old_size: int, new_size: int) -> jax.Array:
    """Returns the mapping that copies every old unit ``new_size // old_size`` times.

    ``g[j] = j mod old_size``: the first ``old_size`` new units are the old ones in order,
    like :func:`random_mapping`, and every unit has the same number of copies, which keeps
    a mean over the units (LayerNorm) unchanged.

    Args:
      old_size: number of units now.
      new_size: a multiple of ``old_size``.

    Returns:
      ``g``: int32 array of shape ``(new_size,)``.

    Raises:
      ValueError: ``new_size`` is not a multiple of ``old_size`` (or is smaller).
    """
    check_positive("old_size", old_size)
    check_positive("new_size", new_size)
    if new_size % old_size:
        raise ValueError(
            f"uniform replication needs new_size to be a multiple of old_size, got "
            f"{old_size} -> {new_size}"
        )
    return jnp.tile(jnp.arange(old_size, dtype=jnp.int32), new_size // old_size)
