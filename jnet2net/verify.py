"""Function-preservation checks: run two networks over a stack of batches with ``jax.vmap``."""

from __future__ import annotations

import functools
import inspect
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jnet2net.variables import Variables


def _mode(model: nn.Module, train: bool) -> dict[str, bool]:
    """``{'train': train}`` for modules whose ``__call__`` takes ``train``, else ``{}``."""
    try:
        parameters = inspect.signature(type(model).__call__).parameters
    except (TypeError, ValueError):
        return {"train": train}
    takes = "train" in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    )
    return {"train": train} if takes else {}


def _logits(model: nn.Module, variables: Variables, batch: jax.Array, train: bool) -> jax.Array:
    if train:
        out, _ = model.apply(variables, batch, mutable=["batch_stats"], **_mode(model, True))
        return out
    return model.apply(variables, batch, **_mode(model, False))


@functools.partial(jax.jit, static_argnames=("model_a", "model_b", "train"))
def _errors(
    model_a: nn.Module,
    variables_a: Variables,
    model_b: nn.Module,
    variables_b: Variables,
    xs: jax.Array,
    train: bool,
) -> jax.Array:
    """Compiled once per pair of architectures (modules are hashable static arguments)."""
    a = jax.vmap(lambda x: _logits(model_a, variables_a, x, train))(xs)
    b = jax.vmap(lambda x: _logits(model_b, variables_b, x, train))(xs)
    per_batch = tuple(range(1, a.ndim))  # outputs of any rank: (n_batches, batch, ...)
    diff = jnp.max(jnp.abs(a - b), axis=per_batch)
    scale = jnp.max(jnp.abs(a), axis=per_batch)
    return diff / jnp.maximum(scale, jnp.finfo(jnp.float32).tiny)


def _diagnose(
    model_a: nn.Module,
    variables_a: Variables,
    model_b: nn.Module,
    variables_b: Variables,
    xs: jax.Array,
    train: bool,
) -> None:
    """Raises a ValueError naming the network that does not run on ``xs`` or the two
    differing output shapes; returns when it finds neither."""
    batch = jax.ShapeDtypeStruct(xs.shape[1:], xs.dtype)
    shapes = []
    for name, model, variables in (
        ("model_a", model_a, variables_a),
        ("model_b", model_b, variables_b),
    ):
        try:
            out = jax.eval_shape(functools.partial(_logits, model, train=train), variables, batch)
        except (flax.errors.FlaxError, TypeError, ValueError) as err:
            raise ValueError(
                f"{name} does not run on xs of shape {xs.shape} with its variables: {err}"
            ) from None
        shapes.append(getattr(out, "shape", None))
    if shapes[0] != shapes[1]:
        raise ValueError(
            f"the networks give outputs of different shapes: {shapes[0]} and {shapes[1]} per batch"
        )


def _batch_ndim(model: nn.Module, variables: Variables) -> int | None:
    """The rank of one batch for modules that say (an ``example_input`` method), else None."""
    example_input = getattr(model, "example_input", None)
    if not callable(example_input):
        return None
    try:
        return int(np.ndim(example_input(variables)))
    except (ValueError, TypeError, KeyError, AttributeError):
        return None  # variables that do not fit are reported by the comparison itself


def output_error(
    model_a: nn.Module,
    variables_a: Variables,
    model_b: nn.Module,
    variables_b: Variables,
    xs: Any,
    *,
    train: bool = False,
) -> jax.Array:
    """Per-batch relative output difference ``max|a - b| / max|a|`` of two networks.

    Args:
      model_a, variables_a: the reference network.
      model_b, variables_b: the network to compare.
      xs: a stack of batches ``(n_batches, batch, ...)`` of any rank (any array-like):
        images ``(n_batches, batch, h, w, c)``, tokens ``(n_batches, batch, seq)``, vectors
        ``(n_batches, batch, features)``; ``jax.vmap`` maps both networks over the leading
        axis (in train mode each batch gets its own BatchNorm statistics). Modules with an
        ``example_input`` method (the presets) check the rank against it. The networks'
        outputs may have any rank too.
      train: compare in train mode (batch statistics) instead of eval mode.

    Returns:
      ``(n_batches,)`` float32 relative errors.

    Raises:
      ValueError: ``xs`` is not a stack of batches (of the preset's rank) or is empty (a
        zero in its shape), a network does not run on it with its variables, or the two
        networks' outputs differ in shape.
    """
    xs = xs if isinstance(xs, jax.Array) else jnp.asarray(np.asarray(xs))
    ndim = _batch_ndim(model_a, variables_a)
    if ndim is not None and xs.ndim != ndim + 1:
        raise ValueError(
            f"output_error needs a stack of batches (n_batches, *batch_shape) with batches of "
            f"rank {ndim} for {type(model_a).__name__}, e.g. images (n_batches, batch, h, w, "
            f"c), got {xs.shape}"
        )
    if xs.ndim < 2:
        raise ValueError(
            f"output_error needs a stack of batches (n_batches, batch, ...), got {xs.shape}"
        )
    if 0 in xs.shape:
        raise ValueError(
            "output_error needs at least one batch of at least one input (no inputs compare "
            f"nothing), got xs of shape {xs.shape}"
        )
    try:
        return _errors(model_a, variables_a, model_b, variables_b, xs, train)
    except (flax.errors.FlaxError, TypeError, ValueError):
        _diagnose(model_a, variables_a, model_b, variables_b, xs, train)
        raise


def assert_function_preserved(
    model_a: nn.Module,
    variables_a: Variables,
    model_b: nn.Module,
    variables_b: Variables,
    xs: jax.Array,
    *,
    train: bool = False,
    rtol: float = 1e-5,
) -> None:
    """Raises AssertionError unless :func:`output_error` is below ``rtol`` on every batch.

    Raises:
      AssertionError: the outputs differ.
      ValueError: see :func:`output_error` (e.g. an empty ``xs``, which proves nothing).
    """
    err = np.asarray(output_error(model_a, variables_a, model_b, variables_b, xs, train=train))
    if not np.all(err < rtol):
        raise AssertionError(
            f"outputs differ: max relative error {err.max():.3e} >= rtol {rtol:.1e} "
            f"(per batch: {np.array2string(err, precision=2)}; train={train})"
        )
