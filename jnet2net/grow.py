"""Net2WiderNet and Net2DeeperNet on Flax variable dicts: pure, exact, key-driven.

``widen`` and ``deepen`` map ``(model, variables)`` to ``(new_model, new_variables)`` where
``new_model = model.clone(...)``. Nothing passed in is mutated; randomness comes only from
``key``. Both work under ``jax.jit`` with the module and the size arguments static::

    grow = jax.jit(jnet2net.widen, static_argnames=("model", "widths"))
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from jnet2net import grow_vit
from jnet2net.engine import GrowthPlan, keep_empty_collections
from jnet2net.engine.widening import (  # re-exported: their home before the engine
    MAX_EXACT_SPLIT_SCALE,
    NOISES,
    REPLICA_NOISES,
    GroupGrowth,
    GroupMapping,
    Noise,
    apply_widening,
    check_noise_scale,
    embed_widening,
    fresh_plan,
    fresh_widening,
    grown_groups,
    plan_for_sizes,
    replica_plan,
    replicated_widening,
    warn_paper,
    widening_plan,
)
from jnet2net.grow_any import widen_to_target_plan
from jnet2net.grow_deep import _as_tuple, _check_family, _plain_int, deepen, deepen_plan
from jnet2net.models.resnet import ResNet
from jnet2net.models.vgg import VGG
from jnet2net.models.vit import ViT
from jnet2net.variables import (
    Variables,
    check_key,
    check_variables,
)

__all__ = [
    "MAX_EXACT_SPLIT_SCALE",
    "NOISES",
    "REPLICA_NOISES",
    "GroupGrowth",
    "GroupMapping",
    "Noise",
    "apply_widening",
    "check_noise_scale",
    "deepen",
    "deepen_plan",
    "embed_widening",
    "fresh_widening",
    "grown_groups",
    "plan_for_sizes",
    "replicated_widening",
    "widen",
    "widen_plan",
    "widening_plan",
]

_keep_empty_collections = keep_empty_collections  # its name before the engine


# --- widen ---------------------------------------------------------------------------


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


def _check_noise_options(noise: Any, key: Any, noise_scale: Any) -> None:
    """``widen``'s checks of its randomness options, on the sizes and the target path alike.

    Raises:
      ValueError: ``noise`` is not one of ``NOISES``, or ``noise_scale`` is negative or not
        finite.
      TypeError: ``key`` is not one JAX key, or ``noise_scale`` is not a number.
    """
    if noise not in NOISES:
        raise ValueError(f"noise must be one of {NOISES}, got {noise!r}")
    check_key("widen", key)
    check_noise_scale(noise_scale)


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
    plan = widen_plan(
        model,
        variables,
        key=key,
        widths=widths,
        hidden_widths=hidden_widths,
        inner_widths=inner_widths,
        stem_width=stem_width,
        noise=noise,
        noise_scale=noise_scale,
        embed_dim=embed_dim,
        mlp_dim=mlp_dim,
        num_heads=num_heads,
        target=target,
        example_input=example_input,
        apply_kwargs=apply_kwargs,
    )
    return plan.new_model, plan.apply(variables)


def widen_plan(
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
) -> GrowthPlan:
    """The :class:`~jnet2net.engine.GrowthPlan` of :func:`widen` (same arguments):
    ``plan.apply(variables)`` is ``widen``'s variables, ``plan.map`` carries optimizer
    moments (replicas copy, split consumers get ``1 / count``, fresh units zero).
    """
    sizes = (widths, hidden_widths, inner_widths, stem_width, embed_dim, mlp_dim, num_heads)
    if target is not None:
        plan = _widen_to_target(
            model,
            variables,
            target,
            key=key,
            sugar=sizes,
            noise=noise,
            noise_scale=noise_scale,
            example_input=example_input,
            apply_kwargs=apply_kwargs,
        )
        warn_paper(noise, plan, stacklevel=3)
        return plan
    _check_family(model)
    _check_noise_options(noise, key, noise_scale)
    vit_sizes = {"embed_dim": embed_dim, "mlp_dim": mlp_dim, "num_heads": num_heads}
    cnn_sizes = {"widths": widths, "hidden_widths": hidden_widths}
    cnn_sizes.update(inner_widths=inner_widths, stem_width=stem_width)
    if isinstance(model, ViT):
        grow_vit.reject_sizes(model, cnn_sizes, allowed=grow_vit.WIDEN_SIZES)
        plan = grow_vit.vit_widen_plan(
            model, variables, key=key, noise=noise, noise_scale=noise_scale, **vit_sizes
        )
        warn_paper(noise, plan, stacklevel=3)
        return plan
    grow_vit.reject_sizes(model, vit_sizes, allowed=tuple(cnn_sizes))
    new_model = _widened_model(model, widths, hidden_widths, inner_widths, stem_width)
    check_variables(model, variables)
    # Two independent keys: the mapping's and the noise's ('fresh': the wide init's; its
    # mapping is the identity on old units and draws nothing).
    map_key, noise_key = jax.random.split(key)
    if noise == "fresh":
        example = model.example_input(variables)
        return fresh_plan(
            model,
            new_model,
            grown_groups(model, new_model),
            key=noise_key,
            init=lambda k: new_model.init(k, example, train=False),
        )
    plan = replica_plan(
        model,
        new_model,
        widening_plan(model, new_model, map_key),
        key=noise_key,
        noise=noise,
        noise_scale=noise_scale,
    )
    warn_paper(noise, plan, stacklevel=3)
    return plan


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
) -> GrowthPlan:
    """``widen(target=...)``'s plan: any linen module, by discovered unit groups."""
    if any(value is not None for value in sugar):
        raise ValueError(
            "widen takes either target= or the width keywords (widths, hidden_widths, "
            "inner_widths, stem_width, embed_dim, mlp_dim, num_heads), not both"
        )
    if not isinstance(target, nn.Module):
        raise TypeError(f"target must be a flax linen module, got {type(target).__name__}")
    _check_noise_options(noise, key, noise_scale)
    if example_input is None and isinstance(model, (VGG, ResNet, ViT)):
        example_input = model.example_input(variables)
    return widen_to_target_plan(
        model,
        variables,
        target,
        key=key,
        example_input=example_input,
        apply_kwargs=apply_kwargs,
        noise=noise,
        noise_scale=noise_scale,
    )
