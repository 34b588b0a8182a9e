"""``fit_scale_down``: training that drops the layers that stopped learning as it goes.

Sections: steps, the cut (moving it), accounting, the training loop.

The network is cut at ``cut``: layers ``[0, cut)`` are *frozen* (kept in a separate
variables dict, run in eval mode with their running BatchNorm statistics, never
differentiated, no optimizer state), layers ``[cut, end)`` are *trained* (the
:class:`~jnet2net.train.TrainState` holds only their params, batch stats and moments).
Each cut has its own compiled step; moving the cut moves the newly frozen layers out of the
state and compiles the next step, nothing else.
"""

from __future__ import annotations

import functools
import math
import os
import statistics
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import unfreeze
from jax.sharding import Mesh

from jnet2net.data.augment import augment
from jnet2net.data.dataset import Dataset, normalize
from jnet2net.models.common import compute_dtype
from jnet2net.scale_down import cache as cache_lib
from jnet2net.scale_down.config import ScaleDownConfig
from jnet2net.scale_down.flops import StepFlops, cache_flops, step_flops
from jnet2net.scale_down.policy import PolicyState, cut_limit, initial_policy, update_policy
from jnet2net.scale_down.scores import (
    ScoreHistory,
    empty_history,
    layer_change_scores,
    record_scores,
)
from jnet2net.scale_down.split import (
    check_cut,
    merge_variables,
    prefix_apply,
    shrink_opt_state,
    split_variables,
    suffix_apply,
)
from jnet2net.train.batches import augment_key, batch_indices, epoch_permutation
from jnet2net.train.config import TrainConfig
from jnet2net.train.loop import (
    check_count,
    check_fit_inputs,
    check_outputs_fit,
    epoch_means,
    eval_batch_size,
    nonfinite_loss_error,
    put_eval_set,
    run_eval,
    steps_per_epoch,
)
from jnet2net.train.optim import make_schedule
from jnet2net.train.progress import ProgressBar, append_jsonl, progress_enabled
from jnet2net.train.sharding import (
    batch_sharding,
    check_batch_size,
    data_mesh,
    put_replicated,
    replicated,
)
from jnet2net.train.state import TrainState, create_train_state, variables_of
from jnet2net.train.steps import (
    TRACE_COUNTS,
    augment_batch,
    correct_predictions,
    cross_entropy_loss,
    make_indexed_eval_step,
    with_compute_dtype,
)
from jnet2net.variables import Variables

Metrics = dict[str, jax.Array]
Record = dict[str, Any]

#: ``TrainConfig.augment`` values that flip images (only these may read a mirrored view).
FLIP_AUGMENTS = ("crop_flip", "flip")

# --- steps -------------------------------------------------------------------------------


def flip_choices(key: jax.Array, n: int) -> jax.Array:
    """``(n,)`` int32: 1 where :func:`~jnet2net.data.augment` with ``key`` mirrors example i.

    Read off the augmentation itself (on a two-pixel probe, no crop, whose flips are the
    same as with a crop), so a cached step takes the mirrored view exactly where the
    no-grad step of the same step number flips the image.
    """
    probe = jnp.broadcast_to(jnp.array([0, 1], jnp.uint8).reshape(1, 1, 2, 1), (n, 1, 2, 1))
    return augment(key, probe, crop_padding=0, flip=True)[:, 0, 0, 0].astype(jnp.int32)


def suffix_update_fn(
    model: nn.Module, config: TrainConfig, cut: int
) -> Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, Metrics]]:
    """``(state, h, labels) -> (state, {'loss', 'accuracy'})``: one optimizer step of the suffix.

    ``h`` is the input of layer ``cut`` (normalised images at ``cut == 0``); ``state``
    holds the params, batch stats and optimizer state of layers ``[cut, end)`` only, so
    the gradient, the backward pass and the update cover the suffix alone.
    """

    def update(state: TrainState, h: jax.Array, labels: jax.Array) -> tuple[TrainState, Metrics]:
        def loss_fn(params: Any) -> tuple[jax.Array, tuple[Any, jax.Array]]:
            logits, stats = suffix_apply(model, params, state.batch_stats, h, cut, train=True)
            losses = cross_entropy_loss(logits, labels, label_smoothing=config.label_smoothing)
            return losses.mean(), (stats, logits)

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (stats, logits)), grads = grad_fn(state.params)
        new_state = state.apply_gradients(grads=grads, batch_stats=stats if stats else {})
        return new_state, {"loss": loss, "accuracy": correct_predictions(logits, labels).mean()}

    return update


