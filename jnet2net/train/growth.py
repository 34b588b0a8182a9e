"""Carrying a training state across a growth or a transfer.

One mechanism: a *params map*, a function from a tree shaped like the old ``params`` to a
tree shaped like the new ones, linear, with zeros wherever the new network has values the
old one did not provide. :func:`grow_train_state` applies it to every params-shaped tree of
the optimizer state (SGD's momentum trace, Adam's ``mu`` and ``nu``) with
``optax.tree_map_params``, or resets those trees to zero; everything else in the optimizer
state (step counts that drive schedules and bias corrections) is kept, and so are ``step``
and ``tx``, so the learning-rate schedule continues where it was.

The three ways to grow give their params maps:

Every growth builds one :class:`~jnet2net.engine.GrowthPlan`; its ``apply`` gives the new
variables and its linear ``map`` is the params map:

* :func:`widen_train_state` (``jnet2net.grow.widen_plan``): replicated units copy their
  moments, split consumers get ``1 / count`` of them (no noise); with ``noise='fresh'`` old
  units keep their moments and every entry of a new unit is zero;
* :func:`deepen_train_state` (``jnet2net.grow.deepen_plan``): every existing leaf keeps its
  moments, new layers get zeros;
* :func:`target_train_state`: growth to any target module (``widen``/``deepen`` with
  ``target=``), by the same two plans;
* :func:`transfer_train_state`: ``jnet2net.reuse.TransferPlan``, which has the same
  ``apply``/``map``.

Example::

    new_model, state = widen_train_state(state, model, key=key, widths=(32, 64, 128))
    state, report = transfer_train_state(state, model, resnet32(), key=key)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.core import FrozenDict, freeze, unfreeze

from jnet2net.engine import GrowthPlan
from jnet2net.grow import Noise, deepen_plan, widen_plan
from jnet2net.grow_any import Rule, target_kind
from jnet2net.reuse import TransferReport, transfer_plan
from jnet2net.reuse.layout import DepthMap, Fill, Shrink
from jnet2net.train.state import TrainState, variables_of
from jnet2net.variables import Variables, flatten, path_str

Moments = Literal["map", "reset"]
MOMENTS = ("map", "reset")
ParamsMap = Callable[[Any], Any]


def _check_moments(moments: Any) -> None:
    if moments not in MOMENTS:
        raise ValueError(f"moments must be one of {MOMENTS}, got {moments!r}")


def _check_like(tree: Any, like: Any) -> None:
    """Raises ValueError unless ``tree`` has the paths and shapes of ``like``."""
    given = flatten(unfreeze(tree) if isinstance(tree, FrozenDict) else tree)
    expected = flatten(unfreeze(like) if isinstance(like, FrozenDict) else like)
    for path, leaf in expected.items():
        got = getattr(given.get(path), "shape", None)
        if got != leaf.shape:
            raise ValueError(
                f"the params map made {path_str(path)} with shape {got}, the new params have "
                f"{leaf.shape}"
            )
    extra = [path for path in given if path not in expected]
    if extra:
        raise ValueError(f"the params map made {path_str(extra[0])}, which the new params lack")


def grow_train_state(
    state: TrainState,
    new_model: nn.Module,
    new_variables: Variables,
    params_map: ParamsMap,
    *,
    moments: Moments = "map",
    variables_map: Callable[[Variables], Variables] | None = None,
) -> TrainState:
    """The train state of ``new_model``: new variables, optimizer moments mapped or reset.

    Args:
      state: a ``TrainState`` (flax's, with a ``batch_stats`` field) of the old model.
      new_model: the grown module; its ``apply`` becomes ``apply_fn``.
      new_variables: ``{'params': ..., 'batch_stats': ...}`` of ``new_model``.
      params_map: old params-shaped tree -> new params-shaped tree (linear, new entries
        zero), applied to every params-shaped tree of ``state.opt_state``.
      moments: ``'map'`` (moments follow their parameters) or ``'reset'`` (zeros).
      variables_map: old variables -> new variables (the growth's ``plan.apply``, with its
        key), applied to the state's moving average of the weights (``state.ema``) when it
        has one, so the average grows as exactly as the weights.

    Returns:
      The new state; ``step``, ``tx`` and the optimizer's counters (so its schedule) are
      the old ones. Its params, batch_stats and moments are ``FrozenDict`` when
      ``state.params`` is, plain dicts otherwise.

    Raises:
      ValueError: ``moments`` is unknown, the map's output does not fit the new params, or
        the state has a moving average and no ``variables_map`` is given.
    """
    _check_moments(moments)
    ema = getattr(state, "ema", None)
    if ema is not None and variables_map is None:
        raise ValueError(
            "the state carries a moving average of its weights (ema): pass variables_map= "
            "(the growth's plan.apply) to grow it too"
        )
    like_state = freeze if isinstance(state.params, FrozenDict) else unfreeze
    new_params = like_state(new_variables["params"])

    def map_moments(tree: Any) -> Any:
        dtype = jnp.result_type(*jax.tree.leaves(tree))
        if moments == "reset":
            return jax.tree.map(lambda p: jnp.zeros(p.shape, dtype), new_params)
        mapped = params_map(tree)
        _check_like(mapped, new_params)
        return like_state(mapped)

    opt_state = optax.tree_map_params(
        state.tx, map_moments, state.opt_state, is_leaf=lambda _: True
    )
    changes = {}
    if ema is not None:
        grown = variables_map(ema)
        changes["ema"] = variables_of(
            like_state(grown["params"]), like_state(grown.get("batch_stats", {}))
        )
    return state.replace(
        apply_fn=new_model.apply,
        params=new_params,
        batch_stats=like_state(new_variables.get("batch_stats", {})),
        opt_state=opt_state,
        **changes,
    )


def widen_train_state(
    state: TrainState,
    model: nn.Module,
    *,
    key: jax.Array,
    widths: tuple[int, ...] | None = None,
    hidden_widths: tuple[int, ...] | None = None,
    inner_widths: tuple[int, ...] | None = None,
    stem_width: int | None = None,
    noise: Noise = "split",
    noise_scale: float = 0.1,
    moments: Moments = "map",
    embed_dim: int | None = None,
    mlp_dim: int | None = None,
    num_heads: int | None = None,
) -> tuple[nn.Module, TrainState]:
    """``jnet2net.widen`` of a train state; the sizes, ``key`` and noise are ``widen``'s.

    The params are exactly ``widen(model, variables, key=key, ...)``'s; the moments go
    through the same plan's ``map``: a replica's moments equal its original's, a split
    consumer's are ``1 / count`` of them, so (with ``noise='none'``) replicas stay equal
    under further SGD-momentum or Adam steps. With ``noise='fresh'`` old units keep their
    moments in place and every entry of a new unit (incoming or outgoing) is zero (no
    second init); a ViT's stream, replicated under every noise, maps its moments like its
    replicas.

    Returns:
      ``(new_model, new_state)``.
    """
    _check_moments(moments)
    variables = variables_of(state.params, state.batch_stats)
    sizes = {
        "widths": widths,
        "hidden_widths": hidden_widths,
        "inner_widths": inner_widths,
        "stem_width": stem_width,
        "embed_dim": embed_dim,
        "mlp_dim": mlp_dim,
        "num_heads": num_heads,
    }
    plan = widen_plan(model, variables, key=key, noise=noise, noise_scale=noise_scale, **sizes)
    return plan.new_model, _grown(state, plan, variables, moments)


def _grown(state: TrainState, plan: GrowthPlan, variables: Variables, moments: Moments) -> Any:
    """``state`` carried through ``plan``: its ``apply`` for the variables (and their
    moving average, with the plan's key), ``map`` for the optimizer moments."""
    new_variables = plan.apply(variables)
    return grow_train_state(
        state, plan.new_model, new_variables, plan.map, moments=moments, variables_map=plan.apply
    )


def deepen_train_state(
    state: TrainState,
    model: nn.Module,
    *,
    depths: tuple[int, ...] | None = None,
    hidden_depths: int | None = None,
    key: jax.Array | None = None,
    calibration_batch: jax.Array | None = None,
    moments: Moments = "map",
    depth: int | None = None,
) -> tuple[nn.Module, TrainState]:
    """``jnet2net.deepen`` of a train state; the arguments are ``deepen``'s.

    Existing layers keep their names, so their moments are kept; the new layers' are zero.

    Returns:
      ``(new_model, new_state)``.
    """
    _check_moments(moments)
    variables = variables_of(state.params, state.batch_stats)
    plan = deepen_plan(
        model,
        variables,
        depths=depths,
        hidden_depths=hidden_depths,
        key=key,
        calibration_batch=calibration_batch,
        depth=depth,
    )
    return plan.new_model, _grown(state, plan, variables, moments)


def target_train_state(
    state: TrainState,
    model: nn.Module,
    target: nn.Module,
    *,
    key: jax.Array,
    example_input: Any,
    noise: Noise = "split",
    noise_scale: float = 0.1,
    rules: Sequence[Rule] | None = None,
    moments: Moments = "map",
    apply_kwargs: dict[str, Any] | None = None,
) -> tuple[nn.Module, TrainState]:
    """``jnet2net.widen``/``deepen`` of a train state to ``target``, any linen module.

    Whether it widens or deepens follows from the shapes (:func:`grow_any.target_kind`).
    The params are exactly ``widen(model, variables, key=key, target=target, ...)``'s (or
    ``deepen``'s, with ``rules``); the moments follow :func:`widen_train_state`'s and
    :func:`deepen_train_state`'s rules: replicas copy, split consumers share, fresh units and
    new layers start at zero.

    Args:
      state: the train state of ``model``.
      model: the module now.
      target: the grown module (``model``'s class).
      key: the growth's randomness.
      example_input: an input ``model`` takes (shapes only), e.g. a batch of one.
      noise: ``widen``'s, when the target is wider.
      noise_scale: ``widen``'s.
      rules: ``deepen``'s, when the target is deeper.
      moments: ``'map'`` or ``'reset'``.
      apply_kwargs: ``model.apply``'s keywords for discovery and checks (default
        ``{'train': False}``, the contract of ``train.fit``'s modules).

    Returns:
      ``(target, new_state)``.

    Raises:
      ValueError: ``target`` neither widens nor deepens ``model`` exactly (naming why).
    """
    _check_moments(moments)
    apply_kwargs = {"train": False} if apply_kwargs is None else apply_kwargs
    variables = variables_of(state.params, state.batch_stats)
    common = {"key": key, "target": target, "example_input": example_input}
    if target_kind(model, variables, target, example_input, apply_kwargs) == "deepen":
        plan = deepen_plan(model, variables, rules=rules, apply_kwargs=apply_kwargs, **common)
    else:
        plan = widen_plan(
            model,
            variables,
            noise=noise,
            noise_scale=noise_scale,
            apply_kwargs=apply_kwargs,
            **common,
        )
    return plan.new_model, _grown(state, plan, variables, moments)


def transfer_train_state(
    state: TrainState,
    src_model: nn.Module,
    dst_model: nn.Module,
    *,
    key: jax.Array,
    depth_map: DepthMap = "proportional",
    fill: Fill = "identity",
    shrink: Shrink = "evenly",
    noise: Noise = "split",
    noise_scale: float = 0.1,
    input_shape: tuple[int, int, int, int] | None = None,
    moments: Moments = "map",
) -> tuple[TrainState, TransferReport]:
    """``jnet2net.reuse.transfer`` of a train state; the arguments are ``transfer``'s.

    The moments go through the same plan (``TransferPlan.map``): copied, replicated,
    split, folded or cropped like their parameters, zero where the parameters are new.

    Returns:
      ``(new_state, report)``.
    """
    _check_moments(moments)
    plan = transfer_plan(
        src_model,
        variables_of(state.params, state.batch_stats),
        dst_model,
        key=key,
        depth_map=depth_map,
        fill=fill,
        shrink=shrink,
        noise=noise,
        noise_scale=noise_scale,
        input_shape=input_shape,
    )
    new_state = grow_train_state(
        state, plan.new_model, plan.variables, plan.map, moments=moments, variables_map=plan.apply
    )
    return new_state, plan.report
