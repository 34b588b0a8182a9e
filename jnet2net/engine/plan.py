"""``GrowthPlan``: one plan type for widen, deepen and transfer.

A plan says how the variables of ``model`` become those of ``new_model``:

1. ``sources``: where each leaf of the new network starts -- a leaf of the old tree (the
   same path, or another layer's for a moved or repeated layer) or a value the plan holds
   (an identity layer, a residual block with a zero last scale, a fresh initialisation);
2. ``groups``: per unit group, in order, one :class:`~jnet2net.engine.ops.UnitOp` for its
   producers and norms and one for its consumers (replicate/split, narrow/fold, pad);
3. ``fresh`` groups: the new units' producer entries taken from ``init`` (``new_model.init``).

``plan.apply(variables)`` runs the three passes on weights (noise from the plan's key);
``plan.map(tree)`` runs them on a params-shaped tree without noise, linearly, with every
value the old network does not provide zero: what ``optax.tree_map_params`` needs to carry
optimizer moments (momentum, Adam's ``mu``/``nu``).

Exactness, in one place (float32, relative error well under 1e-5):

* replicate producers + split consumers (``'none'``, or ``'split'`` with noise scale up to
  ``jnet2net.grow.MAX_EXACT_SPLIT_SCALE``): exact in eval and train mode, since replicated
  channels have equal batch statistics; ``'paper'`` noise is not exact;
* pad (new units) with zero outgoing weights and fresh incoming ones: exact in both modes;
* narrow/fold: exact only when the dropped units are replicas of kept ones;
* identity layers after a ReLU: exact; an inserted BatchNorm is the identity in eval mode;
* a new residual branch whose last scale (or output kernel) is zero: exact in both modes;
* kernels resized (padded/cropped) and class columns changed: exact only for odd kernels
  padded (not cropped) and unchanged classes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import FrozenDict, freeze, unfreeze

from jnet2net.coupling import Member, Path, UnitGroup
from jnet2net.engine.ops import UnitOp, on_units
from jnet2net.variables import FlatVariables, Variables, flatten, path_str, unflatten_like


class GroupStep(NamedTuple):
    """How one unit group changes size.

    Attributes:
      group: the unit group (paths of the network the step runs on).
      old: its units before.
      new: its units after.
      producer: the op on its producers and norms (out axis, scale/bias/mean/var).
      consumer: the op on its consumers (in axis).
      fresh: new units' producer entries come from the plan's ``init`` (``'fresh'``
        widening); their consumer entries are whatever ``consumer`` made (zero for ``pad``).
    """

    group: UnitGroup
    old: int
    new: int
    producer: UnitOp
    consumer: UnitOp
    fresh: bool = False


class Source(NamedTuple):
    """Where a leaf of the new network starts: ``path`` of the old tree, or ``value``
    (a new leaf: its moments are zero)."""

    path: Path | None = None
    value: Any = None


def _member_op(step: GroupStep, member: Member) -> UnitOp:
    op = step.producer if member.role == "producer" else step.consumer
    where, group = path_str(member.path), step.group.name
    return on_units(op, step.old, flattened=member.flattened, where=where, group=group)


def run_groups(
    flat: FlatVariables, groups: tuple[GroupStep, ...], key: jax.Array | None, *, moments: bool
) -> FlatVariables:
    """Every group step on the leaves of ``flat`` it names, in order (absent leaves skipped).

    Keyed ops (noisy consumer splits) draw, last member first, from one split of ``key``
    (``jax.random.key(0)`` when ``None``); ``moments=True`` runs the noise-free linear maps.
    """
    flat = dict(flat)
    targets = [(s, m) for s in groups for m in s.group.members if m.path in flat]
    ops = [_member_op(s, m) for s, m in targets]
    keyed = 0 if moments else sum(op.keyed for op in ops)
    keys: list[jax.Array] = []
    if keyed:  # one split, not a hash per leaf: compiles fast
        keys = list(jax.random.split(jax.random.key(0) if key is None else key, keyed))
    for (_, member), op in zip(targets, ops, strict=True):
        leaf = flat[member.path]
        if moments:
            flat[member.path] = op.moments(leaf, member.axis)
        else:
            flat[member.path] = op.values(leaf, member.axis, keys.pop() if op.keyed else None)
    return flat


def _new_units_mask(shape: tuple[int, ...], axes: list[tuple[int, GroupStep, bool]]) -> Any:
    """Boolean mask broadcastable to ``shape``: entries on a new unit of some axis in
    ``axes`` (``(axis, step, flattened)``). Static, so a constant under ``jax.jit``."""
    mask = None
    for axis, step, flattened in axes:
        axis %= len(shape)
        index = np.arange(shape[axis])
        if flattened:  # channels-last flatten: unit = index mod channels
            index = index % step.new
        along = (index >= step.old).reshape([-1 if a == axis else 1 for a in range(len(shape))])
        mask = along if mask is None else mask | along
    return mask


def fill_fresh(
    flat: FlatVariables, fresh: FlatVariables, groups: tuple[GroupStep, ...]
) -> FlatVariables:
    """New units of ``fresh`` groups take ``fresh``'s values on producer axes.

    Raises:
      ValueError: ``fresh`` lacks a touched leaf or has another shape.
    """
    flat = dict(flat)
    axes: dict[Path, list[tuple[int, GroupStep, bool]]] = {}
    for step in groups:
        for m in step.group.members:
            if step.fresh and m.path in flat:
                entry = axes.setdefault(m.path, [])
                if m.role == "producer":
                    entry.append((m.axis, step, m.flattened))
    for path, producer_axes in axes.items():
        leaf = flat[path]
        if path not in fresh or jnp.shape(fresh[path]) != leaf.shape:
            got = jnp.shape(fresh[path]) if path in fresh else "nothing"
            raise ValueError(
                f"fresh variables hold {got} at {path_str(path)}, the widened leaf has shape "
                f"{leaf.shape} (was fresh made by the wide network's init?)"
            )
        mask = _new_units_mask(leaf.shape, producer_axes) if producer_axes else None
        if mask is not None:
            flat[path] = jnp.where(mask, fresh[path].astype(leaf.dtype), leaf)
    return flat


def keep_empty_collections(grown: Variables, like: Variables) -> Variables:
    """Adds back the empty collections of ``like`` (e.g. ``batch_stats={}``) that flattening
    drops, so the grown tree has the same top-level keys."""
    missing = {name: jax.tree.map(lambda x: x, like[name]) for name in like if name not in grown}
    if not missing:
        return grown
    return grown.copy(missing) if isinstance(grown, FrozenDict) else {**grown, **missing}


@dataclasses.dataclass(frozen=True, eq=False)
class GrowthPlan:
    """How ``model``'s variables become ``new_model``'s; see the module docstring.

    Attributes:
      model: the module before (``None`` for a plan of bare group steps).
      new_model: the module after.
      groups: the unit-group steps, run in order.
      sources: ``{new path: Source}``; ``None``: every leaf is its own source. Old leaves
        of a collection no source names pass through unchanged.
      key: the noise key of ``apply`` (split among keyed ops).
      init: ``key -> new_model``'s variables, for ``fresh`` groups.
      init_key: the key of ``init`` (default: ``key``).
      check: ``(variables, new_variables) -> None``, run by ``apply``; raises when the
        result is not what the plan promised (e.g. not the same function).
    """

    model: nn.Module | None
    new_model: nn.Module | None
    groups: tuple[GroupStep, ...] = ()
    sources: Mapping[Path, Source] | None = None
    key: jax.Array | None = None
    init: Callable[[jax.Array], Variables] | None = None
    init_key: jax.Array | None = None
    check: Callable[[Variables, Variables], None] | None = None

    def _start(self, old: FlatVariables, zeros_dtype: Any = None) -> FlatVariables:
        if self.sources is None:
            return dict(old)
        start = {}
        for path, source in self.sources.items():
            if zeros_dtype is not None and path[0] != "params":
                continue
            if source.path is not None:
                start[path] = old[source.path]
            elif zeros_dtype is not None:
                start[path] = jnp.zeros(jnp.shape(source.value), zeros_dtype)
            else:
                start[path] = source.value
        covered = {path[0] for path in self.sources}
        start.update({p: leaf for p, leaf in old.items() if p[0] not in covered})
        return start

    def apply(self, variables: Variables, key: jax.Array | None = None) -> Variables:
        """``new_model``'s variables from ``model``'s (frozen if ``variables`` were).

        Args:
          variables: ``model``'s variables.
          key: noise and ``init`` key; ``None``: the plan's ``key`` and ``init_key``.
        """
        noise_key = self.key if key is None else key
        init_key = key if key is not None else self.init_key
        init_key = noise_key if init_key is None else init_key
        flat = run_groups(self._start(flatten(variables)), self.groups, noise_key, moments=False)
        if self.init is not None and any(step.fresh for step in self.groups):
            flat = fill_fresh(flat, flatten(self.init(init_key)), self.groups)
        grown = keep_empty_collections(unflatten_like(flat, variables), variables)
        if self.check is not None:
            self.check(variables, grown)
        return grown

    def map(self, tree: Any) -> Any:
        """A tree shaped like ``model``'s params mapped to one shaped like ``new_model``'s.

        Linear and noise-free: replicas copy, split consumers get ``1 / count``, folded
        units their sum, and every value the old network does not provide is zero.
        """
        frozen = isinstance(tree, FrozenDict)
        old = flatten({"params": unfreeze(tree) if frozen else tree})
        dtype = jnp.result_type(*old.values())
        flat = run_groups(self._start(old, dtype), self.groups, None, moments=True)
        out = unflatten_like(flat, {}).get("params", {})
        return freeze(out) if frozen else out


def deepening_plan(
    model: nn.Module, new_model: nn.Module, old: FlatVariables, new: FlatVariables
) -> GrowthPlan:
    """A plan that keeps every leaf of ``old`` (by path) and adds the others of ``new`` as
    new leaves (identity layers, zero-output blocks, fresh weights: moments zero)."""
    sources = {p: Source(p) if p in old else Source(value=leaf) for p, leaf in new.items()}
    return GrowthPlan(model, new_model, sources=sources)
