"""``transfer``: reuse the weights of a VGG, ResNet or ViT in a similar, not identical, one.

A transfer is a :class:`TransferPlan` applied to the source variables. The plan goes through
an *intermediate* network: the source's widths, kernel size and classes with the
destination's depths.

1. Depth (layer by layer, per stage): each intermediate layer copies a source layer
   (:func:`~jnet2net.reuse.layout.stage_slots` says which), repeats one (``fill='repeat'``)
   or is new: a VGG identity conv/BatchNorm (dense: identity Dense) or a ResNet block from
   the destination's initialisation with its last BatchNorm scale zero, as
   ``jnet2net.deepen`` makes them. Dropped VGG hidden Dense layers are multiplied into the
   next kept one (the ReLU between them ignored).
2. Width (per unit group of ``model.unit_groups()``, so residual streams stay consistent):
   wider groups replicate units and split their consumers (Net2Net, via
   ``jnet2net.grow.apply_widening``); narrower groups keep the units with the largest
   producer-kernel norm and fold each dropped unit's outgoing weights into the kept unit
   whose producer weights are most similar (``surgery.select_units`` /
   ``surgery.fold_dropped_units``). An identity layer follows the group that feeds it, so it
   stays an identity. Exact replicas (a group widened with ``noise='none'``) fold back into
   their originals exactly; replicas made with ``noise='split'`` have different incoming
   weights and count as distinct units.
3. Shapes: conv kernels are centre-padded or centre-cropped to the destination's size
   (``surgery.resize_kernel``); the head keeps the columns of the classes both networks
   have (class ``i`` is class ``i``) and takes the others from the destination's
   initialisation.

A ViT goes through the same passes, its blocks as one stage and its stream, heads and MLP
units as unit groups (the stream uniformly when the new width is a multiple), with
``head_dim`` padded or cropped after the groups (:mod:`jnet2net.reuse.vit`).

The same plan maps any params-shaped tree (:meth:`TransferPlan.map_params`), e.g. optimizer
moments: linear, without noise, new entries zero.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from flax.core import FrozenDict, freeze, unfreeze

from jnet2net import surgery
from jnet2net.coupling import Member, UnitGroup
from jnet2net.grow import (
    MAX_EXACT_SPLIT_SCALE,
    REPLICA_NOISES,
    GroupMapping,
    Noise,
    apply_widening,
    check_noise_scale,
)
from jnet2net.models import VGG, ViT
from jnet2net.models.common import BN_EPSILON, compute_dtype
from jnet2net.models.resnet import LAST_NORM
from jnet2net.reuse.layout import (
    DEPTH_MAPS,
    FILLS,
    SHRINKS,
    DepthMap,
    Fill,
    Shrink,
    check_option,
    check_pair,
    describe,
    stage_slots,
)
from jnet2net.reuse.report import LeafReport, Status, TransferReport
from jnet2net.reuse.vit import (
    POS_EMBED,
    check_vit_input,
    grid_changes,
    grid_note,
    head_dim_note,
    resize_grid,
    resize_head_dim,
    vit_changes,
    vit_layout,
    zero_leaves,
)
from jnet2net.variables import (
    FlatVariables,
    Variables,
    abstract_variables,
    check_key,
    check_variables,
    flatten,
    path_str,
    unflatten_like,
)

Path = tuple[str, ...]
Mode = Literal["values", "moments"]
LayerKind = Literal["copy", "repeat", "identity", "zero_block", "composed"]


class LayerSource(NamedTuple):
    """Where one layer of the intermediate (and destination) network comes from.

    Attributes:
      kind: ``'copy'`` (source layer ``source``, possibly moved to another slot),
        ``'repeat'`` (a copy of source layer ``source`` filling a gap), ``'identity'`` (a VGG
        identity layer), ``'zero_block'`` (a ResNet block from the destination's
        initialisation, last BatchNorm scale zero) or ``'composed'`` (Dense ``source``
        multiplied with the dropped Dense layers ``folded`` before it).
      source: the source layer's name.
      folded: dropped source layers composed into this one, input first.
    """

    kind: LayerKind
    source: str | None = None
    folded: tuple[str, ...] = ()


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


@dataclasses.dataclass(frozen=True, eq=False)
class TransferPlan:
    """A transfer from ``src_model`` to ``dst_model``, fixed by the source weights and a key.

    Attributes:
      src_model: the source module.
      dst_model: the destination module.
      mid_model: the intermediate module (source widths, destination depths).
      layout: ``{layer name: LayerSource}`` for every layer of ``mid_model`` (and of
        ``dst_model``, which has the same layer names).
      group_ops: one :class:`GroupOp` per unit group that changes size.
      input_shape: ``(1, h, w, c)`` example input both networks were traced with.
      noise: how widened consumers are split (as in ``jnet2net.widen``).
      noise_scale: scale of that noise.
      noise_key: key of that noise.
      src_shapes: flat shapes of the source variables.
      mid_shapes: flat shapes of the intermediate variables.
      dst_shapes: flat shapes of the destination variables.
      variables: the destination variables.
      report: the :class:`~jnet2net.reuse.report.TransferReport`.
    """

    src_model: nn.Module
    dst_model: nn.Module
    mid_model: nn.Module
    layout: Mapping[str, LayerSource]
    group_ops: tuple[GroupOp, ...]
    input_shape: tuple[int, ...]
    noise: Noise
    noise_scale: float
    noise_key: jax.Array | None
    src_shapes: FlatVariables
    mid_shapes: FlatVariables
    dst_shapes: FlatVariables
    variables: Variables = None
    report: TransferReport | None = None
    _compiled: dict[Any, Any] = dataclasses.field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def map_params(self, params: Any) -> Any:
        """Maps a tree shaped like the source's ``params`` the way the params were mapped.

        For optimizer moments (``optax.tree_map_params``): replicated units get copies,
        split consumers the same ``1 / count`` shares (no noise), folded units their sum,
        kernels are padded/cropped, and every value the source does not provide (identity
        layers, new blocks, new classes, composed Dense layers) is zero. The map is linear.

        Args:
          params: a tree with the paths and shapes of the source's ``params``.

        Returns:
          A tree with the paths and shapes of the destination's ``params``, of the input's
          dtype; frozen if the input was.

        Raises:
          ValueError: a leaf is missing, unexpected or has another shape (naming its path).
        """
        frozen = isinstance(params, FrozenDict)
        flat = flatten({"params": unfreeze(params) if frozen else params})
        for path, leaf in flat.items():
            expected = self.src_shapes.get(path)
            if expected is None or getattr(leaf, "shape", None) != expected.shape:
                found = "has no such leaf" if expected is None else f"has {expected.shape}"
                raise ValueError(
                    f"map_params needs a tree shaped like the source's params: "
                    f"{path_str(path)} has shape {getattr(leaf, 'shape', None)}, the source "
                    f"{found}"
                )
        missing = [p for p in self.src_shapes if p[0] == "params" and p not in flat]
        if missing:
            raise ValueError(
                f"map_params needs a tree shaped like the source's params: "
                f"{path_str(missing[0])} is missing"
            )
        dtype = jnp.result_type(*flat.values())
        if dtype not in self._compiled:  # one compiled program per dtype (mu, nu share it)
            self._compiled[dtype] = jax.jit(lambda src: _run(self, src, "moments", dtype))
        out = traverse_util.unflatten_dict(self._compiled[dtype](flat))["params"]
        return freeze(out) if frozen else out


# --- the intermediate network's layers --------------------------------------------------


def _layer_name(model: nn.Module, stage: int, index: int) -> str:
    return f"stage{stage}_layer{index}" if isinstance(model, VGG) else f"stage{stage}_block{index}"


def _layout(
    src: nn.Module,
    dst: nn.Module,
    src_flat: FlatVariables,
    depth_map: DepthMap,
    shrink: Shrink,
) -> tuple[nn.Module, dict[str, LayerSource | None], list[list[str]], list[str]]:
    """The intermediate module, its layers' sources (``None``: a gap), stages, changes."""
    if isinstance(src, ViT):
        mid, names, stages, changes = vit_layout(src, dst, depth_map, shrink)
        sources = {k: None if v is None else LayerSource("copy", v) for k, v in names.items()}
        return mid, sources, stages, changes
    layout: dict[str, LayerSource | None] = {}
    stages: list[list[str]] = []
    changes: list[str] = []
    if not isinstance(src, VGG):
        layout["stem"] = LayerSource("copy", "stem")
    for s, (n, m) in enumerate(zip(src.stage_depths, dst.stage_depths, strict=True)):
        slots = stage_slots(n, m, depth_map=depth_map, shrink=shrink)
        names = [_layer_name(src, s, k) for k in range(m)]
        for name, j in zip(names, slots, strict=True):
            layout[name] = None if j is None else LayerSource("copy", _layer_name(src, s, j))
        stages.append(names)
        if m < n:
            dropped = [_layer_name(src, s, j) for j in range(n) if j not in slots]
            changes.append(
                f"stage {s}: {n} -> {m} layers (shrink={shrink!r}): dropped {', '.join(dropped)}"
            )
    if not isinstance(src, VGG):
        layout["head"] = LayerSource("copy", "head")
        return src.clone(stage_depths=dst.stage_depths), layout, stages, changes
    hidden = _vgg_dense_layout(src, dst, src_flat, depth_map, shrink, layout, changes)
    mid = src.clone(stage_depths=dst.stage_depths, hidden_widths=hidden)
    return mid, layout, stages, changes


