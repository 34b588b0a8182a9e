"""Net2WiderNet and Net2DeeperNet on Flax variable dicts: pure, exact, key-driven.

``widen`` and ``deepen`` map ``(model, variables)`` to ``(new_model, new_variables)`` where
``new_model = model.clone(...)``. Nothing passed in is mutated; randomness comes only from
``key``. Both work under ``jax.jit`` with the module and the size arguments static::

    grow = jax.jit(jnet2net.widen, static_argnames=("model", "widths"))
"""

from __future__ import annotations

import functools
import math
import numbers
import warnings
from typing import Any, Literal, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import FrozenDict

from jnet2net import surgery
from jnet2net.coupling import Member, Path, Role, UnitGroup
from jnet2net.models.common import BN_EPSILON
from jnet2net.models.resnet import LAST_NORM, ResNet
from jnet2net.models.vgg import VGG
from jnet2net.models.vit import ViT
from jnet2net.variables import (
    FlatVariables,
    Variables,
    check_key,
    check_variables,
    flatten,
    path_str,
    unflatten_like,
)

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


# --- widen ---------------------------------------------------------------------------


def _check_family(model: Any) -> None:
    if not isinstance(model, (VGG, ResNet, ViT)):
        raise TypeError(
            f"jnet2net grows VGG, ResNet and ViT modules by size keywords, got "
            f"{type(model).__name__}; for other networks pass target= (the same module "
            "with larger sizes) and example_input=, or compose the ops in jnet2net.surgery"
        )


def _widened_model(
    model: nn.Module,
    widths: tuple[int, ...] | None,
    hidden_widths: tuple[int, ...] | None,
    inner_widths: tuple[int, ...] | None,
    stem_width: int | None,
) -> nn.Module:
    changes: dict[str, Any] = {}
    if widths is not None:
        changes["stage_widths"] = _as_tuple("widths", widths, len(model.stage_widths))
    if hidden_widths is not None:
        if not isinstance(model, VGG):
            raise ValueError("hidden_widths applies to VGG dense heads; ResNet has none")
        changes["hidden_widths"] = _as_tuple(
            "hidden_widths", hidden_widths, len(model.hidden_widths)
        )
    if inner_widths is not None or stem_width is not None:
        if not isinstance(model, ResNet):
            raise ValueError("inner_widths and stem_width apply to ResNet only")
        if inner_widths is not None:
            changes["inner_widths"] = _as_tuple(
                "inner_widths", inner_widths, len(model.stage_widths)
            )
        if stem_width is not None:
            if model.stem_width is None:
                raise ValueError(
                    "this ResNet's stem writes stage 0's stream (stem_width=None): widen it "
                    "with widths[0]"
                )
            changes["stem_width"] = _plain_int(stem_width)
    return model.clone(**changes)