def make_scaled_train_step(
    model: nn.Module,
    config: TrainConfig,
    cut: int,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    steps_per_epoch: int,
    cached: bool = False,
    mesh: Mesh | None = None,
) -> Callable[..., tuple[TrainState, Metrics]]:
    """The jitted step that trains layers ``[cut, end)`` on device data (state donated).

    No-grad (``cached=False``): ``(state, frozen, images, labels, permutation)``; the batch
    ``state.step % steps_per_epoch`` of ``permutation`` is gathered from ``images (n, h, w,
    c)`` uint8, augmented as ``config.augment`` says, normalised, run through the frozen
    prefix in eval mode without gradient, then through the suffix with gradient.

    Cached (``cached=True``): ``(state, activations, labels, permutation)`` where
    ``activations (n, views, ...)`` are an
    :class:`~jnet2net.scale_down.cache.ActivationCache`'s; with two views each example
    takes the mirrored one where the no-grad step of the same step number flips it
    (:func:`flip_choices` of ``augment_key(seed, step)``), with one view (or when
    ``config.augment`` has no flips: ``'crop'``, ``'none'``) the plain one.

    Args:
      model: the network in its compute dtype.
      config: batch size, augmentation, label smoothing, seed.
      cut: number of frozen layers.
      mean, std: normalisation of the images.
      steps_per_epoch: batches per epoch.
      cached: read the prefix's output from a cache.
      mesh: shard batches over ``'data'``, replicate the rest.

    Returns:
      the jitted step ``-> (state, {'loss', 'accuracy'})``.
    """
    update = suffix_update_fn(model, config, cut)
    dtype = compute_dtype(model)
    batch_size = config.batch_size

    def indices(state: TrainState, permutation: jax.Array) -> jax.Array:
        index = batch_indices(permutation, state.step % steps_per_epoch, batch_size)
        if mesh is not None:
            index = jax.lax.with_sharding_constraint(index, batch_sharding(mesh))
        return index

    def nograd_step(
        state: TrainState,
        frozen: Variables,
        images: jax.Array,
        labels: jax.Array,
        permutation: jax.Array,
    ) -> tuple[TrainState, Metrics]:
        TRACE_COUNTS["scale_down_step"] += 1
        index = indices(state, permutation)
        x = augment_batch(config, augment_key(config.seed, state.step), images[index])
        h = prefix_apply(model, frozen, normalize(x, mean, std, dtype), cut)
        return update(state, h, labels[index])

    def cached_step(
        state: TrainState, activations: jax.Array, labels: jax.Array, permutation: jax.Array
    ) -> tuple[TrainState, Metrics]:
        TRACE_COUNTS["scale_down_step"] += 1
        index = indices(state, permutation)
        view = None
        if activations.shape[1] > 1 and config.augment in FLIP_AUGMENTS:
            view = flip_choices(augment_key(config.seed, state.step), batch_size)
        h = cache_lib.gather_views(activations, index, view)
        return update(state, h, labels[index])

    step = cached_step if cached else nograd_step
    if mesh is None:
        return jax.jit(step, donate_argnums=0)
    rep = replicated(mesh)
    return jax.jit(step, donate_argnums=0, in_shardings=rep, out_shardings=(rep, rep))


# --- the cut -------------------------------------------------------------------------------


