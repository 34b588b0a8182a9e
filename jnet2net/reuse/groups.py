"""The unit-group operations of a transfer: which groups change size, the widening
mappings and kept units drawn for them, and the growth engine's steps that apply them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jnet2net import surgery
from jnet2net.coupling import UnitGroup
from jnet2net.engine import GroupStep, ops
from jnet2net.engine.widening import GroupMapping, Noise, widening_steps
from jnet2net.reuse.layers import LayerSource
from jnet2net.variables import FlatVariables


class GroupOp(NamedTuple):
    """How one unit group of the intermediate network changes size.

    Attributes:
      group: the group (paths of the intermediate network, which the destination shares).
      old: units in the intermediate network.
      new: units in the destination.
      mapping: widening: ``(new,)`` source unit of each new unit; ``None`` when narrowing.
      counts: widening: ``(old,)`` replication counts.
      kept: narrowing: ``(new,)`` sorted indices of the kept units.
      assignment: narrowing: ``(old,)`` position in ``kept`` that each unit folds into.
      tied_to: the group whose operation this identity layer's group reuses, or ``None``.
    """

    group: UnitGroup
    old: int
    new: int
    mapping: jax.Array | None = None
    counts: jax.Array | None = None
    kept: jax.Array | None = None
    assignment: jax.Array | None = None
    tied_to: str | None = None

    @property
    def widens(self) -> bool:
        """Whether the group grows."""
        return self.mapping is not None


class GroupSpec(NamedTuple):
    """A unit group that changes size, known before any array is touched.

    Attributes:
      index: the group's position in ``mid_model.unit_groups()`` (which key it draws).
      group: the group.
      old: units in the intermediate network.
      new: units in the destination.
      tied_to: for a VGG identity layer whose feeding group changes the same way: that
        group's name (the identity layer then keeps the same units and stays an identity).
    """

    index: int
    group: UnitGroup
    old: int
    new: int
    tied_to: str | None = None


def group_steps(
    group_ops: tuple[GroupOp, ...], noise: Noise, noise_scale: float
) -> tuple[GroupStep, ...]:
    """The engine's steps of ``group_ops``: widenings (replicate producers, split consumers
    with ``noise``), then narrowings (keep, fold)."""
    widen = widening_steps(
        tuple(GroupMapping(op.group, op.mapping, op.counts) for op in group_ops if op.widens),
        noise,
        noise_scale,
    )
    narrow = [
        GroupStep(op.group, op.old, op.new, ops.narrow(op.kept), ops.fold(op.assignment, op.new))
        for op in group_ops
        if not op.widens
    ]
    return (*widen, *narrow)


def group_specs(
    mid: nn.Module, dst: nn.Module, layout: Mapping[str, LayerSource], changes: list[str]
) -> tuple[GroupSpec, ...]:
    """The groups that change size (and that the source provides); notes narrowing."""
    specs: dict[str, GroupSpec] = {}
    for index, group in enumerate(mid.unit_groups()):
        old, new = mid.width_of(group.field), dst.width_of(group.field)
        if old == new or all(layout[m.path[1]].kind == "zero_block" for m in group.members):
            continue
        tied_to = None
        source = layout.get(group.name)
        if source is not None and source.kind == "identity":
            layers = mid.layer_names()
            feeder = specs.get(layers[layers.index(group.name) - 1])
            if feeder is not None and (feeder.old, feeder.new) == (old, new):
                tied_to = feeder.group.name
        specs[group.name] = GroupSpec(index, group, old, new, tied_to)
        if new < old and tied_to is None:
            changes.append(
                f"{group.name}: {old} -> {new} units: kept the largest, folded the rest into "
                "the most similar kept unit"
            )
    return tuple(specs.values())


def producer_rows(group: UnitGroup, values: FlatVariables, units: int) -> jax.Array:
    """``(units, features)``: every producer kernel/bias of the group, unit by unit."""
    rows = [
        jnp.moveaxis(values[m.path], m.axis, 0).reshape(units, -1)
        for m in group.members
        if m.role == "producer"
        and m.path[0] == "params"
        and m.path[-1] in ("kernel", "bias")
        and m.path in values
    ]
    if not rows:
        raise ValueError(f"cannot narrow {group.name}: none of its producers is in the variables")
    return jnp.concatenate(rows, axis=1)


def draw_group_ops(
    specs: tuple[GroupSpec, ...], n_groups: int, values: FlatVariables, key: jax.Array
) -> tuple[GroupOp, ...]:
    """Draws the widening mappings and picks the kept units (traceable)."""
    keys = jax.random.split(key, max(n_groups, 1))
    ops: dict[str, GroupOp] = {}
    for spec in specs:
        group, old, new = spec.group, spec.old, spec.new
        if spec.tied_to is not None:
            ops[group.name] = ops[spec.tied_to]._replace(group=group, tied_to=spec.tied_to)
        elif new > old:
            if group.uniform_only and new % old == 0:  # a ViT stream: LayerNorms stay exact
                mapping = surgery.uniform_mapping(old, new)
            else:
                mapping = surgery.random_mapping(keys[spec.index], old, new)
            counts = surgery.replication_counts(mapping, old)
            ops[group.name] = GroupOp(group, old, new, mapping=mapping, counts=counts)
        else:
            kept, assignment = surgery.select_units(producer_rows(group, values, old), 0, new)
            ops[group.name] = GroupOp(group, old, new, kept=kept, assignment=assignment)
    return tuple(ops.values())


_OP_ARRAYS = ("mapping", "counts", "kept", "assignment")


def op_arrays(ops: tuple[GroupOp, ...]) -> tuple[tuple[jax.Array | None, ...], ...]:
    return tuple(tuple(getattr(op, name) for name in _OP_ARRAYS) for op in ops)


def with_arrays(
    ops: tuple[GroupOp, ...], arrays: tuple[tuple[jax.Array | None, ...], ...]
) -> tuple[GroupOp, ...]:
    return tuple(
        op._replace(**dict(zip(_OP_ARRAYS, values, strict=True)))
        for op, values in zip(ops, arrays, strict=True)
    )
