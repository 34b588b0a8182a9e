"""Checking that a grown network computes its model's function, in one place.

Every growth the engine plans is exact by construction where ``jnet2net.engine.plan`` says
so; growths of arbitrary modules (``target=``) are also *checked* on random inputs against
:data:`EXACT_RTOL` with :func:`relative_error`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jnet2net.variables import FlatVariables, Variables, flatten

#: A grown network counts as computing the same function below this relative error.
EXACT_RTOL = 1e-5


def init_kwargs(apply_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``apply_kwargs`` without the ones ``init`` does not take (``mutable``)."""
    return {k: v for k, v in apply_kwargs.items() if k != "mutable"}


def abstract_init(
    target: nn.Module, example_input: Any, apply_kwargs: Mapping[str, Any]
) -> FlatVariables:
    """Flat shapes of ``target.init`` on ``example_input``, with no computation.

    Raises:
      ValueError: ``target`` does not initialise on ``example_input``.
    """
    try:
        shapes = jax.eval_shape(
            lambda x: target.init(jax.random.key(0), x, **init_kwargs(apply_kwargs)),
            example_input,
        )
    except Exception as err:  # flax and jax raise many types here; re-raise with context
        raise ValueError(
            f"target {type(target).__name__} does not initialise on example_input "
            f"{jax.tree.map(np.shape, example_input)}: {err}"
        ) from None
    return flatten(shapes)


def _outputs(model: nn.Module, variables: Variables, x: Any, apply_kwargs: Mapping) -> Any:
    out = model.apply(variables, x, **apply_kwargs)
    return out[0] if apply_kwargs.get("mutable", False) else out


def relative_error(
    model: nn.Module,
    variables: Variables,
    new_model: nn.Module,
    new_variables: Variables,
    example_input: Any,
    apply_kwargs: Mapping[str, Any],
) -> float:
    """``max|new - old| / max|old|`` of the two networks on random inputs shaped like
    ``example_input`` (float leaves standard normal, others as given)."""
    leaves, treedef = jax.tree.flatten(example_input)
    keys = jax.random.split(jax.random.key(1234), max(len(leaves), 1))
    inputs = [
        jax.random.normal(k, jnp.shape(x), jnp.result_type(x))
        if jnp.issubdtype(jnp.result_type(x), jnp.floating)
        else x
        for k, x in zip(keys, leaves, strict=False)
    ]
    x = jax.tree.unflatten(treedef, inputs)
    old = jax.tree.leaves(_outputs(model, variables, x, apply_kwargs))
    new = jax.tree.leaves(_outputs(new_model, new_variables, x, apply_kwargs))
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(old, new, strict=True))
    scale = max(float(jnp.max(jnp.abs(a))) for a in old)
    return diff / max(scale, float(np.finfo(np.float32).tiny))


def traced(variables: Variables) -> bool:
    """Whether any leaf of ``variables`` is a tracer (inside ``jax.jit``): no check then."""
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(variables))
