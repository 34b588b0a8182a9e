"""``deepen(target=...)``: any linen module grows new layers, identity by rule.

The new leaves of the deeper ``target`` are tried as identity layers, as residual branches
whose last norm scale (or last kernel) is zero, then as branches whose kernels writing back
to a residual stream are zero; the first that computes the same function wins.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jnet2net.coupling import Path
from jnet2net.discover import discover
from jnet2net.engine import keep_empty_collections
from jnet2net.engine.exactness import (
    EXACT_RTOL,
    abstract_init,
    init_kwargs,
    relative_error,
    traced,
)
from jnet2net.engine.layers import PLAIN_RULES, Rule, by_rules, zero_last_rules
from jnet2net.variables import FlatVariables, Variables, flatten, path_str, unflatten_like


def branch_output_rules(
    target: nn.Module,
    fresh: Variables,
    example_input: Any,
    apply_kwargs: Mapping[str, Any],
    new_paths: Sequence[Path],
    old: FlatVariables,
) -> tuple[Rule, ...]:
    """Residual branches found by discovery on ``target``: every new kernel that writes the
    units of a group the old layers also have (a residual stream), and its bias, zero.

    A transformer block has two branches (attention's ``out`` and the MLP's second layer)
    and LayerNorms whose zero scale would not silence them; zeroing the kernels that write
    back to the stream does, and leaves every other new leaf (``query``, ``mlp_in``, norms)
    as ``target.init`` made it.
    """
    found = discover(target, fresh, example_input, **apply_kwargs)
    new = set(new_paths)
    rules: list[Rule] = []
    for group in (*found.groups, *(g for g, _ in found.fixed)):
        if not any(m.path in old for m in group.members):
            continue
        for member in group.members:
            if member.role == "producer" and member.path in new and member.path[-1] == "kernel":
                for leaf in (member.path, (*member.path[:-1], "bias")):
                    if leaf in new:
                        rules.append((f"^{re.escape(path_str(leaf))}$", "zeros"))
    return tuple(dict.fromkeys(rules))


def _stand_in(variables: Variables, key: jax.Array) -> Variables:
    """``variables`` with every float leaf perturbed (``x * exp(0.1 n) + 0.1 n'``): values
    that no zero bias or unit scale of an ``init`` makes look exact by chance; positive
    leaves (variances) stay positive in practice."""
    leaves, treedef = jax.tree.flatten(variables)
    keys = jax.random.split(key, max(2 * len(leaves), 2))
    out = []
    for i, leaf in enumerate(leaves):
        if jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            shape, dtype = jnp.shape(leaf), jnp.result_type(leaf)
            scale = jnp.exp(0.1 * jax.random.normal(keys[2 * i], shape, dtype))
            leaf = leaf * scale + 0.1 * jax.random.normal(keys[2 * i + 1], shape, dtype)
        out.append(leaf)
    return jax.tree.unflatten(treedef, out)


def _first_exact(
    model: nn.Module,
    variables: Variables,
    target: nn.Module,
    fresh_tree: Variables,
    new_paths: list[Path],
    rules: Sequence[Rule] | None,
    example_input: Any,
    apply_kwargs: Mapping[str, Any],
    *,
    eager: bool = False,
) -> tuple[tuple[Rule, ...], Variables]:
    """The first rule set (``rules``, else the identity, zero-last and branch-output
    defaults) whose deeper network computes ``model``'s function, with its variables.

    ``eager``: the candidates are checked under ``jax.ensure_compile_time_eval`` (concrete
    stand-ins inside a trace); finding them (a shape-only trace) stays outside it, where
    constants of the traced module remain literals.

    Raises:
      ValueError: none does (naming the new leaves and each candidate's error).
    """
    from jnet2net.discover import first_use_order

    old, fresh = flatten(variables), flatten(fresh_tree)

    def zero_last() -> tuple[Rule, ...]:
        order = first_use_order(target, fresh_tree, example_input, **apply_kwargs)
        return zero_last_rules(new_paths, order)

    def branches() -> tuple[Rule, ...]:
        return branch_output_rules(target, fresh_tree, example_input, apply_kwargs, new_paths, old)

    candidates = (
        [lambda: tuple(rules)]
        if rules is not None
        else [
            lambda: PLAIN_RULES,
            zero_last,
            branches,
        ]
    )
    errors = []
    for candidate in candidates:
        try:
            chosen = candidate()
            with jax.ensure_compile_time_eval() if eager else contextlib.nullcontext():
                new_leaves = by_rules(new_paths, fresh, chosen)
        except ValueError as err:
            if rules is not None:
                raise
            errors.append(str(err))
            continue
        grown = keep_empty_collections(unflatten_like({**old, **new_leaves}, variables), variables)
        with jax.ensure_compile_time_eval() if eager else contextlib.nullcontext():
            error = relative_error(model, variables, target, grown, example_input, apply_kwargs)
        if error < EXACT_RTOL:
            return chosen, grown
        errors.append(f"relative error {error:.2e}")
    how = (
        "by the rules given"
        if rules is not None
        else "as identity layers or as residual branches with a zero output"
    )
    raise ValueError(
        f"the deeper {type(target).__name__} does not compute the same function with its new "
        f"leaves {', '.join(path_str(p) for p in new_paths)} initialised {how} "
        f"({'; '.join(errors)}): pass rules=[(regex, 'zeros' | 'identity' | ...), ...]"
    )


def deepen_to_target(
    model: nn.Module,
    variables: Variables,
    target: nn.Module,
    *,
    key: jax.Array,
    example_input: Any,
    rules: Sequence[Rule] | None = None,
    apply_kwargs: Mapping[str, Any] | None = None,
) -> tuple[nn.Module, Variables]:
    """Net2DeeperNet for any linen module: ``target`` (more layers) computing ``model``'s
    function. See :func:`jnet2net.deepen` (``target=``).

    Without ``rules`` the new leaves are tried as identity layers (:data:`PLAIN_RULES`), as
    residual branches whose last norm scale (or last kernel) is zero
    (:func:`zero_last_rules`), then as branches whose kernels writing back to a residual
    stream are zero (:func:`branch_output_rules`, e.g. a transformer block); the first that
    computes the same function on random inputs wins. Under ``jax.jit`` (traced variables)
    the choice is made on perturbed stand-in variables of ``model`` and then applied.

    Returns:
      ``(target, new_variables)``: every old leaf kept, new leaves by ``rules``.

    Raises:
      ValueError: ``example_input`` is missing; ``target`` is another class, lacks an old
        path or changes an old leaf's shape; a rule is malformed; or the result does not
        compute the same function (naming the new paths).
    """
    apply_kwargs = dict(apply_kwargs or {})
    if example_input is None:
        raise ValueError(
            f"deepen(target=...) builds and checks {type(model).__name__}'s deeper version: "
            "pass example_input= (an input the module takes, e.g. a batch of one)"
        )
    if type(target) is not type(model):
        raise ValueError(
            f"target must be a {type(model).__name__} like the model (with more layers), got "
            f"a {type(target).__name__}"
        )
    old = flatten(variables)
    shapes = abstract_init(target, example_input, apply_kwargs)
    problems = [f"{path_str(p)} missing in target" for p in old if p not in shapes]
    problems += [
        f"{path_str(p)} has shape {np.shape(old[p])} but {shapes[p].shape} in target"
        for p in old
        if p in shapes and np.shape(old[p]) != shapes[p].shape
    ]
    if problems:
        raise ValueError(
            "deepen keeps every old layer as it is, but the target differs there (name new "
            "layers explicitly so old names do not shift): " + "; ".join(problems)
        )
    new_paths = [p for p in shapes if p not in old]
    if not new_paths:
        return target, variables
    fresh_tree = target.init(key, example_input, **init_kwargs(apply_kwargs))
    if not traced((variables, fresh_tree)):
        _, grown = _first_exact(
            model, variables, target, fresh_tree, new_paths, rules, example_input, apply_kwargs
        )
        return target, grown
    with jax.ensure_compile_time_eval():  # concrete stand-ins inside a trace
        stand_key, fresh_key = jax.random.split(jax.random.key(0))
        stand_in = _stand_in(
            model.init(jax.random.key(1), example_input, **init_kwargs(apply_kwargs)), stand_key
        )
        stand_fresh = target.init(fresh_key, example_input, **init_kwargs(apply_kwargs))
    chosen, _ = _first_exact(
        model,
        stand_in,
        target,
        stand_fresh,
        new_paths,
        rules,
        example_input,
        apply_kwargs,
        eager=True,
    )
    new_leaves = by_rules(new_paths, flatten(fresh_tree), chosen)
    grown = unflatten_like({**old, **new_leaves}, variables)
    return target, keep_empty_collections(grown, variables)