def _plain_int(value: Any) -> Any:
    """``value`` as a Python int when it is an integer (NumPy ints included), else as is."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    return value


def _as_tuple(name: str, values: Any, length: int) -> tuple[int, ...]:
    if not isinstance(values, (tuple, list)):
        raise TypeError(f"{name} must be a tuple of {length} ints, got {values!r}")
    if len(values) != length:
        raise ValueError(
            f"{name} has {len(values)} entries but the model has {length}: {tuple(values)}"
        )
    return tuple(_plain_int(v) for v in values)


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


def _keep_empty_collections(grown: Variables, like: Variables) -> Variables:
    """Adds back the empty collections of ``like`` (e.g. ``batch_stats={}``) that flattening
    drops, so the grown tree has the same top-level keys."""
    missing = {name: jax.tree.map(lambda x: x, like[name]) for name in like if name not in grown}
    if not missing:
        return grown
    return grown.copy(missing) if isinstance(grown, FrozenDict) else {**grown, **missing}


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


def _apply_to_member(
    leaf: jax.Array,
    member: Member,
    grow: GroupMapping,
    noise: Noise,
    noise_scale: float,
    key: jax.Array | None,
) -> jax.Array:
    old_units = grow.counts.shape[0]
    axis = member.axis % leaf.ndim
    shape = leaf.shape
    if member.flattened:  # (positions * units, ...) -> (positions, units, ...)
        leaf = leaf.reshape(
            (*shape[:axis], shape[axis] // old_units, old_units, *shape[axis + 1 :])
        )
        axis += 1
    if leaf.shape[axis] != old_units:
        raise ValueError(
            f"{path_str(member.path)} has {leaf.shape[axis]} units on axis {axis} but group "
            f"{grow.group.name} has {old_units}"
        )
    if member.role == "producer":
        out = surgery.replicate(leaf, grow.mapping, axis)
    elif noise == "split":
        out = surgery.split_among_replicas(
            leaf, grow.mapping, grow.counts, axis, key=key, noise_scale=noise_scale
        )
    else:
        out = surgery.split_among_replicas(leaf, grow.mapping, grow.counts, axis)
        if noise == "paper":
            out = surgery.add_paper_noise(out, key, noise_scale)
    if member.flattened:
        out = out.reshape((*shape[: axis - 1], -1, *shape[axis:]))
    return out


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
    flat = flatten(variables)
    targets = [(grow, m) for grow in plan for m in grow.group.members if m.path in flat]
    consumers = sum(member.role == "consumer" for _, member in targets)
    keys: list[jax.Array | None] = [None] * consumers
    if noise != "none" and consumers:  # one split, not a hash per leaf: compiles fast
        keys = list(jax.random.split(jax.random.key(0) if key is None else key, consumers))
    for grow, member in targets:
        member_key = keys.pop() if member.role == "consumer" else None
        flat[member.path] = _apply_to_member(
            flat[member.path], member, grow, noise, noise_scale, member_key
        )
    return _keep_empty_collections(unflatten_like(flat, variables), variables)


# --- fresh widening: old units in place, new units freshly initialised ----------------


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


class _AxisGrowth(NamedTuple):
    """One grown axis of one leaf (``axis >= 0``)."""

    axis: int
    role: Role
    old: int
    new: int
    flattened: bool


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


def _leaf_growths(
    flat: FlatVariables, growths: tuple[GroupGrowth, ...]
) -> dict[Path, tuple[_AxisGrowth, ...]]:
    """Every leaf of ``flat`` that a grown group touches -> its grown axes."""
    touched: dict[Path, list[_AxisGrowth]] = {}
    for growth in growths:
        for member in growth.group.members:
            if member.path not in flat:
                continue
            ndim = jnp.ndim(flat[member.path])
            axis_growth = _AxisGrowth(
                member.axis % ndim, member.role, growth.old, growth.new, member.flattened
            )
            touched.setdefault(member.path, []).append(axis_growth)
    return {path: tuple(axes) for path, axes in touched.items()}


def _pad_axis(leaf: jax.Array, path: Path, grown: _AxisGrowth) -> jax.Array:
    """Zero-pads the units of ``grown.axis`` from ``old`` to ``new`` (at the end; for a
    flattened axis ``(positions * old,)``, at the end of every position's channels)."""
    shape, axis = leaf.shape, grown.axis
    size = shape[axis]
    positions, remainder = divmod(size, grown.old)
    if remainder or positions == 0 or (not grown.flattened and size != grown.old):
        what = f"a multiple of {grown.old}" if grown.flattened else str(grown.old)
        raise ValueError(
            f"{path_str(path)} of shape {shape} has {size} entries on axis {axis}, but its "
            f"unit group has {grown.old} units (expected {what})"
        )
    split = leaf.reshape((*shape[:axis], positions, grown.old, *shape[axis + 1 :]))
    pad = [(0, 0)] * split.ndim
    pad[axis + 1] = (0, grown.new - grown.old)
    padded = jnp.pad(split, pad)
    return padded.reshape((*shape[:axis], positions * grown.new, *shape[axis + 1 :]))


def _new_units_mask(
    shape: tuple[int, ...], axes: tuple[_AxisGrowth, ...], role: Role
) -> np.ndarray | None:
    """Boolean mask broadcastable to ``shape``: entries on a new unit of some ``role`` axis
    (``None`` when no axis has that role). Static, so a constant under ``jax.jit``."""
    mask = None
    for grown in axes:
        if grown.role != role:
            continue
        index = np.arange(shape[grown.axis])
        if grown.flattened:  # channels-last flatten: unit = index mod channels
            index = index % grown.new
        along = (index >= grown.old).reshape(
            [-1 if a == grown.axis else 1 for a in range(len(shape))]
        )
        mask = along if mask is None else mask | along
    return mask


def embed_widening(variables: Variables, growths: tuple[GroupGrowth, ...]) -> Variables:
    """The old units embedded in the wide shapes, every new entry zero.

    Each grown axis is zero-padded from ``old`` to ``new`` units (a flattened conv->dense
    axis ``(positions * old,)`` becomes ``(positions * new,)``, channel ``c`` of position
    ``p`` at ``p * new + c``). Linear and key-free: with ``variables={'params': moments}`` it
    maps optimizer moments for ``noise='fresh'`` (old units keep theirs, new entries are 0).
    Leaves no grown group touches (or absent from the tree) are kept as they are.

    Args:
      variables: a (possibly partial) variables tree of the narrow network.
      growths: :func:`grown_groups` of the narrow and the wide network.

    Returns:
      The tree with the wide shapes (frozen if ``variables`` was).

    Raises:
      ValueError: a leaf's unit axis does not have its group's old size.
    """
    flat = flatten(variables)
    for path, axes in _leaf_growths(flat, growths).items():
        leaf = flat[path]
        for grown in axes:
            leaf = _pad_axis(leaf, path, grown)
        flat[path] = leaf
    return _keep_empty_collections(unflatten_like(flat, variables), variables)


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
    flat, fresh_flat = flatten(variables), flatten(fresh)
    embedded = flatten(embed_widening(variables, growths))
    for path, axes in _leaf_growths(flat, growths).items():
        leaf = embedded[path]
        if path not in fresh_flat or jnp.shape(fresh_flat[path]) != leaf.shape:
            got = jnp.shape(fresh_flat[path]) if path in fresh_flat else "nothing"
            raise ValueError(
                f"fresh variables hold {got} at {path_str(path)}, the widened leaf has shape "
                f"{leaf.shape} (was fresh made by the wide network's init?)"
            )
        # entries on new consumer units (new_in) are already zero: embedding pads with zeros
        new_out = _new_units_mask(leaf.shape, axes, "producer")
        if new_out is not None:
            leaf = jnp.where(new_out, fresh_flat[path].astype(leaf.dtype), leaf)
        flat[path] = leaf
    return _keep_empty_collections(unflatten_like(flat, variables), variables)


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
    if noise == "paper" and plan:
        warnings.warn(
            "widen(noise='paper') adds noise to consumer weights: the widened network does "
            "not compute exactly the same function",
            stacklevel=stacklevel + 1,
        )
    return apply_widening(variables, plan, key=key, noise=noise, noise_scale=noise_scale)


def _widen_fresh(
    model: nn.Module, new_model: nn.Module, variables: Variables, init_key: jax.Array
) -> Variables:
    """``widen(noise='fresh')``'s variables: ``new_model.init(init_key)`` for new units."""
    growths = grown_groups(model, new_model)
    fresh: Variables = {}
    if growths:
        fresh = new_model.init(init_key, model.example_input(variables), train=False)
    return fresh_widening(variables, fresh, growths)


def widen(
    model: nn.Module,
    variables: Variables,
    *,
    key: jax.Array,
    widths: tuple[int, ...] | None = None,
    hidden_widths: tuple[int, ...] | None = None,
    inner_widths: tuple[int, ...] | None = None,
    stem_width: int | None = None,
    noise: Noise = "split",
    noise_scale: float = 0.1,
    embed_dim: int | None = None,
    mlp_dim: int | None = None,
    num_heads: int | None = None,
    target: nn.Module | None = None,
    example_input: Any = None,
    apply_kwargs: dict[str, Any] | None = None,
) -> tuple[nn.Module, Variables]:
    """Net2WiderNet: a wider network computing the same function.

    Every unit group (a VGG layer, a hidden dense layer, a ResNet stage's residual stream with
    its stem/shortcuts/head input, a block's inner convs) whose size grows replicates random
    units; consumers' incoming weights are split among the replicas. BatchNorm statistics are
    replicated too, so the result is exact in eval *and* train mode.

    Args:
      model: a ``VGG``, ``ResNet`` or ``ViT``.
      variables: ``{'params': ..., 'batch_stats': ...}`` of ``model``.
      key: randomness for the mappings and the noise: ``jax.random.key(seed)`` or a raw
        ``jax.random.PRNGKey(seed)``.
      widths: new ``stage_widths`` (each ``>=`` the old one).
      hidden_widths: new VGG ``hidden_widths``.
      inner_widths: new ResNet ``inner_widths`` (default: they follow ``widths`` when the
        model derives them).
      stem_width: new ResNet ``stem_width`` (only for models with a separate stem width).
      noise: ``'split'`` (default): replicas share the consumer weight unequally
        (``(1 + e) / count`` with zero-sum ``e``), exact and symmetry-breaking; ``'none'``:
        plain ``1 / count``, exact, replicas stay tied under SGD; ``'paper'``: plain split plus
        Gaussian noise on the consumer weights, as in Net2Net -- NOT exact; ``'fresh'``: no
        replicas: old units keep their positions and weights, new units (the last of each
        grown group) get the wide network's own initial incoming weights and BatchNorm
        (``new_model.init``, running mean 0 / var 1) and zero weights to old units (see
        :func:`fresh_widening`), exact in eval and train mode; new units are fully diverse
        and their outgoing weights learn at once (their gradient is not zero).
      noise_scale: std of ``e`` (split) or of the noise relative to the weights (paper); a
        finite number ``>= 0``. Split shares cancel up to float32 rounding that grows with
        the scale: exact (< 1e-5) up to ``MAX_EXACT_SPLIT_SCALE`` (2.0), ~3e-4 at 100.
        Ignored by ``'fresh'``: new units take the initialiser's own scale.
      embed_dim: new ViT embedding width, a multiple of the old one (uniform replication
        keeps its LayerNorms exact); see :mod:`jnet2net.grow_vit`.
      mlp_dim: new ViT MLP width of every block.
      num_heads: new ViT head count of every block (each head keeps its width).
      target: any linen module instead of the width keywords: ``model``'s class with larger
        unit counts. Unit groups are discovered from the computation
        (:func:`jnet2net.couplings`), new sizes read from ``target``'s variable shapes;
        groups averaged over (LayerNorm) grow by uniform replication only. The result is
        checked to compute the same function on random inputs (ValueError if not).
      example_input: with ``target``: an input the module takes (shapes only); presets
        default to their ``example_input``.
      apply_kwargs: with ``target``: keyword arguments of ``model.apply`` for the trace
        (e.g. ``{'train': True, 'mutable': ['batch_stats']}``).

    Returns:
      ``(new_model, new_variables)``.
    """
    if target is not None:
        return _widen_to_target(
            model,
            variables,
            target,
            key=key,
            sugar=(widths, hidden_widths, inner_widths, stem_width, embed_dim, mlp_dim, num_heads),
            noise=noise,
            noise_scale=noise_scale,
            example_input=example_input,
            apply_kwargs=apply_kwargs,
        )
    _check_family(model)
    if noise not in NOISES:
        raise ValueError(f"noise must be one of {NOISES}, got {noise!r}")
    check_key("widen", key)
    check_noise_scale(noise_scale)
    vit_sizes = {"embed_dim": embed_dim, "mlp_dim": mlp_dim, "num_heads": num_heads}
    cnn_sizes = {"widths": widths, "hidden_widths": hidden_widths}
    cnn_sizes.update(inner_widths=inner_widths, stem_width=stem_width)
    from jnet2net import grow_vit  # it builds on this module

    if isinstance(model, ViT):
        grow_vit.reject_sizes(model, cnn_sizes, allowed=grow_vit.WIDEN_SIZES)
        return grow_vit.widen_vit(
            model, variables, key=key, noise=noise, noise_scale=noise_scale, **vit_sizes
        )
    grow_vit.reject_sizes(model, vit_sizes, allowed=tuple(cnn_sizes))
    new_model = _widened_model(model, widths, hidden_widths, inner_widths, stem_width)
    check_variables(model, variables)
    # Two independent keys: the mapping's and the noise's ('fresh': the wide init's; its
    # mapping is the identity on old units and draws nothing).
    map_key, noise_key = jax.random.split(key)
    if noise == "fresh":
        return new_model, _widen_fresh(model, new_model, variables, noise_key)
    plan = widening_plan(model, new_model, map_key)
    new_variables = replicated_widening(
        variables, plan, key=noise_key, noise=noise, noise_scale=noise_scale
    )
    return new_model, new_variables


def _widen_to_target(
    model: nn.Module,
    variables: Variables,
    target: nn.Module,
    *,
    key: jax.Array,
    sugar: tuple[Any, ...],
    noise: Noise,
    noise_scale: float,
    example_input: Any,
    apply_kwargs: dict[str, Any] | None,
) -> tuple[nn.Module, Variables]:
    """``widen(target=...)``: any linen module, by discovered unit groups."""
    from jnet2net.grow_any import widen_to_target  # grow_any builds on this module

    if any(value is not None for value in sugar):
        raise ValueError(
            "widen takes either target= or the width keywords (widths, hidden_widths, "
            "inner_widths, stem_width, embed_dim, mlp_dim, num_heads), not both"
        )
    if not isinstance(target, nn.Module):
        raise TypeError(f"target must be a flax linen module, got {type(target).__name__}")
    if noise not in NOISES:
        raise ValueError(f"noise must be one of {NOISES}, got {noise!r}")
    check_key("widen", key)
    check_noise_scale(noise_scale)
    if example_input is None and isinstance(model, (VGG, ResNet, ViT)):
        example_input = model.example_input(variables)
    return widen_to_target(
        model,
        variables,
        target,
        key=key,
        example_input=example_input,
        apply_kwargs=apply_kwargs,
        noise=noise,
        noise_scale=noise_scale,
    )


# --- deepen --------------------------------------------------------------------------


def _depth_changes(
    model: nn.Module, depths: tuple[int, ...] | None, hidden_depths: int | None
) -> dict[str, Any]:
    """Validated field changes; ``hidden_depths`` is resolved into widths by the caller."""
    changes: dict[str, Any] = {}
    if depths is not None:
        depths = _as_tuple("depths", depths, len(model.stage_depths))
        for s, (old, new) in enumerate(zip(model.stage_depths, depths, strict=True)):
            if isinstance(new, bool) or not isinstance(new, int):
                raise TypeError(f"depths must hold ints, got {depths}")
            if new <= 0:
                raise ValueError(f"depths must be positive ints, got {depths}")
            if new < old:
                raise ValueError(
                    f"deepen cannot remove layers: stage {s} would go from {old} to {new}; use "
                    "jnet2net.transfer to make a network shallower"
                )
        changes["stage_depths"] = depths
    if hidden_depths is not None:
        if not isinstance(model, VGG):
            raise ValueError("hidden_depths applies to VGG dense heads; ResNet has none")
        old = len(model.hidden_widths)
        hidden_depths = _plain_int(hidden_depths)
        if isinstance(hidden_depths, bool) or not isinstance(hidden_depths, int):
            raise TypeError(f"hidden_depths must be an int, got {hidden_depths!r}")
        if hidden_depths < old:
            raise ValueError(
                f"deepen cannot remove hidden dense layers: {old} -> {hidden_depths}; use "
                "jnet2net.transfer"
            )
        changes["hidden_depths"] = hidden_depths
    return changes


def _vgg_new_leaf(model: VGG, path: tuple[str, ...], leaf: jax.Array) -> jax.Array:
    """Identity value of a leaf of an inserted VGG layer (BatchNorm: mean 0, var 1)."""
    layer, last = path[1], path[-1]
    if last == "kernel" and layer.startswith("hidden"):
        return surgery.identity_dense_kernel(leaf.shape[0], leaf.dtype)
    if last == "kernel":
        if model.kernel_size % 2 == 0:
            raise ValueError(
                f"deepen cannot insert an identity conv at {path_str(path)} with kernel shape "
                f"{leaf.shape}: VGG.kernel_size={model.kernel_size} is even, so the kernel has "
                "no centre tap"
            )
        return surgery.identity_conv_kernel(model.kernel_size, leaf.shape[-1], leaf.dtype)
    if path[-2] == "bn":
        channels = leaf.shape[0]
        norm = surgery.identity_batch_norm(jnp.zeros(channels), jnp.ones(channels), BN_EPSILON)
        return norm[last].astype(leaf.dtype)
    return jnp.zeros_like(leaf)  # biases


def _check_calibration_batch(model: nn.Module, variables: Variables, batch: Any) -> jax.Array:
    """``batch`` as an array; ValueError unless ``model`` runs on it with ``variables``."""
    batch = jnp.asarray(batch)
    if batch.ndim != 4:
        raise ValueError(f"calibration_batch must be images (n, h, w, c), got {batch.shape}")
    try:
        jax.eval_shape(functools.partial(model.apply, train=False), variables, batch)
    except flax.errors.FlaxError as err:
        raise ValueError(
            f"calibration_batch of shape {batch.shape} does not fit {type(model).__name__}: {err}"
        ) from None
    return batch


def _calibrate_norms(
    model: VGG, flat: FlatVariables, new_layers: set[str], batch: jax.Array, like: Variables
) -> FlatVariables:
    """Sets inserted BatchNorms to identity at the statistics of ``batch`` at their input."""
    variables = unflatten_like(flat, like)
    _, state = model.apply(
        {name: variables[name] for name in ("params", "batch_stats")},
        batch,
        capture_intermediates=lambda mdl, method: method == "__call__" and isinstance(mdl, nn.Conv),
        mutable=["intermediates"],
    )
    captured = state["intermediates"]
    flat = dict(flat)
    for layer in new_layers:
        if layer not in captured:
            continue
        (activation,) = captured[layer]["conv"]["__call__"]
        activation = activation.astype(jnp.float32)
        mean = jnp.mean(activation, axis=(0, 1, 2))
        var = jnp.var(activation, axis=(0, 1, 2))
        for name, value in surgery.identity_batch_norm(mean, var, BN_EPSILON).items():
            collection = "batch_stats" if name in ("mean", "var") else "params"
            flat[(collection, layer, "bn", name)] = value
    return flat


def deepen(
    model: nn.Module,
    variables: Variables,
    *,
    depths: tuple[int, ...] | None = None,
    hidden_depths: int | None = None,
    key: jax.Array | None = None,
    calibration_batch: jax.Array | None = None,
    depth: int | None = None,
    target: nn.Module | None = None,
    example_input: Any = None,
    rules: Any = None,
    apply_kwargs: dict[str, Any] | None = None,
) -> tuple[nn.Module, Variables]:
    """Net2DeeperNet: a deeper network computing the same function.

    New layers are appended at the end of each stage (names of existing layers never change):

    * VGG: identity conv (delta kernel) + identity BatchNorm + ReLU, exact because its input
      is already a ReLU output. The BatchNorm is the identity in eval mode; it stores
      ``mean=0, var=1`` or, given ``calibration_batch``, the statistics of its input on that
      batch (then train mode is close to the identity too). Without BatchNorm it is exact in
      both modes. ``hidden_depths`` appends identity Dense layers to the head.
    * ResNet: new blocks (identity shortcut, weights drawn from ``key``) whose last
      BatchNorm scale is zero: the block adds nothing, exact in eval and train mode.
    * ViT (``depth``): new blocks after the last one whose ``out`` and ``mlp_out`` are zero
      (:func:`jnet2net.grow_vit.deepen_vit`).

    Args:
      model: a ``VGG``, ``ResNet`` or ``ViT``.
      variables: ``{'params': ..., 'batch_stats': ...}`` of ``model``.
      depths: new ``stage_depths`` (each ``>=`` the old one).
      hidden_depths: new number of VGG hidden dense layers; the new ones take the width of
        the last hidden layer (or of the flattened features).
      key: randomness for new ResNet blocks (required there).
      calibration_batch: images ``(n, h, w, c)`` to calibrate inserted VGG BatchNorms
        (ValueError when ``model`` does not run on them).
      depth: new number of ViT blocks.
      target: any linen module instead of ``depths``: ``model``'s class with more layers
        (every old variable path kept with its shape; name new layers explicitly). Its new
        leaves start from ``target.init(key)`` and are set by ``rules``; the result is
        checked to compute ``model``'s function (ValueError naming the new paths if not).
      example_input: with ``target``: an input the module takes (presets: their own).
      rules: with ``target``: ``[(regex, initialiser), ...]`` matched (``re.search``)
        against ``'params/layer/kernel'``-style paths of new leaves, first match wins;
        initialisers ``'identity'`` (square dense kernel, odd conv delta kernel, norm scale
        ``sqrt(1 + 1e-5)``), ``'zeros'``, ``'ones'``, ``'fresh'`` (the default for leaves
        no rule matches) or ``f(path, fresh_leaf) -> array``. ``None``: new layers as
        identities (``jnet2net.grow_any.PLAIN_RULES``), else as residual branches whose last
        norm scale (or last kernel) is zero -- whichever is exact.
      apply_kwargs: with ``target``: keyword arguments of ``model.apply`` for the check.

    Returns:
      ``(new_model, new_variables)``.
    """
    if target is not None:
        from jnet2net.grow_any import deepen_to_target  # grow_any builds on this module

        if any(v is not None for v in (depths, hidden_depths, depth, calibration_batch)):
            raise ValueError(
                "deepen takes either target= or depths/hidden_depths/depth/calibration_batch"
            )
        check_key("deepen", key)
        if example_input is None and isinstance(model, (VGG, ResNet, ViT)):
            example_input = model.example_input(variables)
        return deepen_to_target(
            model,
            variables,
            target,
            key=key,
            example_input=example_input,
            rules=rules,
            apply_kwargs=apply_kwargs,
        )
    _check_family(model)
    if key is not None:
        check_key("deepen", key)
    cnn_sizes = {"depths": depths, "hidden_depths": hidden_depths}
    from jnet2net import grow_vit  # it builds on this module

    if isinstance(model, ViT):
        grow_vit.reject_sizes(
            model,
            {**cnn_sizes, "calibration_batch": calibration_batch},
            allowed=grow_vit.DEEPEN_SIZES,
        )
        return grow_vit.deepen_vit(model, variables, depth=depth, key=key)
    grow_vit.reject_sizes(model, {"depth": depth}, allowed=tuple(cnn_sizes))
    changes = _depth_changes(model, depths, hidden_depths)
    check_variables(model, variables)
    if calibration_batch is not None:
        calibration_batch = _check_calibration_batch(model, variables, calibration_batch)
    old = flatten(variables)
    extra_hidden = changes.pop("hidden_depths", len(getattr(model, "hidden_widths", ())))
    if isinstance(model, VGG) and extra_hidden > len(model.hidden_widths):
        dense = "hidden0" if model.hidden_widths else "head"
        width = (
            model.hidden_widths[-1]
            if model.hidden_widths
            else old[("params", dense, "kernel")].shape[0]
        )
        changes["hidden_widths"] = model.hidden_widths + (width,) * (
            extra_hidden - len(model.hidden_widths)
        )
    new_model = model.clone(**changes)
    if isinstance(model, ResNet) and key is None and new_model.stage_depths != model.stage_depths:
        raise ValueError(
            "deepen draws the weights of new ResNet blocks at random: pass key=jax.random.key(...)"
        )
    example = model.example_input(variables)
    fresh = flatten(new_model.init(jax.random.key(0) if key is None else key, example))
    new_flat: FlatVariables = {}
    new_layers: set[str] = set()
    for path, leaf in fresh.items():
        if path in old:
            new_flat[path] = old[path]
            continue
        new_layers.add(path[1])
        if isinstance(model, VGG):
            new_flat[path] = _vgg_new_leaf(model, path, leaf)
        elif path[-2] == LAST_NORM[model.block] and path[-1] == "scale":
            new_flat[path] = jnp.zeros_like(leaf)
        else:
            new_flat[path] = leaf
    for path, leaf in old.items():  # other collections pass through unchanged
        if path[0] not in ("params", "batch_stats"):
            new_flat[path] = leaf
    if calibration_batch is not None and isinstance(model, VGG) and model.batch_norm:
        new_flat = _calibrate_norms(new_model, new_flat, new_layers, calibration_batch, variables)
    return new_model, _keep_empty_collections(unflatten_like(new_flat, variables), variables)
