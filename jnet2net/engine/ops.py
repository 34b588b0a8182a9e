"""Unit operations: pure array functions along one unit axis, each with its linear moments map.

A :class:`UnitOp` is a pair, as an ``optax.GradientTransformation`` is a pair of functions:

* ``values(x, axis, key) -> x'``: how a weight's units change (``key`` is used only by noisy
  ops; ``None`` elsewhere);
* ``moments(x, axis) -> x'``: the same change without noise, linear in ``x``: how an
  optimizer moment shaped like that weight follows it (new entries zero).

``chain(*ops)`` composes them first to last, like ``optax.chain``. The arithmetic lives in
:mod:`jnet2net.surgery`; these wrap it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp

from jnet2net import surgery

#: How split consumers share a unit: ``'none'`` 1/count, ``'split'`` 1/count with zero-sum
#: noise (exact), ``'paper'`` 1/count plus Gaussian noise (not exact).
SplitNoise = Literal["none", "split", "paper"]
Values = Callable[[jax.Array, int, "jax.Array | None"], jax.Array]
Moments = Callable[[jax.Array, int], jax.Array]


class UnitOp(NamedTuple):
    """One change of a unit axis: ``values`` for weights, ``moments`` (linear) for moments.

    Attributes:
      values: ``(x, axis, key) -> x'``.
      moments: ``(x, axis) -> x'``, linear; the linearisation of ``values`` without noise.
      keyed: whether ``values`` draws from its key.
    """

    values: Values
    moments: Moments
    keyed: bool = False


def _same(fn: Callable[[jax.Array, int], jax.Array]) -> UnitOp:
    """A noise-free op whose moments map is its values map (it is linear)."""
    return UnitOp(lambda x, axis, key=None: fn(x, axis), fn)


def identity() -> UnitOp:
    """Leaves the axis as it is."""
    return _same(lambda x, axis: x)


def replicate(mapping: jax.Array) -> UnitOp:
    """New unit ``j`` copies old unit ``mapping[j]`` (producers, norms): ``(old,) -> (new,)``."""
    return _same(lambda x, axis: surgery.replicate(x, mapping, axis))


def split(
    mapping: jax.Array, counts: jax.Array, noise: SplitNoise = "none", noise_scale: float = 0.0
) -> UnitOp:
    """Consumers: rows gathered by ``mapping`` and shared among replicas (``1 / counts``).

    ``noise='split'`` adds zero-sum noise to the shares (exact), ``'paper'`` Gaussian noise
    to the result (not exact); the moments get the plain ``1 / counts`` split either way.
    """

    def plain(x: jax.Array, axis: int) -> jax.Array:
        return surgery.split_among_replicas(x, mapping, counts, axis)

    def values(x: jax.Array, axis: int, key: jax.Array | None = None) -> jax.Array:
        if noise == "split":
            return surgery.split_among_replicas(
                x, mapping, counts, axis, key=key, noise_scale=noise_scale
            )
        out = plain(x, axis)
        return surgery.add_paper_noise(out, key, noise_scale) if noise == "paper" else out

    return UnitOp(values, plain, keyed=noise != "none")


def narrow(kept: jax.Array) -> UnitOp:
    """Keeps units ``kept`` (producers, norms of a narrower group): ``(old,) -> (len(kept),)``."""
    return _same(lambda x, axis: jnp.take(x, kept, axis=axis))


def fold(assignment: jax.Array, keep: int) -> UnitOp:
    """Consumers of a narrower group: unit ``i``'s rows added to kept unit ``assignment[i]``."""
    return _same(lambda x, axis: surgery.fold_dropped_units(x, assignment, keep, axis))


def pad(new: int) -> UnitOp:
    """Zero units appended up to ``new`` (new units that the old network did not have)."""

    def padded(x: jax.Array, axis: int) -> jax.Array:
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, new - x.shape[axis])
        return jnp.pad(x, widths)

    return _same(padded)


def chain(*ops: UnitOp) -> UnitOp:
    """``ops`` applied first to last; a keyed chain splits its key among its keyed ops."""
    keyed = [op for op in ops if op.keyed]

    def values(x: jax.Array, axis: int, key: jax.Array | None = None) -> jax.Array:
        keys = iter(jax.random.split(key, len(keyed)) if keyed and key is not None else [])
        for op in ops:
            x = op.values(x, axis, next(keys, None) if op.keyed else None)
        return x

    def moments(x: jax.Array, axis: int) -> jax.Array:
        for op in ops:
            x = op.moments(x, axis)
        return x

    return UnitOp(values, moments, keyed=bool(keyed))


def on_units(op: UnitOp, units: int, *, flattened: bool, where: str, group: str) -> UnitOp:
    """``op`` on an axis that holds ``units`` units, or (``flattened``, a conv -> dense
    flatten) ``positions * units`` entries, channel ``c`` of position ``p`` at
    ``p * units + c``; the positions are kept.

    Raises:
      ValueError: the axis does not hold ``units`` units (naming ``where`` and ``group``).
    """

    def lift(fn: Callable[[jax.Array, int], jax.Array]) -> Callable[[jax.Array, int], jax.Array]:
        def run(x: jax.Array, axis: int) -> jax.Array:
            axis %= x.ndim
            shape = x.shape
            if flattened:  # (positions * units, ...) -> (positions, units, ...)
                x = x.reshape((*shape[:axis], shape[axis] // units, units, *shape[axis + 1 :]))
                axis += 1
            if x.shape[axis] != units:
                raise ValueError(
                    f"{where} has {x.shape[axis]} units on axis {axis} but group {group} has "
                    f"{units}"
                )
            out = fn(x, axis)
            return out.reshape((*shape[: axis - 1], -1, *shape[axis:])) if flattened else out

        return run

    def values(x: jax.Array, axis: int, key: jax.Array | None = None) -> jax.Array:
        return lift(lambda y, a: op.values(y, a, key))(x, axis)

    return UnitOp(values, lift(op.moments), op.keyed)
