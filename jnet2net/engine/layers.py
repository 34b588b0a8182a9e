"""Leaves of new layers: identity values and ``(regex, initialiser)`` rules, written once.

``deepen`` (presets and ``target=``) and ``transfer`` make the leaves of inserted layers
here: an identity layer is :data:`PLAIN_RULES` (a square dense kernel is the identity
matrix, an odd conv kernel the delta, a norm scale ``sqrt(1 + eps)`` over mean 0 / var 1,
biases zero); a residual branch is silenced by :func:`zero_last_rules`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jnet2net.coupling import Path
from jnet2net.variables import FlatVariables, path_str

#: A per-leaf initialiser: a name in ``INITIALISERS`` or ``f(path, fresh_leaf) -> array``.
Initialiser = str | Callable[[Path, jax.Array], jax.Array]
#: ``(regex on 'collection/module/.../leaf', initialiser)``; the first match wins.
Rule = tuple[str, Initialiser]
INITIALISERS = ("identity", "zeros", "ones", "fresh")
#: The BatchNorm epsilon an ``'identity'`` norm scale assumes (flax's and jnet2net's).
NORM_EPSILON = 1e-5

#: A plain chain: every new layer computes its input (after a ReLU: identity kernels).
PLAIN_RULES: tuple[Rule, ...] = (
    (r"(^|/)kernel$", "identity"),
    (r"(^|/)bias$", "zeros"),
    (r"^batch_stats/.*/mean$", "zeros"),
    (r"^batch_stats/.*/var$", "ones"),
    (r"(^|/)scale$", "identity"),
)


def identity_leaf(path: Path, fresh: jax.Array) -> jax.Array:
    """The identity value of a new kernel (dense or odd conv, square) or norm scale."""
    shape = np.shape(fresh)
    if path[-1] == "scale":
        return jnp.full(shape, np.sqrt(1.0 + NORM_EPSILON), fresh.dtype)
    if len(shape) == 2 and shape[0] == shape[1]:
        return jnp.eye(shape[0], dtype=fresh.dtype)
    if len(shape) >= 3 and shape[-1] == shape[-2] and all(s % 2 for s in shape[:-2]):
        kernel = jnp.zeros(shape, fresh.dtype)
        centre = tuple(s // 2 for s in shape[:-2])
        return kernel.at[centre].set(jnp.eye(shape[-1], dtype=fresh.dtype))
    raise ValueError(
        f"no identity for {path_str(path)} of shape {shape}: 'identity' needs a square dense "
        "kernel (n, n), an odd conv kernel (..., c, c) or a norm scale; give it another rule"
    )


def initialise(path: Path, fresh: jax.Array, initialiser: Initialiser) -> jax.Array:
    """Leaf ``path`` by ``initialiser``; ``fresh`` is the new network's own initial value
    (a ``jax.ShapeDtypeStruct`` is enough unless the initialiser needs the value)."""
    if callable(initialiser):
        value = jnp.asarray(initialiser(path, fresh))
        if value.shape != np.shape(fresh):
            raise ValueError(
                f"the rule for {path_str(path)} returned shape {value.shape}, the target needs "
                f"{np.shape(fresh)}"
            )
        return value.astype(fresh.dtype)
    if initialiser == "identity":
        return identity_leaf(path, fresh)
    if initialiser == "zeros":
        return jnp.zeros(np.shape(fresh), fresh.dtype)
    if initialiser == "ones":
        return jnp.ones(np.shape(fresh), fresh.dtype)
    if initialiser == "fresh":
        return fresh
    raise ValueError(
        f"unknown initialiser {initialiser!r} for {path_str(path)}: use one of {INITIALISERS} "
        "or a callable (path, fresh_leaf) -> array"
    )


def check_rules(rules: Sequence[Rule]) -> list[tuple[re.Pattern[str], Initialiser]]:
    """``rules`` compiled; TypeError/ValueError naming a malformed rule."""
    compiled = []
    for rule in rules:
        if not isinstance(rule, (tuple, list)) or len(rule) != 2:
            raise TypeError(f"a rule is (regex, initialiser), got {rule!r}")
        pattern, initialiser = rule
        if not callable(initialiser) and initialiser not in INITIALISERS:
            raise ValueError(
                f"unknown initialiser {initialiser!r} in rule {pattern!r}: use one of "
                f"{INITIALISERS} or a callable (path, fresh_leaf) -> array"
            )
        try:
            compiled.append((re.compile(pattern), initialiser))
        except re.error as err:
            raise ValueError(f"rule {pattern!r} is not a regular expression: {err}") from None
    return compiled


def by_rules(
    new_paths: Sequence[Path], fresh: FlatVariables, rules: Sequence[Rule]
) -> FlatVariables:
    """Each new leaf by the first rule whose regex matches its ``'/'``-joined path
    (``re.search``); leaves no rule matches keep ``fresh``'s value."""
    compiled = check_rules(rules)
    out = {}
    for path in new_paths:
        name = path_str(path)
        initialiser: Initialiser = next(
            (init for pattern, init in compiled if pattern.search(name)), "fresh"
        )
        out[path] = initialise(path, fresh[path], initialiser)
    return out


def zero_last_rules(new_paths: Sequence[Path], order: Sequence[Path]) -> tuple[Rule, ...]:
    """A residual branch per new top-level layer: the last norm scale it uses (or, without
    one, its last kernel and that kernel's bias) zero, everything else fresh."""
    rank = {path: i for i, path in enumerate(order)}
    layers: dict[tuple[str, str], list[Path]] = {}
    for path in new_paths:
        if path[0] == "params" and len(path) > 2:
            layers.setdefault(path[:2], []).append(path)
    rules: list[Rule] = []
    for paths in layers.values():
        used = sorted((p for p in paths if p in rank), key=rank.__getitem__)
        scales = [p for p in used if p[-1] == "scale"]
        kernels = [p for p in used if p[-1] == "kernel"]
        if scales:
            rules.append((f"^{re.escape(path_str(scales[-1]))}$", "zeros"))
        elif kernels:
            rules.append((f"^{re.escape(path_str(kernels[-1]))}$", "zeros"))
            bias = (*kernels[-1][:-1], "bias")
            rules.append((f"^{re.escape(path_str(bias))}$", "zeros"))
    return tuple(rules)


def plain_leaf(path: Path, like: Any) -> jax.Array:
    """The value of leaf ``path`` of an identity layer (:data:`PLAIN_RULES`), with the shape
    and dtype of ``like`` (an array or a ``jax.ShapeDtypeStruct``)."""
    return by_rules([path], {path: like}, PLAIN_RULES)[path]
