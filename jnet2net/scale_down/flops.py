"""FLOPs of the full and the scaled-down training step from XLA's cost analysis.

Every count comes from ``jax.jit(f).lower(...).compile().cost_analysis()`` (or the
lowered, not yet optimised, module's analysis, which needs no compile) on abstract,
unsharded inputs, so nothing is allocated or run and the counts are for the whole batch
(the analysis of a step compiled for a mesh reports one device's share). jax 0.10
returns a dict with a ``'flops'`` entry; older versions a list of such dicts (one per
program), some backends ``None``: :func:`flops_from_cost` reads all of them. On GPUs
(whose analysis leaves out the cuDNN/cuBLAS calls that do most of the arithmetic) and where
the backend reports no count (the lowered module's analysis through the CUDA plugin),
:func:`counted_flops` counts the traced program instead (:func:`jaxpr_flops`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jnet2net.scale_down.split import check_cut, prefix_apply, split_variables, suffix_apply
from jnet2net.train.cost import (
    XLA_COUNTING_PLATFORMS,
    abstract_args,
    flops_from_cost,
    jaxpr_flops,
    platform_of,
)
from jnet2net.variables import Variables

LossFn = Callable[[jax.Array, jax.Array], jax.Array]  # (logits (n, k), labels (n,)) -> ()


def mean_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of ``logits (n, k)`` against int ``labels (n,)``."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def counted_flops(fn: Callable[..., Any], *args: Any, how: str = "compiled") -> float:
    """FLOPs of one call ``fn(*args)`` by XLA's cost analysis.

    Args:
      fn: a jax-traceable function of arrays.
      *args: arrays or ``jax.ShapeDtypeStruct`` trees (only shapes and dtypes are used).
      how: ``'compiled'`` (the optimised executable, as it runs), ``'lowered'`` (before
        optimisation; no compile) or ``'off'`` (``nan``, nothing done).

    Returns:
      the count; :func:`jaxpr_flops` of the traced program on GPUs (whose analysis
      leaves out cuDNN/cuBLAS calls) and where the backend reports none (``nan`` only
      for ``how='off'``).
    """
    if how == "off":
        return math.nan
    if how not in ("compiled", "lowered"):
        raise ValueError(f"how must be 'compiled', 'lowered' or 'off', got {how!r}")
    if platform_of(args) not in XLA_COUNTING_PLATFORMS:  # cuDNN/cuBLAS calls go uncounted
        return jaxpr_flops(fn, *args)
    lowered = jax.jit(fn).lower(*abstract_args(args))
    try:
        cost = lowered.compile().cost_analysis() if how == "compiled" else lowered.cost_analysis()
    except NotImplementedError:  # e.g. the lowered analysis on a PJRT plugin (GPU)
        cost = None
    flops = flops_from_cost(cost)
    return jaxpr_flops(fn, *args) if math.isnan(flops) else flops


class StepFlops(NamedTuple):
    """FLOPs per example of one training step.

    Attributes:
      cut: dropped layers ``[0, cut)``.
      prefix_forward: the dropped prefix's forward (eval mode, no gradient); 0 at cut 0.
      forward: forward work done each step: the suffix's forward in train mode, plus
        ``prefix_forward`` unless the prefix is served from a cache.
      backward: the suffix's backward (gradients of its params and of its own inputs).
      cached: whether the prefix is served from a cache (then its forward is paid once
        per example per cut move, see :func:`cache_flops`).
    """

    cut: int
    prefix_forward: float
    forward: float
    backward: float
    cached: bool = False

    @property
    def total(self) -> float:
        """``forward + backward``."""
        return self.forward + self.backward


def step_flops(
    model: nn.Module,
    variables: Variables,
    cut: int,
    images: jax.Array | jax.ShapeDtypeStruct,
    *,
    cached: bool = False,
    loss_fn: LossFn = mean_cross_entropy,
    how: str = "compiled",
) -> StepFlops:
    """Forward and backward FLOPs per example of the step that trains layers ``[cut, end)``.

    Three functions are analysed: the prefix forward (eval mode), the suffix loss (train
    mode) and its ``value_and_grad`` with respect to the suffix params; backward is the
    difference of the last two. ``cut=0`` gives the full step.

    Args:
      model: the network.
      variables: its full variables (arrays or ShapeDtypeStructs).
      cut: number of dropped layers.
      images: a batch ``(n, h, w, c)`` (or its shape); FLOPs are divided by ``n``.
      cached: the prefix is read from a cache (its forward is not part of the step).
      loss_fn: ``(logits, labels) -> scalar``.
      how: see :func:`counted_flops`.

    Returns:
      the per-example counts (``nan`` where the backend reports none).
    """
    check_cut(model, cut)
    n = images.shape[0]
    frozen, trained = split_variables(model, abstract_args(variables), cut)
    images = abstract_args(images)
    labels = jax.ShapeDtypeStruct((n,), jnp.int32)
    h = jax.eval_shape(lambda f, x: prefix_apply(model, f, x, cut), frozen, images)
    stats = trained.get("batch_stats", {})

    def loss(params: Any, stats: Any, h: jax.Array, labels: jax.Array) -> jax.Array:
        logits, _ = suffix_apply(model, params, stats, h, cut, train=True)
        return loss_fn(logits, labels)

    prefix = 0.0
    if cut > 0:
        prefix = counted_flops(lambda f, x: prefix_apply(model, f, x, cut), frozen, images, how=how)
    args = (trained["params"], stats, h, labels)
    forward = counted_flops(loss, *args, how=how)
    both = counted_flops(jax.value_and_grad(loss), *args, how=how)
    return StepFlops(
        cut=cut,
        prefix_forward=prefix / n,
        forward=(forward + (0.0 if cached else prefix)) / n,
        backward=(both - forward) / n,
        cached=cached,
    )


def cache_flops(
    model: nn.Module,
    variables: Variables,
    start: int,
    stop: int,
    inputs: jax.Array | jax.ShapeDtypeStruct,
    *,
    how: str = "compiled",
) -> float:
    """FLOPs per example of extending a cache from cut ``start`` to cut ``stop``.

    Args:
      model: the network.
      variables: its variables (at least the layers ``[start, stop)``).
      start: the old cut (``inputs`` are the input of layer ``start``).
      stop: the new cut.
      inputs: a batch of cached activations (or images when ``start == 0``) or its shape.
      how: see :func:`counted_flops`.

    Returns:
      eval-mode forward FLOPs of layers ``[start, stop)`` per example (0 if equal).
    """
    check_cut(model, start)
    check_cut(model, stop)
    if stop < start:
        raise ValueError(f"a cache only grows: stop={stop} < start={start}")
    if stop == start:
        return 0.0
    n = inputs.shape[0]
    frozen, _ = split_variables(model, abstract_args(variables), stop)

    def layers(f: Any, x: jax.Array) -> jax.Array:
        return model.apply(f, x, train=False, start=start, stop=stop)

    return counted_flops(layers, frozen, inputs, how=how) / n
