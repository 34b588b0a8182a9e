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
   wider groups replicate units and split their consumers (Net2Net); narrower groups keep
   the units with the largest producer-kernel norm and fold each dropped unit's outgoing
   weights into the kept unit whose producer weights are most similar
   (``surgery.select_units``); both run as the growth engine's group steps
   (:func:`~jnet2net.reuse.groups.group_steps`: replicate/split, narrow/fold). An identity
   layer follows the group that feeds it, so it stays an identity. Exact replicas (a group
   widened with ``noise='none'``) fold back into their originals exactly; replicas made
   with ``noise='split'`` have different incoming weights and count as distinct units.
3. Shapes: conv kernels are centre-padded or centre-cropped to the destination's size
   (``surgery.resize_kernel``); the head keeps the columns of the classes both networks
   have (class ``i`` is class ``i``) and takes the others from the destination's
   initialisation.

A ViT goes through the same passes, its blocks as one stage and its stream, heads and MLP
units as unit groups (the stream uniformly when the new width is a multiple), with
``head_dim`` padded or cropped after the groups (:mod:`jnet2net.reuse.vit`).

Like a :class:`~jnet2net.engine.GrowthPlan`, the plan has ``apply(variables)`` and maps any
params-shaped tree (:meth:`TransferPlan.map`, alias ``map_params``), e.g. optimizer moments:
linear, without noise, new entries zero.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util
from flax.core import FrozenDict, freeze, unfreeze

from jnet2net import surgery
from jnet2net.engine import run_groups
from jnet2net.engine.widening import REPLICA_NOISES, Noise, check_noise_scale
from jnet2net.models import ViT
from jnet2net.reuse.explain import leaf_rows, model_changes
from jnet2net.reuse.groups import (
    GroupOp,
    GroupSpec,
    draw_group_ops,
    group_specs,
    group_steps,
    op_arrays,
    with_arrays,
)
from jnet2net.reuse.layers import (
    LayerSource,
    assemble,
    fill_gaps,
    mid_layout,
    zero_block_leaves,
)
from jnet2net.reuse.layout import (
    DEPTH_MAPS,
    FILLS,
    SHRINKS,
    DepthMap,
    Fill,
    Shrink,
    check_input_shape,
    check_option,
    check_pair,
    describe,
)
from jnet2net.reuse.report import TransferReport
from jnet2net.reuse.vit import POS_EMBED, grid_changes, resize_grid, resize_head_dim
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

__all__ = ["GroupOp", "GroupSpec", "LayerSource", "TransferPlan", "transfer", "transfer_plan"]

Path = tuple[str, ...]
Mode = Literal["values", "moments"]


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
      init_key: key of the destination's initialisation (new blocks, new classes).

    Like a :class:`~jnet2net.engine.GrowthPlan` it has ``model``, ``new_model``,
    ``apply(variables)`` and a linear ``map(tree)``.
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
    init_key: jax.Array | None = None
    _compiled: dict[Any, Any] = dataclasses.field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def model(self) -> nn.Module:
        """The source module (``GrowthPlan``'s name)."""
        return self.src_model

    @property
    def new_model(self) -> nn.Module:
        """The destination module (``GrowthPlan``'s name)."""
        return self.dst_model

    def apply(self, variables: Variables, key: jax.Array | None = None) -> Variables:
        """The destination's variables from source-shaped ``variables`` by this plan (its
        layer sources, mappings and kept units).

        Args:
          variables: variables shaped like the source's.
          key: ``None``: the plan's own noise and initialisation keys (so
            ``plan.apply(src_variables)`` equals ``plan.variables``); else both from
            ``jax.random.split(key)``.
        """
        noise_key, init_key = (self.noise_key, self.init_key)
        if key is not None:
            noise_key, init_key = jax.random.split(key)
        plan = dataclasses.replace(self, noise_key=noise_key)
        values = jax.jit(lambda src, k: _values(plan, src, k))(flatten(variables), init_key)
        return unflatten_like(values, variables)

    def map(self, tree: Any) -> Any:
        """:meth:`map_params` (``GrowthPlan``'s name)."""
        return self.map_params(tree)

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


# --- the three passes: assemble, group operations, finish ---------------------------------


def _collections(mode: Mode) -> tuple[str, ...]:
    return ("params",) if mode == "moments" else ("params", "batch_stats")


