"""How unit groups grow: random or uniform replica mappings, and the group steps of the
growth engine that replicate producers and split consumers, or add fresh units.

``widen`` (presets, ViT, ``target=``) builds its :class:`GrowthPlan` from these steps, and
``transfer`` its widenings; ``apply_widening``, ``embed_widening`` and ``fresh_widening``
are such plans applied to a variables tree.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import flax.linen as nn
import jax

from jnet2net import surgery
from jnet2net.coupling import UnitGroup
from jnet2net.engine import ops
from jnet2net.engine.plan import GroupStep, GrowthPlan
from jnet2net.variables import Variables

Noise = Literal["none", "split", "paper", "fresh"]
NOISES = ("none", "split", "paper", "fresh")
# The noises that replay a replica mapping (``apply_widening``); 'fresh' keeps old units in
# place and initialises new ones instead (``fresh_widening``).
REPLICA_NOISES = ("none", "split", "paper")
# Zero-sum split shares of scale ``s`` cancel up to float32 rounding that grows with ``s``:
# measured relative errors ~1e-6 at s = 4, 3e-4 at s = 100 (ResNet widened x4). Up to this
# scale a split widening is called exact.
MAX_EXACT_SPLIT_SCALE = 2.0


class GroupMapping(NamedTuple):
    """How one unit group grows: new unit ``j`` copies old unit ``mapping[j]``.

    Attributes:
      group: the unit group.
      mapping: ``(new_size,)`` int32.
      counts: ``(old_size,)`` replication counts of ``mapping``.
    """

    group: UnitGroup
    mapping: jax.Array
    counts: jax.Array


def check_noise_scale(noise_scale: Any) -> None:
    """Raises unless ``noise_scale`` is a finite number ``>= 0`` (or a scalar array, which
    under ``jax.jit`` cannot be checked)."""
    if isinstance(noise_scale, jax.Array):
        if noise_scale.shape != ():
            raise TypeError(f"noise_scale must be a scalar, got shape {noise_scale.shape}")
        return
    if isinstance(noise_scale, bool) or not isinstance(noise_scale, numbers.Real):
        raise TypeError(f"noise_scale must be a finite number >= 0, got {noise_scale!r}")
    if not (math.isfinite(noise_scale) and noise_scale >= 0):
        raise ValueError(f"noise_scale must be a finite number >= 0, got {noise_scale!r}")


def _group_sizes(model: nn.Module, new_model: nn.Module, group: UnitGroup) -> tuple[int, int]:
    """``(old, new)`` size of ``group``; ValueError when it would shrink."""
    old, new = model.width_of(group.field), new_model.width_of(group.field)
    if new < old:
        name, index = group.field
        field = name if index is None else f"{name}[{index}]"
        raise ValueError(
            f"widen cannot shrink {group.name} ({field}) from {old} to {new} units; "
            "use jnet2net.transfer to make a network narrower"
        )
    return old, new


def widening_plan(
    model: nn.Module, new_model: nn.Module, key: jax.Array
) -> tuple[GroupMapping, ...]:
    """Draws one random mapping per unit group that grows from ``model`` to ``new_model``.

    Raises:
      ValueError: a group would shrink (naming it, its field and both sizes).
    """
    groups = model.unit_groups()
    sizes = [_group_sizes(model, new_model, group) for group in groups]
    return plan_for_sizes(groups, sizes, key)


def plan_for_sizes(
    groups: tuple[UnitGroup, ...], sizes: list[tuple[int, int]], key: jax.Array
) -> tuple[GroupMapping, ...]:
    """One mapping per group whose ``(old, new)`` size grows: random, or uniform for
    ``uniform_only`` groups (every unit copied ``new // old`` times).

    Raises:
      ValueError: a ``uniform_only`` group would grow by a size that is not a multiple.
    """
    plan = []
    keys = jax.random.split(key, max(len(groups), 1))
    for group, (old, new), group_key in zip(groups, sizes, keys, strict=False):
        if new <= old:
            continue
        if group.uniform_only:
            if new % old:
                raise ValueError(
                    f"the units of {group.name} are averaged over (e.g. by a LayerNorm): it "
                    f"grows only by uniform replication, to a multiple of {old} units, not {new}"
                )
            mapping = surgery.uniform_mapping(old, new)
        else:
            mapping = surgery.random_mapping(group_key, old, new)
        plan.append(GroupMapping(group, mapping, surgery.replication_counts(mapping, old)))
    return tuple(plan)


class GroupGrowth(NamedTuple):
    """How one unit group grows with ``noise='fresh'``: old units keep ``0..old-1``, units
    ``old..new-1`` are new.

    Attributes:
      group: the unit group.
      old: its size before.
      new: its size after (``> old``).
    """

    group: UnitGroup
    old: int
    new: int


def grown_groups(model: nn.Module, new_model: nn.Module) -> tuple[GroupGrowth, ...]:
    """The unit groups that grow from ``model`` to ``new_model``, with both sizes.

    Raises:
      ValueError: a group would shrink (naming it, its field and both sizes).
    """
    growths = []
    for group in model.unit_groups():
        old, new = _group_sizes(model, new_model, group)
        if new > old:
            growths.append(GroupGrowth(group, old, new))
    return tuple(growths)


def widening_steps(
    plan: tuple[GroupMapping, ...], noise: Noise = "none", noise_scale: float = 0.0
) -> tuple[GroupStep, ...]:
    """Engine steps of a replica plan: producers replicated, consumers split with ``noise``."""
    return tuple(
        GroupStep(
            grow.group,
            grow.counts.shape[0],
            grow.mapping.shape[0],
            ops.replicate(grow.mapping),
            ops.split(grow.mapping, grow.counts, noise, noise_scale),
        )
        for grow in plan
    )


def fresh_steps(growths: tuple[GroupGrowth, ...]) -> tuple[GroupStep, ...]:
    """Engine steps of a fresh widening: every grown axis zero-padded from ``old`` to ``new``
    units, new units' producer entries from the plan's ``init``."""
    return tuple(
        GroupStep(g.group, g.old, g.new, ops.pad(g.new), ops.pad(g.new), fresh=True)
        for g in growths
    )


def apply_widening(
    variables: Variables,
    plan: tuple[GroupMapping, ...],
    *,
    key: jax.Array | None = None,
    noise: Noise = "none",
    noise_scale: float = 0.0,
) -> Variables:
    """Applies a widening plan to every leaf it names; leaves absent from the tree are skipped.

    The same plan grows variables, and (with ``noise='none'``) optimizer moments wrapped as
    ``{'params': moments}``.

    Raises:
      ValueError: ``noise`` is not one of ``REPLICA_NOISES`` (``'fresh'`` maps no replicas:
        use :func:`fresh_widening`).
    """
    if noise not in REPLICA_NOISES:
        raise ValueError(
            f"apply_widening replays replica mappings with noise in {REPLICA_NOISES}, got "
            f"noise={noise!r}; noise='fresh' widening is fresh_widening (or widen)"
        )
    steps = widening_steps(plan, noise, noise_scale)
    return GrowthPlan(None, None, steps, key=key).apply(variables)


def embed_widening(variables: Variables, growths: tuple[GroupGrowth, ...]) -> Variables:
    """The old units embedded in the wide shapes, every new entry zero.

    Each grown axis is zero-padded from ``old`` to ``new`` units (a flattened conv->dense
    axis ``(positions * old,)`` becomes ``(positions * new,)``, channel ``c`` of position
    ``p`` at ``p * new + c``). Linear and key-free: it is the ``map`` of a fresh widening's
    plan, so with ``variables={'params': moments}`` it maps optimizer moments for
    ``noise='fresh'`` (old units keep theirs, new entries are 0). Leaves no grown group
    touches (or absent from the tree) are kept as they are.

    Args:
      variables: a (possibly partial) variables tree of the narrow network.
      growths: :func:`grown_groups` of the narrow and the wide network.

    Returns:
      The tree with the wide shapes (frozen if ``variables`` was).

    Raises:
      ValueError: a leaf's unit axis does not have its group's old size.
    """
    return GrowthPlan(None, None, fresh_steps(growths)).apply(variables)


def fresh_widening(
    variables: Variables, fresh: Variables, growths: tuple[GroupGrowth, ...]
) -> Variables:
    """Old units in place, new units' incoming weights from ``fresh``, outgoing ones zero.

    Per touched leaf: an entry on a new unit of a *producer* axis (kernel output axis, bias,
    BatchNorm scale/bias/mean/var) takes ``fresh``'s value; else an entry on a new unit of a
    *consumer* axis (a kernel's input axis) is zero; else it is the old value. So a kernel
    that consumes group A and produces group B holds: old A -> old B old, new A -> old B
    zero, any A -> new B fresh. New units never reach an old one: the wide network computes
    the old function exactly, in eval and train mode.

    Args:
      variables: the narrow network's variables.
      fresh: variables of the wide network (its ``init``); only touched leaves are read.
      growths: :func:`grown_groups` of the narrow and the wide network.

    Returns:
      The wide network's variables (frozen if ``variables`` was).

    Raises:
      ValueError: ``fresh`` lacks a touched leaf or has another shape than the embedded one.
    """
    plan = GrowthPlan(None, None, fresh_steps(growths), init=lambda _: fresh)
    return plan.apply(variables)


def warn_paper(noise: Noise, plan: GrowthPlan, stacklevel: int) -> None:
    """Warns that ``noise='paper'`` makes a widening inexact (when anything grows)."""
    if noise == "paper" and plan.groups:
        warnings.warn(
            "widen(noise='paper') adds noise to consumer weights: the widened network does "
            "not compute exactly the same function",
            stacklevel=stacklevel + 1,
        )


def replicated_widening(
    variables: Variables,
    plan: tuple[GroupMapping, ...],
    *,
    key: jax.Array,
    noise: Noise,
    noise_scale: float,
    stacklevel: int = 2,
) -> Variables:
    """:func:`apply_widening` of ``plan``, warning first when ``noise='paper'`` makes the
    result inexact (``stacklevel`` counts from the caller, as in ``warnings.warn``)."""
    warn_paper(noise, GrowthPlan(None, None, widening_steps(plan)), stacklevel + 1)
    return apply_widening(variables, plan, key=key, noise=noise, noise_scale=noise_scale)


def replica_plan(
    model: nn.Module,
    new_model: nn.Module,
    plan: tuple[GroupMapping, ...],
    *,
    key: jax.Array,
    noise: Noise,
    noise_scale: float,
) -> GrowthPlan:
    """The :class:`GrowthPlan` of a replica widening; ``key`` draws the split noise."""
    return GrowthPlan(model, new_model, widening_steps(plan, noise, noise_scale), key=key)


def fresh_plan(
    model: nn.Module,
    new_model: nn.Module,
    growths: tuple[GroupGrowth, ...],
    *,
    key: jax.Array,
    init: Callable[[jax.Array], Variables],
) -> GrowthPlan:
    """The :class:`GrowthPlan` of a fresh widening; ``init(key)`` gives the new units."""
    return GrowthPlan(model, new_model, fresh_steps(growths), key=key, init=init)