def _vgg_dense_layout(
    src: VGG,
    dst: VGG,
    src_flat: FlatVariables,
    depth_map: DepthMap,
    shrink: Shrink,
    layout: dict[str, LayerSource | None],
    changes: list[str],
) -> tuple[int, ...]:
    """Fills ``layout`` for the hidden Dense layers and the head; returns their widths."""
    n, m = len(src.hidden_widths), len(dst.hidden_widths)
    features = src_flat[("params", "hidden0" if n else "head", "kernel")].shape[0]
    widths: list[int] = []
    if m >= n:  # new hidden layers are identities of the width before them
        for k, j in enumerate(stage_slots(n, m, depth_map=depth_map)):
            if j is None:
                layout[f"hidden{k}"] = LayerSource("identity")
                widths.append(widths[-1] if widths else features)
            else:
                layout[f"hidden{k}"] = LayerSource("copy", f"hidden{j}")
                widths.append(src.hidden_widths[j])
        layout["head"] = LayerSource("copy", "head")
        return tuple(widths)
    kept = stage_slots(n, m, shrink=shrink)
    previous = -1
    for k, j in enumerate((*kept, n)):
        folded = tuple(f"hidden{i}" for i in range(previous + 1, j))
        name, source = (f"hidden{k}", f"hidden{j}") if j < n else ("head", "head")
        layout[name] = LayerSource("composed" if folded else "copy", source, folded)
        if folded:
            changes.append(
                f"dense head: {n} -> {m} hidden layers (shrink={shrink!r}): "
                f"{', '.join(folded)} multiplied into {source}, the ReLU between them ignored"
            )
        if j < n:
            widths.append(src.hidden_widths[j])
        previous = j
    return tuple(widths)


