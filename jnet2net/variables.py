"""Checks and traversals of Flax variable dicts ``{'params': ..., 'batch_stats': ...}``."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util
from flax.core import FrozenDict, freeze, unfreeze

Variables = Any  # a (possibly frozen) nested dict of arrays
FlatVariables = dict[tuple[str, ...], Any]


def flatten(variables: Variables) -> FlatVariables:
    """Returns a new flat ``{path: leaf}`` dict; the input is not touched."""
    if isinstance(variables, FrozenDict):
        variables = unfreeze(variables)
    return traverse_util.flatten_dict(variables)


def unflatten_like(flat: FlatVariables, like: Variables) -> Variables:
    """Nests ``flat`` back, frozen if ``like`` was frozen."""
    nested = traverse_util.unflatten_dict(flat)
    return freeze(nested) if isinstance(like, FrozenDict) else nested


def path_str(path: tuple[str, ...]) -> str:
    """``('params', 'stem', 'conv', 'kernel')`` -> ``'params/stem/conv/kernel'``."""
    return "/".join(path)


def abstract_variables(model: nn.Module, example: jax.Array) -> FlatVariables:
    """Flat shapes and dtypes of ``model.init`` on ``example``, with no computation."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), example)
    return flatten(shapes)


def check_variables(model: nn.Module, variables: Variables) -> None:
    """Raises ValueError/TypeError unless ``variables`` fit ``model`` path for path.

    The message names the first missing, unexpected, mis-shaped or non-float leaf and both
    shapes.
    """
    if not hasattr(variables, "keys") or "params" not in variables:
        keys = list(variables.keys()) if hasattr(variables, "keys") else []
        raise TypeError(
            "variables must be a dict like {'params': ..., 'batch_stats': ...}, got "
            f"{type(variables).__name__} with keys {keys}"
        )
    expected = abstract_variables(model, model.example_input(variables))
    given = flatten(variables)
    needs_stats = any(path[0] == "batch_stats" for path in expected)
    if needs_stats and "batch_stats" not in variables:
        raise ValueError(
            f"variables lack 'batch_stats', which {type(model).__name__} needs for its "
            "BatchNorm layers; pass the full dict returned by model.init / the train state"
        )
    for path, leaf in expected.items():
        if path not in given:
            raise ValueError(
                f"variables do not match {type(model).__name__}: {path_str(path)} with shape "
                f"{leaf.shape} is missing (were these variables made for another architecture?)"
            )
        value = given[path]
        shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
        if shape is None or dtype is None:
            raise TypeError(
                f"variables do not match {type(model).__name__}: {path_str(path)} is a "
                f"{type(value).__name__}, not an array (the architecture needs {leaf.shape})"
            )
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(
                f"variables do not match {type(model).__name__}: {path_str(path)} has dtype "
                f"{dtype} and shape {shape}, the architecture needs floats of shape {leaf.shape}"
            )
        if shape != leaf.shape:
            raise ValueError(
                f"variables do not match {type(model).__name__}: {path_str(path)} has shape "
                f"{shape}, the architecture needs {leaf.shape}"
            )
    extra = [p for p in given if p not in expected and p[0] in ("params", "batch_stats")]
    if extra:
        raise ValueError(
            f"variables do not match {type(model).__name__}: unexpected {path_str(extra[0])} "
            f"with shape {getattr(given[extra[0]], 'shape', None)} (and {len(extra) - 1} more)"
        )


def check_key(function: str, key: Any) -> None:
    """Raises TypeError unless ``key`` is one typed key or one raw uint32 ``PRNGKey``."""
    dtype, shape = getattr(key, "dtype", None), getattr(key, "shape", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key) and shape == ():
        return
    if dtype == jnp.uint32 and shape in ((2,), (4,)):
        return
    raise TypeError(
        f"{function} needs key=jax.random.key(seed) (or a jax.random.PRNGKey), got "
        f"{type(key).__name__} with shape {shape} and dtype {dtype}"
    )
