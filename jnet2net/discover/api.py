"""The entry points: :func:`couplings`, :func:`discover` and :func:`first_use_order`."""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import numpy as np
from jax.extend import core as jcore

from jnet2net.coupling import Path, UnitGroup
from jnet2net.discover.groups import Discovery, _collect
from jnet2net.discover.tracer import _Tracer
from jnet2net.discover.values import _CONSTANT, _Act, _Par, _State
from jnet2net.models.lowering import plain_convs
from jnet2net.variables import Variables, flatten


def couplings(
    model: nn.Module, variables: Variables, example_input: Any, **apply_kwargs: Any
) -> tuple[UnitGroup, ...]:
    """Unit groups of ``model`` discovered from its computation on ``example_input``.

    Args:
      model: any flax linen module.
      variables: its variables, e.g. ``{'params': ..., 'batch_stats': ...}``; only shapes
        and dtypes are read.
      example_input: an input ``model.apply`` takes (any pytree of arrays, e.g. a batch
        ``(n, h, w, c)`` or ``(n, features)``); only its shapes and dtypes are read.
      **apply_kwargs: passed to ``model.apply`` (e.g. ``train=True,
        mutable=['batch_stats']``: then running statistics are found through their update).

    Returns:
      One :class:`UnitGroup` per set of units that can grow (``field=None``; sizes come
      from the variables), in the order their producers run. Groups whose units reach the
      output, meet a non-unit axis or are contracted between two activations (attention's
      query/key width) are left out: they cannot grow (:func:`discover` says why).

    Raises:
      ValueError: ``model.apply`` fails on these arguments, or an op mixes units in a way
        that cannot be grown (naming the op and the parameters involved).
    """
    return discover(model, variables, example_input, **apply_kwargs).groups


def discover(
    model: nn.Module, variables: Variables, example_input: Any, **apply_kwargs: Any
) -> Discovery:
    """:func:`couplings` (same arguments and errors), with the fixed groups and why."""
    closed, paths, n_out = _trace(model, variables, example_input, apply_kwargs)
    tracer = _Tracer()
    n_leaves = len(paths)
    args: list[_State] = [
        _Par(((path, tuple(range(len(var.aval.shape)))),))
        for path, var in zip(paths, closed.jaxpr.invars, strict=False)
    ]
    args += [_Act((None,) * len(v.aval.shape)) for v in closed.jaxpr.invars[n_leaves:]]
    consts = [_CONSTANT] * len(closed.jaxpr.constvars)
    outs = tracer.run(closed.jaxpr, consts, args)
    groups = tracer.groups
    for state in outs[:n_out]:
        if isinstance(state, _Act):
            for label in state.labels:
                if label is not None:
                    groups.pinned[label.node] = "its units are outputs of the network"
    return _collect(groups)


def _trace(model: nn.Module, variables: Variables, example_input: Any, apply_kwargs: dict):
    """``(closed jaxpr, variable paths, number of model outputs)`` of ``model.apply``."""
    flat = flatten(variables)
    paths = list(flat)
    specs = [jax.ShapeDtypeStruct(np.shape(leaf), _dtype(leaf)) for leaf in flat.values()]
    input_specs = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(np.shape(a), _dtype(a)), example_input
    )
    n_out: list[int] = []
    mutable = apply_kwargs.get("mutable", False)

    def forward(leaves, inputs):
        tree = _unflatten(dict(zip(paths, leaves, strict=True)), variables)
        out = model.apply(tree, inputs, **apply_kwargs)
        main = out[0] if mutable else out
        n_out.append(len(jax.tree.leaves(main)))
        return out

    try:
        with plain_convs():  # the library's convolutions as conv primitives on any backend
            closed = jax.make_jaxpr(forward)(specs, input_specs)
    except (flax.errors.FlaxError, TypeError, ValueError, IndexError, KeyError) as err:
        shapes = jax.tree.map(np.shape, example_input)
        raise ValueError(
            f"{type(model).__name__}.apply does not run on example_input {shapes} with these "
            f"variables and {apply_kwargs}: {err}"
        ) from None
    return closed, paths, n_out[-1]


def first_use_order(
    model: nn.Module, variables: Variables, example_input: Any, **apply_kwargs: Any
) -> list[Path]:
    """Variable paths in the order ``model.apply`` first reads them (unread ones left out)."""
    closed, paths, _ = _trace(model, variables, example_input, apply_kwargs)
    index = {var: i for i, var in enumerate(closed.jaxpr.invars[: len(paths)])}
    order: dict[Path, None] = {}
    for eqn in closed.jaxpr.eqns:
        for atom in eqn.invars:
            if not isinstance(atom, jcore.Literal) and atom in index:
                order.setdefault(paths[index[atom]], None)
    return list(order)


def _dtype(leaf: Any) -> Any:
    dtype = getattr(leaf, "dtype", None)
    return np.result_type(leaf) if dtype is None else dtype


def _unflatten(flat: dict, like: Variables) -> Variables:
    from jnet2net.variables import unflatten_like

    return unflatten_like(flat, like)