def _layer_shapes(flat: FlatVariables, layer: str) -> dict[Path, tuple[int, ...]]:
    return {(p[0], *p[2:]): tuple(v.shape) for p, v in flat.items() if p[1] == layer}


def _fill_gaps(
    src: nn.Module,
    layout: dict[str, LayerSource | None],
    stages: list[list[str]],
    src_flat: FlatVariables,
    mid_shapes: FlatVariables,
    fill: Fill,
    changes: list[str],
) -> dict[str, LayerSource]:
    """Resolves every gap: a repeat of the nearest fitting source layer, or a new layer.

    ``'repeat'`` copies the nearest earlier source layer of the stage whose variables have
    the gap's shapes, else the nearest later one, else makes a new layer.
    """
    new_kind: LayerKind = "identity" if isinstance(src, VGG) else "zero_block"
    for s, names in enumerate(stages):
        repeats = []
        for k, name in enumerate(names):
            if layout[name] is not None:
                continue
            layout[name] = LayerSource(new_kind)
            if fill != "repeat":
                continue
            gap_shapes = _layer_shapes(mid_shapes, name)
            fits = [
                (k2, layout[other].source)
                for k2, other in enumerate(names)
                if layout[other] is not None
                and layout[other].kind == "copy"
                and _layer_shapes(src_flat, layout[other].source) == gap_shapes
            ]
            before = [f for f in fits if f[0] < k]
            after = [f for f in fits if f[0] > k]
            if before or after:
                source = before[-1][1] if before else after[0][1]
                layout[name] = LayerSource("repeat", source)
                repeats.append(f"{name} repeats {source}")
        if repeats:
            changes.append(f"stage {s} (fill='repeat'): {', '.join(repeats)}")
    identities = [name for name, source in layout.items() if source.kind == "identity"]
    convs = [name for name in identities if not name.startswith("hidden")]
    if convs and src.kernel_size % 2 == 0:
        fix = (
            "no layer of the stage has their shapes to repeat; use an odd kernel size"
            if fill == "repeat"
            else "use fill='repeat' or an odd kernel size"
        )
        raise ValueError(
            f"cannot insert identity layers {', '.join(convs)} into {describe(src)}: "
            f"kernel_size={src.kernel_size} is even, so a conv kernel has no centre tap; {fix}"
        )
    return layout


# --- the three passes: assemble, group operations, finish ---------------------------------


def _identity_leaf(path: Path, shape: tuple[int, ...]) -> jax.Array:
    """A leaf of a VGG identity layer: delta conv / identity Dense, identity BatchNorm."""
    name = path[-1]
    if len(path) > 2 and path[-2] == "bn":
        channels = shape[0]
        norm = surgery.identity_batch_norm(jnp.zeros(channels), jnp.ones(channels), BN_EPSILON)
        return norm[name]
    if name == "kernel" and len(shape) == 4:
        return surgery.identity_conv_kernel(shape[:2], shape[-1])
    if name == "kernel":
        return surgery.identity_dense_kernel(shape[0])
    return jnp.zeros(shape, jnp.float32)