def move_cut(
    model: nn.Module, state: TrainState, frozen: Variables, cut: int
) -> tuple[TrainState, dict]:
    """Moves the trained layers before ``cut`` out of ``state`` into ``frozen``.

    Their params and batch stats join ``frozen``; their moments leave the optimizer state,
    whose other leaves (the remaining layers' moments, the step count) are kept as they are.

    Args:
      model: the network.
      state: the state of the layers from the old cut on.
      frozen: variables of the layers before the old cut.
      cut: the new cut (not before the old one).

    Returns:
      ``(state of layers [cut, end), variables of layers [0, cut))``.

    Raises:
      ValueError: ``cut`` is before the old cut (a layer it would train is frozen).
    """
    check_cut(model, cut)
    names = model.layer_names()
    old = next((i for i, name in enumerate(names) if name in state.params), len(names))
    if cut < old:
        raise ValueError(
            f"cut {cut} is before the current cut {old}: layer {names[cut]!r} is frozen and "
            "is never trained again"
        )
    trained = {"params": state.params, "batch_stats": state.batch_stats}
    moved, kept = split_variables(model, trained, cut)
    frozen = merge_variables(frozen, moved)
    opt_state = shrink_opt_state(state.tx, state.opt_state, kept["params"])
    state = state.replace(
        params=kept["params"], batch_stats=kept["batch_stats"], opt_state=opt_state
    )
    return state, frozen


# --- accounting ----------------------------------------------------------------------------


class ScaleDownResult(NamedTuple):
    """What :func:`fit_scale_down` returns.

    Attributes:
      state: the trained suffix's state (layers ``[cut, end)``; replicated over the mesh).
      frozen: variables of the frozen prefix (layers ``[0, cut)``).
      variables: the whole network's ``{'params', 'batch_stats'}`` (``frozen`` and
        ``state`` merged; no ``batch_stats`` without BatchNorm, as ``model.init``), ready
        for ``model.apply``.
      cut: the final cut.
      history: one record per epoch (see :func:`fit_scale_down`).
      summary: totals of the run against full training for as many steps.
      scores: every check's raw and smoothed per-layer scores.
    """

    state: TrainState
    frozen: dict
    variables: dict
    cut: int
    history: list[Record]
    summary: Record
    scores: ScoreHistory


def _num_params(params: Any) -> int:
    return sum(int(leaf.size) for leaf in jax.tree.leaves(params))


def _ratio(a: float, b: float) -> float | None:
    return a / b if b and math.isfinite(a) and math.isfinite(b) else None