def _apply_group_ops(plan: TransferPlan, mid: FlatVariables, mode: Mode) -> FlatVariables:
    """Widens and narrows every unit group; split noise only on the values."""
    noise = plan.noise if mode == "values" else "none"
    steps = group_steps(plan.group_ops, noise, plan.noise_scale if noise != "none" else 0.0)
    return run_groups(mid, steps, plan.noise_key, moments=mode == "moments")


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


def _zero_scales(plan: TransferPlan) -> list[Path]:
    return [
        path
        for layer, source in plan.layout.items()
        if source.kind == "zero_block"
        for path in zero_block_leaves(plan.dst_model, layer)
    ]


def _values(plan: TransferPlan, src_flat: FlatVariables, init_key: jax.Array) -> FlatVariables:
    """The destination's values: the passes on the source's, new leaves from ``init_key``."""
    zero_scales = _zero_scales(plan)
    fresh = {}
    if zero_scales or plan.dst_model.num_classes > plan.src_model.num_classes:
        example = jnp.zeros(plan.input_shape, jnp.float32)
        fresh = flatten(plan.dst_model.init(init_key, example))
    for path in zero_scales:
        fresh[path] = jnp.zeros_like(fresh[path])
    mid = _apply_group_ops(
        plan, assemble(plan.layout, plan.mid_shapes, src_flat, _collections("values")), "values"
    )
    return _finish(plan, _resized_heads(plan, mid, "values"), "values", None, fresh)


def _run(plan: TransferPlan, src_flat: FlatVariables, mode: Mode, dtype: Any) -> FlatVariables:
    """Moments (or any params-shaped tree) through the plan; traced under ``jax.jit``."""
    mid = assemble(plan.layout, plan.mid_shapes, src_flat, _collections(mode), dtype)
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


# --- public API ----------------------------------------------------------------------------


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
    shape = check_input_shape(src_model, dst_model, src_variables, input_shape)
    example = jnp.zeros(shape, jnp.float32)
    mid_model, layout, stages, changes = mid_layout(
        src_model, dst_model, src_flat, depth_map, shrink
    )
    mid_shapes = abstract_variables(mid_model, example)
    layout = fill_gaps(src_model, layout, stages, src_flat, mid_shapes, fill, changes)
    specs = group_specs(mid_model, dst_model, layout, changes)
    widens = any(s.new > s.old for s in specs)
    changes += model_changes(src_model, dst_model, noise, noise_scale, widens)
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
    n_groups = len(mid_model.unit_groups())

    def compute(src: FlatVariables, key: jax.Array) -> tuple[FlatVariables, Any, jax.Array, Any]:
        map_key, noise_key, init_key = jax.random.split(key, 3)
        group_ops = draw_group_ops(
            specs,
            n_groups,
            assemble(plan.layout, plan.mid_shapes, src, _collections("values")),
            map_key,
        )
        grown = dataclasses.replace(plan, group_ops=group_ops, noise_key=noise_key)
        return _values(grown, src, init_key), op_arrays(group_ops), noise_key, init_key

    values, arrays, noise_key, init_key = jax.jit(compute)(src_flat, key)
    plan = dataclasses.replace(
        plan,
        group_ops=with_arrays(plan.group_ops, arrays),
        noise_key=noise_key,
        init_key=init_key,
    )
    report = TransferReport(
        describe(src_model), describe(dst_model), leaf_rows(plan), tuple(changes)
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
    blocks are one stage); anything else may differ: stage depths (larger or smaller),
    widths (larger or smaller), VGG hidden Dense layers and widths, ``num_classes``,
    ``kernel_size``, the ResNet stem kind, a ViT's ``depth``, ``embed_dim``, ``mlp_dim``,
    ``num_heads`` and ``head_dim``, and its ``patch_size`` and token grid (``pos_embed``
    interpolated bilinearly, ``patch_embed`` resized as in FlexiViT; reported as inexact:
    :mod:`jnet2net.reuse.vit`). When ``dst_model`` is a superset of ``src_model`` (every
    depth and width at least as large, odd kernel sizes at least as large and, for a ResNet
    with more than one stage, not 1, a ViT's ``embed_dim`` a multiple of the source's, the
    same stem (a ViT: patch size and token grid), classes and compute ``dtype``) and
    ``noise != 'paper'``, the destination computes the source's function in eval mode
    (< 1e-5 relative; for ``bfloat16`` models, of the weights computed in float32), as
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
