"""Net2DeeperNet for the presets (VGG, ResNet, ViT) and deepen's ``target=`` form, as
:class:`~jnet2net.engine.GrowthPlan` s: old leaves kept by path, new layers' leaves held by
the plan (identity layers, zero-output blocks). Also the size-argument checks that
``jnet2net.grow.widen`` shares.
"""

from __future__ import annotations

import functools
import numbers
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from jnet2net import grow_vit, surgery
from jnet2net.deepen_any import deepen_to_target
from jnet2net.engine import GrowthPlan, deepening_plan
from jnet2net.engine.layers import plain_leaf
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


def _check_family(model: Any) -> None:
    if not isinstance(model, (VGG, ResNet, ViT)):
        raise TypeError(
            f"jnet2net grows VGG, ResNet and ViT modules by size keywords, got "
            f"{type(model).__name__}; for other networks pass target= (the same module "
            "with larger sizes) and example_input=, or compose the ops in jnet2net.surgery"
        )


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
    if path[-1] == "kernel" and leaf.ndim == 4 and model.kernel_size % 2 == 0:
        raise ValueError(
            f"deepen cannot insert an identity conv at {path_str(path)} with kernel shape "
            f"{leaf.shape}: VGG.kernel_size={model.kernel_size} is even, so the kernel has "
            "no centre tap"
        )
    return plain_leaf(path, leaf)


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
    plan = deepen_plan(
        model,
        variables,
        depths=depths,
        hidden_depths=hidden_depths,
        key=key,
        calibration_batch=calibration_batch,
        depth=depth,
        target=target,
        example_input=example_input,
        rules=rules,
        apply_kwargs=apply_kwargs,
    )
    return plan.new_model, plan.apply(variables)


def deepen_plan(
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
) -> GrowthPlan:
    """The :class:`~jnet2net.engine.GrowthPlan` of :func:`deepen` (same arguments): old
    leaves kept by path, new layers' leaves held by the plan; ``plan.map`` keeps the old
    moments and gives the new layers zeros."""
    if target is not None:
        if any(v is not None for v in (depths, hidden_depths, depth, calibration_batch)):
            raise ValueError(
                "deepen takes either target= or depths/hidden_depths/depth/calibration_batch"
            )
        check_key("deepen", key)
        if example_input is None and isinstance(model, (VGG, ResNet, ViT)):
            example_input = model.example_input(variables)
        new_model, grown = deepen_to_target(
            model,
            variables,
            target,
            key=key,
            example_input=example_input,
            rules=rules,
            apply_kwargs=apply_kwargs,
        )
        return deepening_plan(model, new_model, flatten(variables), flatten(grown))
    _check_family(model)
    if key is not None:
        check_key("deepen", key)
    cnn_sizes = {"depths": depths, "hidden_depths": hidden_depths}
    if isinstance(model, ViT):
        grow_vit.reject_sizes(
            model,
            {**cnn_sizes, "calibration_batch": calibration_batch},
            allowed=grow_vit.DEEPEN_SIZES,
        )
        new_model, grown = grow_vit.deepen_vit(model, variables, depth=depth, key=key)
        return deepening_plan(model, new_model, flatten(variables), flatten(grown))
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
    return deepening_plan(model, new_model, old, new_flat)