def _json_float(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _median_step_s(segments: list[tuple[int, int, float]], cut: int) -> float | None:
    """Median seconds per step of the timed segments at ``cut`` (the first left out if >1)."""
    times = [seconds / steps for c, steps, seconds in segments if c == cut and steps > 0]
    if len(times) > 1:
        times = times[1:]
    return statistics.median(times) if times else None


def _summary(
    model: nn.Module,
    cut: int,
    steps: int,
    batch_size: int,
    totals: dict[str, float],
    full: StepFlops,
    segments: list[tuple[int, int, float]],
    events: list[Record],
    history: list[Record],
    total_params: int,
) -> Record:
    examples = steps * batch_size
    full_flops = full.total * examples
    full_forward = full.forward * examples
    train_s = sum(r["epoch_s"] for r in history)
    full_step_s = _median_step_s(segments, 0)
    full_train_s = None if full_step_s is None else full_step_s * steps
    flops_ratio = _ratio(totals["flops"], full_flops)
    forward_ratio = _ratio(totals["forward"], full_forward)
    last = history[-1] if history else {}
    return {
        "epochs": len(history),
        "steps": steps,
        "cut": cut,
        "frozen": list(model.layer_names()[:cut]),
        "trained": list(model.layer_names()[cut:]),
        "trained_params": history[-1]["trained_params"] if history else None,
        "total_params": total_params,
        "events": events,
        "train_flops": _json_float(totals["flops"]),
        "full_train_flops": _json_float(full_flops),
        "flops_ratio": flops_ratio,
        "flops_saved": None if flops_ratio is None else 1.0 - flops_ratio,
        "train_forward_flops": _json_float(totals["forward"]),
        "full_train_forward_flops": _json_float(full_forward),
        "forward_flops_saved": None if forward_ratio is None else 1.0 - forward_ratio,
        "cache_flops": _json_float(totals["cache"]),
        "train_s": train_s,
        "rebuild_s": totals["rebuild_s"],
        "full_step_s": full_step_s,
        "full_train_s_estimate": full_train_s,
        "speedup_estimate": None if not full_train_s or not train_s else full_train_s / train_s,
        "test_acc": last.get("test_acc"),
        "test_loss": last.get("test_loss"),
    }


# --- the training loop ----------------------------------------------------------------------


class _Setup(NamedTuple):
    """What every cut's step is built from (fixed for the run)."""

    model: nn.Module  # in the compute dtype
    train_config: TrainConfig
    scale_config: ScaleDownConfig
    train: Dataset
    images: jax.Array  # (n, h, w, c) uint8, on device
    labels: jax.Array  # (n,) int32, on device
    mesh: Mesh
    steps_per_epoch: int
    batch_spec: jax.ShapeDtypeStruct  # one normalised batch
    cache_budget: int | None


class _Runner(NamedTuple):
    """The compiled step of one cut, its inputs besides the state and the order, its FLOPs."""

    cut: int
    mode: str
    step: Any
    args: tuple
    flops: StepFlops
    augment: str
    cache: cache_lib.ActivationCache | None


def _augment_name(train_config: TrainConfig, mode: str, views: int) -> str:
    if train_config.augment == "none":
        return "none"
    if mode == "nograd":
        return train_config.augment
    return "flip (cached mirror view)" if views > 1 else "none (cached)"


def _cache_for(
    setup: _Setup, frozen: dict, cache: cache_lib.ActivationCache | None, cut: int
) -> tuple[cache_lib.ActivationCache | None, float]:
    """The cache at ``cut`` (``None``: no-grad) and the FLOPs spent to make it."""
    config, train_config = setup.scale_config, setup.train_config
    if config.mode != "cache" or cut == 0:
        return None, 0.0
    flips = config.cache_augment == "flip" and train_config.augment in FLIP_AUGMENTS
    views = 2 if flips else 1
    spec = cache_lib.cache_spec(setup.model, frozen, setup.images, cut)
    need = cache_lib.cache_nbytes(spec.shape, spec.dtype, views)
    if setup.cache_budget is not None and need > setup.cache_budget:
        return None, 0.0
    chunk = train_config.eval_batch_size
    if cache is not None and cache.num_views == views:
        start = cache.cut
        inputs = jax.ShapeDtypeStruct(
            (train_config.batch_size, *cache.activations.shape[2:]), cache.activations.dtype
        )
        cache = cache_lib.extend_cache(
            setup.model, frozen, cache, cut, chunk=chunk, mesh=setup.mesh
        )
    else:
        start, inputs = 0, setup.batch_spec
        cache = cache_lib.build_cache(
            setup.model,
            frozen,
            setup.images,
            cut,
            mean=setup.train.mean,
            std=setup.train.std,
            flips=flips,
            chunk=chunk,
            mesh=setup.mesh,
        )
    per_example = cache_flops(setup.model, frozen, start, cut, inputs, how=config.flop_count)
    return cache, per_example * len(setup.train) * views


def _prepare(
    setup: _Setup,
    state: TrainState,
    frozen: dict,
    cache: cache_lib.ActivationCache | None,
    cut: int,
    order: jax.Array,
) -> tuple[_Runner, float]:
    """Compiles the step of ``cut`` (building or extending the cache first in cache mode).

    Returns:
      ``(runner, FLOPs spent on the cache)``.
    """
    train_config = setup.train_config
    cache, build_flops = _cache_for(setup, frozen, cache, cut)
    cached = cache is not None
    step = make_scaled_train_step(
        setup.model,
        train_config,
        cut,
        mean=setup.train.mean,
        std=setup.train.std,
        steps_per_epoch=setup.steps_per_epoch,
        cached=cached,
        mesh=setup.mesh,
    )
    args = (cache.activations, setup.labels) if cached else (frozen, setup.images, setup.labels)
    compiled = step.lower(state, *args, order).compile()
    everything = merge_variables(frozen, _trained_variables(state))
    flops = step_flops(
        setup.model,
        everything,
        cut,
        setup.batch_spec,
        cached=cached,
        loss_fn=functools.partial(_mean_loss, train_config.label_smoothing),
        how=setup.scale_config.flop_count,
    )
    mode = "cache" if cached else "nograd"
    views = cache.num_views if cached else 0
    augment = _augment_name(train_config, mode, views)
    return _Runner(cut, mode, compiled, args, flops, augment, cache), build_flops


def _mean_loss(label_smoothing: float, logits: jax.Array, labels: jax.Array) -> jax.Array:
    return cross_entropy_loss(logits, labels, label_smoothing=label_smoothing).mean()


def _trained_variables(state: TrainState) -> dict:
    return {"params": state.params, "batch_stats": state.batch_stats}


def _whole_variables(frozen: dict, state: TrainState) -> dict:
    """The whole network's variables, without an empty ``batch_stats`` (as ``model.init``)."""
    merged = merge_variables(frozen, _trained_variables(state))
    return variables_of(merged["params"], merged.get("batch_stats", {}))


def fit_scale_down(
    model: nn.Module,
    train: Dataset,
    test: Dataset | None,
    train_config: TrainConfig,
    scale_config: ScaleDownConfig | None = None,
    *,
    variables: Any = None,
    mesh: Mesh | None = None,
    on_epoch_end: Callable[[TrainState, Record], None] | None = None,
    max_steps: int | None = None,
) -> ScaleDownResult:
    """Trains ``model`` and drops from training, as it goes, the layers that stopped learning.

    Every ``check_every`` steps the per-layer change scores are taken and the policy may
    move the cut (see :class:`ScaleDownConfig`). The frozen prefix then runs in eval mode
    with the running BatchNorm statistics it had when it was frozen (its output is a fixed
    function of the image, so it can be cached; the suffix's BatchNorm layers stay in
    training mode) and either every step without gradient (``mode='nograd'``: the usual
    augmentation) or from a cache of its outputs (``mode='cache'``: no random crops; flips
    only with ``cache_augment='flip'`` and an augmentation that flips; a cut whose cache
    exceeds ``cache_max_bytes`` runs no-grad). The learning-rate schedule continues over
    the cut moves; the frozen layers' moments are dropped, the others' kept.

    Args:
      model: a VGG or ResNet (anything with ``layer_names()`` and ``start``/``stop``).
      train: training set; its ``mean``/``std`` normalise both sets.
      test: evaluation set, or ``None``.
      train_config: optimizer, schedule, batch, augmentation, ``log_path``.
      scale_config: scores, policy and execution (default :class:`ScaleDownConfig`).
      variables: start from these (e.g. a grown network) instead of a fresh init.
      mesh: devices to train on (default: all, axis ``'data'``).
      on_epoch_end: called as ``on_epoch_end(state, record)`` after each epoch (the state
        is the suffix's; copy what you keep: the next step donates it).
      max_steps: stop at this global step.

    Returns:
      :class:`ScaleDownResult`. Each epoch record holds :func:`jnet2net.train.fit`'s fields
      (``epoch``, ``step``, ``wall_s``, ``epoch_s`` (training steps, score checks and cut
      moves), ``images_per_s``, ``lr``, ``train_loss``, ``train_acc``, ``test_loss``,
      ``test_acc``) and ``cut``, ``trained_layers``, ``frozen_now`` (layers frozen this
      epoch), ``mode``, ``augment`` (what the step in use at the epoch's end applies),
      ``forward_flops_per_example`` / ``backward_flops_per_example`` (of that step),
      ``epoch_flops`` / ``full_epoch_flops`` (this epoch's training work, cache builds
      included, and full training's), ``rebuild_s`` (cut moves: compiles, caches),
      ``cache_bytes``. ``log_path`` gets the records and, last, ``{"summary": ...}``.

    Raises:
      FloatingPointError: the loss became NaN or infinite.
    """
    scale_config = ScaleDownConfig() if scale_config is None else scale_config
    if not isinstance(scale_config, ScaleDownConfig):
        raise TypeError(
            f"scale_config must be a ScaleDownConfig, got {type(scale_config).__name__}"
        )
    check_fit_inputs(model, train, test, train_config)
    if max_steps is not None:
        max_steps = check_count("max_steps", max_steps, 0)
    if not hasattr(model, "layer_names"):
        raise TypeError(f"{type(model).__name__} has no layer_names(): it cannot be cut")
    names = tuple(model.layer_names())
    cut_limit(len(names), scale_config)  # at least one layer before the head
    mesh = data_mesh() if mesh is None else mesh
    check_batch_size(train_config.batch_size, mesh)
    spe = steps_per_epoch(len(train), train_config.batch_size)
    if variables is not None:  # put_replicated may alias them, and the step donates
        # Plain dicts: the steps return dicts, and each cut's step is compiled for one tree.
        variables = jax.tree.map(jnp.copy, unfreeze(variables))
    state = create_train_state(
        model, train_config, train.images, variables=variables, steps_per_epoch=spe
    )
    check_outputs_fit(model, state.variables, train, test)
    state = put_replicated(state, mesh)
    batch = train_config.batch_size
    end = train_config.epochs * spe
    end = end if max_steps is None else min(end, max_steps)
    log_path = train_config.log_path
    if log_path and os.path.exists(log_path):
        os.remove(log_path)

    # --- device data and evaluation
    images, labels = put_replicated((train.images, train.labels), mesh)
    permutation = jax.jit(epoch_permutation, static_argnums=(0, 2), out_shardings=replicated(mesh))
    eval_set, eval_step = None, None
    if test is not None:
        eval_batch = eval_batch_size(train_config.eval_batch_size, len(test), mesh)
        eval_set = put_eval_set(test, eval_batch, mesh)
        eval_step = make_indexed_eval_step(
            model,
            mean=train.mean,
            std=train.std,
            batch_size=eval_batch,
            compute_dtype=train_config.compute_dtype,
            mesh=mesh,
        )
    schedule = make_schedule(train_config, spe)
    compute_model = with_compute_dtype(model, train_config.compute_dtype)
    budget = scale_config.cache_max_bytes
    if budget is None:
        budget = cache_lib.device_cache_budget(mesh.devices.flat[0])
    setup = _Setup(
        compute_model,
        train_config,
        scale_config,
        train,
        images,
        labels,
        mesh,
        spe,
        jax.ShapeDtypeStruct((batch, *train.image_shape), compute_dtype(compute_model)),
        budget,
    )

    # --- the run
    frozen: dict = {}
    policy: PolicyState = initial_policy(len(names))
    scores = empty_history(names)
    totals = {"flops": 0.0, "forward": 0.0, "cache": 0.0, "rebuild_s": 0.0}
    events: list[Record] = []
    segments: list[tuple[int, int, float]] = []  # (cut, steps, seconds) between syncs
    history: list[Record] = []
    start = int(state.step)
    t_start = time.perf_counter()
    order = permutation(train_config.seed, start // spe, len(train))
    run, _ = _prepare(setup, state, frozen, None, 0, order)
    full = run.flops
    compile_s = time.perf_counter() - t_start
    snapshot = jax.tree.map(jnp.copy, state.params)
    total_params = _num_params(state.params)
    progress = ProgressBar(
        max(end - start, 0),
        desc=f"scale-down {type(model).__name__}",
        enabled=progress_enabled(train_config.progress),
    )
    with progress:
        for epoch in range(start // spe, train_config.epochs):
            lo, hi = max(start, epoch * spe), min(end, (epoch + 1) * spe)
            if lo >= hi:
                break
            order = permutation(train_config.seed, epoch, len(train))
            t_epoch = t_mark = time.perf_counter()
            mark, rebuild_s, flops_before = lo, 0.0, totals["flops"]
            frozen_now: list[str] = []
            step_metrics = []
            for step in range(lo, hi):
                state, metrics = run.step(state, *run.args, order)
                step_metrics.append(metrics)
                totals["flops"] += run.flops.total * batch
                totals["forward"] += run.flops.forward * batch
                progress.update()
                if (step + 1) % scale_config.check_every:
                    continue
                # --- score check: the only host sync between epoch ends
                raw = jax.device_get(layer_change_scores(snapshot, state.params, names))
                snapshot = jax.tree.map(jnp.copy, state.params)
                scores = record_scores(scores, step + 1, raw, scale_config.smoothing)
                segments.append((run.cut, step + 1 - mark, time.perf_counter() - t_mark))
                policy = update_policy(policy, scores, step + 1, scale_config)
                if policy.cut != run.cut and step + 1 < end:  # no compile for no step
                    t_rebuild, old = time.perf_counter(), run.cut
                    state, frozen = move_cut(model, state, frozen, policy.cut)
                    run, build_flops = _prepare(setup, state, frozen, run.cache, policy.cut, order)
                    totals["cache"] += build_flops
                    totals["flops"] += build_flops
                    totals["forward"] += build_flops
                    jax.block_until_ready((state, run.args))  # the cache build included
                    seconds = time.perf_counter() - t_rebuild
                    rebuild_s += seconds
                    frozen_now += names[old : run.cut]
                    events.append(
                        {
                            "step": step + 1,
                            "epoch": epoch + 1,
                            "from_cut": old,
                            "to_cut": run.cut,
                            "layers": list(names[old : run.cut]),
                            "mode": run.mode,
                            "rebuild_s": seconds,
                        }
                    )
                t_mark, mark = time.perf_counter(), step + 1
            means = epoch_means(step_metrics)
            if mark < hi:
                segments.append((run.cut, hi - mark, time.perf_counter() - t_mark))
            epoch_s = time.perf_counter() - t_epoch
            totals["rebuild_s"] += rebuild_s
            lr = float(schedule(hi - 1))
            if not (math.isfinite(means["loss"]) and math.isfinite(means["accuracy"])):
                raise nonfinite_loss_error(epoch + 1, lo, hi, lr, train_config)
            test_loss = test_acc = None
            if eval_set is not None:
                whole = _whole_variables(frozen, state)
                test_loss, test_acc = run_eval(eval_step, whole, eval_set, mesh)
            record: Record = {
                "epoch": epoch + 1,
                "step": hi,
                "wall_s": time.perf_counter() - t_start,
                "epoch_s": epoch_s,
                "images_per_s": (hi - lo) * batch / epoch_s,
                "lr": lr,
                "train_loss": means["loss"],
                "train_acc": means["accuracy"],
                "test_loss": test_loss,
                "test_acc": test_acc,
                "cut": run.cut,
                "trained_layers": len(names) - run.cut,
                "trained_params": _num_params(state.params),
                "frozen_now": frozen_now,
                "mode": run.mode,
                "augment": run.augment,
                "forward_flops_per_example": _json_float(run.flops.forward),
                "backward_flops_per_example": _json_float(run.flops.backward),
                "epoch_flops": _json_float(totals["flops"] - flops_before),
                "full_epoch_flops": _json_float(full.total * (hi - lo) * batch),
                "rebuild_s": rebuild_s,
                "cache_bytes": run.cache.nbytes if run.cache is not None else 0,
            }
            if not history:
                record["compile_s"] = compile_s
            history.append(record)
            progress.update(0, note=f"epoch {epoch + 1} cut {run.cut} loss {means['loss']:.3f}")
            if log_path:
                append_jsonl(log_path, record)
            if on_epoch_end is not None:
                on_epoch_end(state, record)
    steps = int(state.step) - start
    summary = _summary(
        model, run.cut, steps, batch, totals, full, segments, events, history, total_params
    )
    if log_path:
        append_jsonl(log_path, {"summary": summary})
    variables_out = _whole_variables(frozen, state)
    return ScaleDownResult(state, frozen, variables_out, run.cut, history, summary, scores)