def _composed_leaf(src_flat: FlatVariables, source: LayerSource, name: str) -> jax.Array:
    """Kernel or bias of ``x -> (...(x W_a + b_a) W_b + b_b ...)`` over the folded layers."""
    chain = (*source.folded, source.source)
    kernel = src_flat[("params", chain[0], "kernel")]
    bias = src_flat[("params", chain[0], "bias")]
    for layer in chain[1:]:
        next_kernel = src_flat[("params", layer, "kernel")]
        kernel = jnp.matmul(kernel, next_kernel, precision=jax.lax.Precision.HIGHEST)
        bias = jnp.matmul(bias, next_kernel, precision=jax.lax.Precision.HIGHEST)
        bias = bias + src_flat[("params", layer, "bias")]
    return kernel if name == "kernel" else bias


def _collections(mode: Mode) -> tuple[str, ...]:
    return ("params",) if mode == "moments" else ("params", "batch_stats")


def _assemble(
    plan: TransferPlan, src_flat: FlatVariables, mode: Mode, dtype: Any = jnp.float32
) -> FlatVariables:
    """The intermediate network's leaves (new ResNet blocks are left out).

    ``mode='moments'``: identity layers and composed Dense layers are zeros of ``dtype``.
    """
    mid: FlatVariables = {}
    for path, shape in plan.mid_shapes.items():
        if path[0] not in _collections(mode):
            continue
        source = plan.layout[path[1]]
        if source.kind in ("copy", "repeat"):
            mid[path] = src_flat[(path[0], source.source, *path[2:])]
        elif source.kind in ("identity", "composed") and mode == "moments":
            mid[path] = jnp.zeros(shape.shape, dtype)
        elif source.kind == "identity":
            mid[path] = _identity_leaf(path, tuple(shape.shape))
        elif source.kind == "composed":
            mid[path] = _composed_leaf(src_flat, source, path[-1])
    return mid


def _narrow_member(leaf: jax.Array, member: Member, op: GroupOp) -> jax.Array:
    """Keeps ``op.kept`` units of a producer, folds a consumer's units into them."""
    axis = member.axis % leaf.ndim
    shape = leaf.shape
    if member.flattened:  # (positions * units, ...) -> (positions, units, ...)
        leaf = leaf.reshape((*shape[:axis], shape[axis] // op.old, op.old, *shape[axis + 1 :]))
        axis += 1
    if leaf.shape[axis] != op.old:
        raise ValueError(
            f"{path_str(member.path)} has {leaf.shape[axis]} units on axis {axis} but group "
            f"{op.group.name} has {op.old}"
        )
    if member.role == "producer":
        out = jnp.take(leaf, op.kept, axis=axis)
    else:
        out = surgery.fold_dropped_units(leaf, op.assignment, op.new, axis)
    if member.flattened:
        out = out.reshape((*shape[: axis - 1], -1, *shape[axis:]))
    return out


def _apply_group_ops(plan: TransferPlan, mid: FlatVariables, mode: Mode) -> FlatVariables:
    """Widens and narrows every unit group; split noise only on the values."""
    widenings = tuple(
        GroupMapping(op.group, op.mapping, op.counts) for op in plan.group_ops if op.widens
    )
    if widenings:
        noise = plan.noise if mode == "values" else "none"
        grown = apply_widening(
            traverse_util.unflatten_dict(mid),
            widenings,
            key=plan.noise_key,
            noise=noise,
            noise_scale=plan.noise_scale if noise != "none" else 0.0,
        )
        mid = flatten(grown)
    out = dict(mid)
    for op in plan.group_ops:
        if op.widens:
            continue
        for member in op.group.members:
            if member.path in out:
                out[member.path] = _narrow_member(out[member.path], member, op)
    return out


def _finish(
    plan: TransferPlan, mid: FlatVariables, mode: Mode, dtype: Any, fresh: FlatVariables
) -> FlatVariables:
    """Destination leaves: kernels resized, head classes matched, the rest from ``fresh``.

    ``mode='values'``: every leaf has the dtype ``dst_model.init`` gives it (a ``bfloat16``
    source is cast up). ``mode='moments'``: what ``fresh`` would give is zero, and every leaf
    is cast to ``dtype``.
    """
    shared = min(plan.src_model.num_classes, plan.dst_model.num_classes)
    out: FlatVariables = {}
    for path, target in plan.dst_shapes.items():
        if path[0] not in _collections(mode):
            continue
        base = fresh.get(path) if mode == "values" else jnp.zeros(target.shape, dtype)
        value = mid.get(path)
        if value is None:
            out[path] = base
            continue
        if path[1] == "head" and value.shape[-1] != target.shape[-1]:
            if value.shape[-1] < target.shape[-1]:
                value = base.at[..., :shared].set(value.astype(base.dtype))
            else:
                value = value[..., :shared]
        if value.ndim == 4 and value.shape[:2] != target.shape[:2]:
            value = surgery.resize_kernel(value, target.shape[:2])
        if value.shape != target.shape:
            raise ValueError(
                f"transfer made {path_str(path)} with shape {value.shape} but "
                f"{describe(plan.dst_model)} needs {target.shape}"
            )
        out[path] = value.astype(dtype if mode == "moments" else target.dtype)
    return out


def _run(plan: TransferPlan, src_flat: FlatVariables, mode: Mode, dtype: Any) -> FlatVariables:
    """Moments (or any params-shaped tree) through the plan; traced under ``jax.jit``."""
    mid = _assemble(plan, src_flat, mode, dtype)
    return _finish(
        plan, _resized_heads(plan, _apply_group_ops(plan, mid, mode), mode), mode, dtype, {}
    )


def _resized_heads(plan: TransferPlan, mid: FlatVariables, mode: Mode) -> FlatVariables:
    """A ViT's attention leaves at the destination's ``head_dim``, its patch and position
    embeddings at its patch size and token grid (others unchanged)."""
    if not isinstance(plan.src_model, ViT):
        return mid
    mid = resize_head_dim(mid, plan.src_model, plan.dst_model, rescale=mode == "values")
    return resize_grid(
        mid, plan.src_model, plan.dst_model, plan.input_shape, values=mode == "values"
    )


# --- group operations ----------------------------------------------------------------------


def _group_specs(
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


def _producer_rows(group: UnitGroup, values: FlatVariables, units: int) -> jax.Array:
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


def _group_ops(
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
            kept, assignment = surgery.select_units(_producer_rows(group, values, old), 0, new)
            ops[group.name] = GroupOp(group, old, new, kept=kept, assignment=assignment)
    return tuple(ops.values())


_OP_ARRAYS = ("mapping", "counts", "kept", "assignment")


def _op_arrays(ops: tuple[GroupOp, ...]) -> tuple[tuple[jax.Array | None, ...], ...]:
    return tuple(tuple(getattr(op, name) for name in _OP_ARRAYS) for op in ops)


def _with_arrays(
    ops: tuple[GroupOp, ...], arrays: tuple[tuple[jax.Array | None, ...], ...]
) -> tuple[GroupOp, ...]:
    return tuple(
        op._replace(**dict(zip(_OP_ARRAYS, values, strict=True)))
        for op, values in zip(ops, arrays, strict=True)
    )


def _cnn_changes(src: nn.Module, dst: nn.Module) -> list[str]:
    """Kernel size and stem changes of a VGG or ResNet transfer that alter the function."""
    changes = []
    k_src, k_dst = src.kernel_size, dst.kernel_size
    odd_pad = k_dst > k_src and k_src % 2 == 1 and k_dst % 2 == 1
    # A stride-2 'SAME' conv on an even size reads pixel 2i with a 1x1 kernel but centres a
    # larger odd kernel on 2i + 1: ResNets stride their first block of every stage past 0.
    strided_1x1 = odd_pad and k_src == 1 and not isinstance(src, VGG) and len(src.stage_depths) > 1
    if k_src != k_dst and (not odd_pad or strided_1x1):
        how = "centre-cropped" if k_dst < k_src else "padded off-centre (an even size)"
        if strided_1x1:
            how = "padded, but a strided conv's centre tap moves from pixel 2i to 2i + 1"
        changes.append(f"kernel_size {k_src} -> {k_dst}: kernels {how}")
    if getattr(src, "stem", None) != getattr(dst, "stem", None):
        changes.append(
            f"stem {src.stem!r} -> {dst.stem!r}: the stem conv is resized, its stride and "
            "pooling differ"
        )
    return changes


def _model_changes(
    src: nn.Module, dst: nn.Module, noise: Noise, noise_scale: float, widens: bool
) -> list[str]:
    """Changes of kernel size, stem (ViT: sizes), classes, noise and dtype that alter the
    function."""
    changes = vit_changes(src, dst) if isinstance(src, ViT) else _cnn_changes(src, dst)
    if src.num_classes != dst.num_classes:
        shared = min(src.num_classes, dst.num_classes)
        changes.append(
            f"num_classes {src.num_classes} -> {dst.num_classes}: the head keeps the first "
            f"{shared} classes' columns"
            + (", the other classes are initialised" if dst.num_classes > shared else "")
        )
    if noise == "paper" and widens:
        changes.append("noise='paper' adds noise to the split consumer weights")
    if noise == "split" and widens and noise_scale > MAX_EXACT_SPLIT_SCALE:
        changes.append(
            f"noise='split' with noise_scale={float(noise_scale)!r} > {MAX_EXACT_SPLIT_SCALE}: "
            "the replicas' shares are large and of both signs, so float32 rounding can exceed "
            "1e-5"
        )
    src_dtype, dst_dtype = compute_dtype(src), compute_dtype(dst)
    if src_dtype != dst_dtype:
        changes.append(
            f"dtype {src_dtype.name} -> {dst_dtype.name}: the destination computes at another "
            "precision"
        )
    return changes


def _zero_block_leaves(dst: nn.Module, layer: str) -> list[Path]:
    """The leaves of new block ``layer`` that are zero: a ResNet's last BatchNorm scale, a
    ViT's ``out`` and ``mlp_out`` kernels and biases."""
    if isinstance(dst, ViT):
        return zero_leaves(layer)
    return [("params", layer, LAST_NORM[dst.block], "scale")]


# --- the report ----------------------------------------------------------------------------


def _leaf_rows(plan: TransferPlan) -> tuple[LeafReport, ...]:
    """One row per destination leaf; fractions follow from the shapes."""
    members: dict[Path, list[tuple[GroupOp, Member]]] = {}
    for op in plan.group_ops:
        for member in op.group.members:
            members.setdefault(member.path, []).append((op, member))
    zeros = {
        path
        for layer, source in plan.layout.items()
        if source.kind == "zero_block"
        for path in _zero_block_leaves(plan.dst_model, layer)
    }
    rows = []
    for path, target in plan.dst_shapes.items():
        source = plan.layout[path[1]]
        notes: list[str] = []
        src_path = None
        if source.kind in ("copy", "repeat", "composed"):
            src_path = path_str((path[0], source.source, *path[2:]))
        if source.kind == "repeat":
            notes.append("repeated layer")
        elif source.kind == "identity":
            notes.append("identity layer")
        elif source.kind == "zero_block":
            zero = path in zeros
            what = "scale" if path[-1] == "scale" else path[-1]
            notes.append("new block" + (f", {what} 0: the block adds nothing" if zero else ""))
        elif source.kind == "composed":
            notes.append(f"multiplied with {', '.join(source.folded)}")
        changed = source.kind == "composed"
        fraction = 0.0 if src_path is None else 1.0
        if source.kind != "zero_block":
            for op, member in members.get(path, ()):
                changed = True
                verb = {
                    (True, "producer"): "replicated",
                    (True, "consumer"): "split among replicas",
                    (False, "producer"): "kept the largest",
                    (False, "consumer"): "dropped units folded in",
                }[(op.widens, member.role)]
                notes.append(f"{op.group.name} {op.old} -> {op.new}: {verb}")
            mid_shape = plan.mid_shapes[path].shape
            if len(mid_shape) == 4 and mid_shape[:2] != target.shape[:2]:
                changed = True
                taps = [min(a, b) for a, b in zip(mid_shape[:2], target.shape[:2], strict=True)]
                fraction *= taps[0] * taps[1] / (target.shape[0] * target.shape[1])
                how = "padded" if mid_shape[0] < target.shape[0] else "cropped"
                notes.append(f"kernel {mid_shape[0]}x{mid_shape[1]} {how} to {target.shape[0]}")
            heads = None
            if isinstance(plan.src_model, ViT):
                tokens = plan.src_shapes[POS_EMBED].shape[1]
                heads = head_dim_note(path, plan.src_model, plan.dst_model) or grid_note(
                    path, plan.src_model, plan.dst_model, tokens, plan.input_shape
                )
            if heads is not None:
                changed = True
                fraction *= heads[0]
                notes.append(heads[1])
            if path[1] == "head" and mid_shape[-1] != target.shape[-1]:
                changed = True
                fraction *= min(mid_shape[-1], target.shape[-1]) / target.shape[-1]
                notes.append(f"classes {mid_shape[-1]} -> {target.shape[-1]}")
        status: Status
        if src_path is None:
            status = "fresh"
        elif not changed:
            status = "exact"
        else:
            status = "transformed" if fraction == 1.0 else "partial"
        rows.append(
            LeafReport(
                path_str(path), tuple(target.shape), status, fraction, src_path, "; ".join(notes)
            )
        )
    return tuple(rows)


# --- public API ----------------------------------------------------------------------------


def _input_shape(
    src: nn.Module, dst: nn.Module, src_variables: Variables, input_shape: Any
) -> tuple[int, ...]:
    default = tuple(src.example_input(src_variables).shape)
    if input_shape is None:  # the source's images, checked as given ones are
        input_shape = default
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list, np.ndarray)) else ()
    if len(shape) != 4 or any(
        isinstance(d, bool) or not isinstance(d, numbers.Integral) or d <= 0 for d in shape
    ):
        raise ValueError(f"input_shape must be (n, h, w, c) of positive ints, got {input_shape!r}")
    shape = tuple(int(d) for d in shape)
    pair = f"{describe(src)} -> {describe(dst)}"
    if shape[-1] != default[-1]:
        raise ValueError(
            f"cannot transfer {pair}: the source reads {default[-1]} input channels but "
            f"input_shape {shape} has {shape[-1]}; both networks need the same input channels"
        )
    if isinstance(src, ViT):
        check_vit_input(dst, shape, pair)
        return (1, *shape[1:])
    if isinstance(src, VGG) and shape[1:3] != default[1:3]:
        raise ValueError(
            f"cannot transfer {pair}: the source's dense head reads the features of "
            f"{default[1]}x{default[2]} images but input_shape {shape} is {shape[1]}x{shape[2]}; "
            "a VGG transfer keeps the image size"
        )
    return (1, *shape[1:])


def transfer_plan(
    src_model: nn.Module,
    src_variables: Variables,
    dst_model: nn.Module,
    *,
    key: jax.Array,
    depth_map: DepthMap = "proportional",
    fill: Fill = "identity",
    shrink: Shrink = "evenly",
    noise: Noise = "split",
    noise_scale: float = 0.1,
    input_shape: tuple[int, int, int, int] | None = None,
) -> TransferPlan:
    """Plans and performs a transfer; the arguments are :func:`transfer`'s.

    Returns:
      The :class:`TransferPlan` with ``plan.variables`` and ``plan.report`` set;
      ``plan.map_params`` maps optimizer moments the same way.
    """
    check_pair(src_model, dst_model)
    check_option("depth_map", depth_map, DEPTH_MAPS)
    check_option("fill", fill, FILLS)
    check_option("shrink", shrink, SHRINKS)
    if noise == "fresh":
        raise ValueError("noise='fresh' is supported by widen/widen_train_state, not transfer")
    check_option("noise", noise, REPLICA_NOISES)
    check_key("transfer", key)
    check_noise_scale(noise_scale)
    check_variables(src_model, src_variables)
    src_flat = flatten(src_variables)
    shape = _input_shape(src_model, dst_model, src_variables, input_shape)
    example = jnp.zeros(shape, jnp.float32)
    mid_model, layout, stages, changes = _layout(src_model, dst_model, src_flat, depth_map, shrink)
    mid_shapes = abstract_variables(mid_model, example)
    layout = _fill_gaps(src_model, layout, stages, src_flat, mid_shapes, fill, changes)
    specs = _group_specs(mid_model, dst_model, layout, changes)
    widens = any(s.new > s.old for s in specs)
    changes += _model_changes(src_model, dst_model, noise, noise_scale, widens)
    if isinstance(src_model, ViT):
        changes += grid_changes(src_model, dst_model, src_flat[POS_EMBED].shape[1], shape)
    plan = TransferPlan(
        src_model=src_model,
        dst_model=dst_model,
        mid_model=mid_model,
        layout=layout,
        group_ops=tuple(GroupOp(s.group, s.old, s.new, tied_to=s.tied_to) for s in specs),
        input_shape=shape,
        noise=noise,
        noise_scale=noise_scale,
        noise_key=None,
        src_shapes={p: jax.ShapeDtypeStruct(v.shape, v.dtype) for p, v in src_flat.items()},
        mid_shapes=mid_shapes,
        dst_shapes=abstract_variables(dst_model, example),
    )
    zero_scales = [
        path
        for layer, source in layout.items()
        if source.kind == "zero_block"
        for path in _zero_block_leaves(dst_model, layer)
    ]
    n_groups = len(mid_model.unit_groups())
    needs_init = bool(zero_scales) or dst_model.num_classes > src_model.num_classes

    def compute(src: FlatVariables, key: jax.Array) -> tuple[FlatVariables, Any, jax.Array]:
        map_key, noise_key, init_key = jax.random.split(key, 3)
        fresh = flatten(dst_model.init(init_key, example)) if needs_init else {}
        for path in zero_scales:
            fresh[path] = jnp.zeros_like(fresh[path])
        mid = _assemble(plan, src, "values")
        ops = _group_ops(specs, n_groups, mid, map_key)
        grown = dataclasses.replace(plan, group_ops=ops, noise_key=noise_key)
        widened = _resized_heads(grown, _apply_group_ops(grown, mid, "values"), "values")
        values = _finish(grown, widened, "values", None, fresh)
        return values, _op_arrays(ops), noise_key

    values, arrays, noise_key = jax.jit(compute)(src_flat, key)
    plan = dataclasses.replace(
        plan, group_ops=_with_arrays(plan.group_ops, arrays), noise_key=noise_key
    )
    report = TransferReport(
        describe(src_model), describe(dst_model), _leaf_rows(plan), tuple(changes)
    )
    return dataclasses.replace(plan, variables=unflatten_like(values, src_variables), report=report)


def transfer(
    src_model: nn.Module,
    src_variables: Variables,
    dst_model: nn.Module,
    *,
    key: jax.Array,
    depth_map: DepthMap = "proportional",
    fill: Fill = "identity",
    shrink: Shrink = "evenly",
    noise: Noise = "split",
    noise_scale: float = 0.1,
    input_shape: tuple[int, int, int, int] | None = None,
) -> tuple[Variables, TransferReport]:
    """Variables for ``dst_model`` that reuse the weights of ``src_model``.

    The two networks are of one family (VGG -> VGG, ResNet -> ResNet with the same block and
    stem layout, ViT -> ViT with the same ``pool``) with the same number of stages (a ViT's
    blocks are one stage); anything else may differ:
    stage depths (larger or smaller), widths (larger or smaller), VGG hidden Dense layers
    and widths, ``num_classes``, ``kernel_size``, the ResNet stem kind, a ViT's ``depth``,
    ``embed_dim``, ``mlp_dim``, ``num_heads`` and ``head_dim``, and its ``patch_size`` and
    token grid (``pos_embed`` interpolated bilinearly, ``patch_embed`` resized as in
    FlexiViT; reported as inexact: :mod:`jnet2net.reuse.vit`). When ``dst_model`` is a
    superset of ``src_model`` (every depth and width at least as large, odd kernel sizes at
    least as large and, for a ResNet with more than one stage, not 1, a ViT's ``embed_dim`` a
    multiple of the source's, the same stem (a ViT: patch size and token grid), classes and
    compute ``dtype``) and ``noise != 'paper'``, the destination computes the source's
    function in eval mode (< 1e-5 relative; for ``bfloat16`` models, of the weights
    computed in float32), as
    ``jnet2net.widen`` and ``jnet2net.deepen`` do; ``report.function_preserving`` says
    whether it does. (Hidden Dense layers added to a VGG head without any start as
    identities of the flattened features, so they are exact when at least that wide.)

    Args:
      src_model: the source ``VGG``, ``ResNet`` or ``ViT``.
      src_variables: ``{'params': ..., 'batch_stats': ...}`` of ``src_model``.
      dst_model: the destination module.
      key: randomness for widening mappings, split noise and fresh leaves
        (``dst_model.init``).
      depth_map: where source layers go in a deeper stage: ``'proportional'`` (layer ``i``
        of ``n`` at slot ``i * m // n``, each followed by its share of new layers) or
        ``'append'`` (new layers at the end of the stage).
      fill: what fills the new slots: ``'identity'`` (VGG identity conv + identity
        BatchNorm; ResNet block with zero last BatchNorm scale; exact) or ``'repeat'`` (a
        copy of the nearest source layer of the stage with the same shapes, as
        weight-reuse methods do; not exact). Hidden Dense layers are always identities.
      shrink: which layers a shallower stage keeps besides its first: ``'evenly'``
        spaced (the last included), the ``'first'`` ones or the ``'last'`` ones. Dropped
        VGG hidden Dense layers are multiplied into the next kept Dense layer.
      noise: how consumers of widened groups are split: ``'split'`` (exact,
        symmetry-breaking), ``'none'`` or ``'paper'`` (not exact), as in ``jnet2net.widen``;
        ``widen``'s ``'fresh'`` is not supported here (ValueError).
      noise_scale: scale of that noise, a finite number ``>= 0``; ``'split'`` with a
        scale above ``jnet2net.grow.MAX_EXACT_SPLIT_SCALE`` (2.0) is reported as inexact
        (float32 rounding of the large shares).
      input_shape: ``(n, h, w, c)`` images for the destination (default: the source's
        example input). The channels, and for VGG the image size, must be the source's; a
        ViT's grid is these images cut into the destination's patches.

    Returns:
      ``(dst_variables, report)``: ``dst_variables`` fit ``dst_model``, with the leaves and
      dtypes of ``dst_model.init`` (frozen if ``src_variables`` were); ``report`` is a
      :class:`~jnet2net.reuse.report.TransferReport` with one row per destination leaf.

    Raises:
      ValueError: the pair cannot be mapped (the message names both architectures and the
        problem), an option is unknown, ``noise_scale`` is negative or not finite, or
        ``src_variables`` do not fit ``src_model``.
      TypeError: a model is not a ``VGG``, ``ResNet`` or ``ViT``, ``key`` is not one PRNG key, or
        ``noise_scale`` is not a number.
    """
    plan = transfer_plan(
        src_model,
        src_variables,
        dst_model,
        key=key,
        depth_map=depth_map,
        fill=fill,
        shrink=shrink,
        noise=noise,
        noise_scale=noise_scale,
        input_shape=input_shape,
    )
    return plan.variables, plan.report
