"""``fit_scale_down``: training that freezes a growing prefix of stages on a compute budget.

Sections: steps, the cut (moving it), compiling ahead, the training loop.

The network is cut at ``cut``: layers ``[0, cut)`` are *frozen* (kept in a separate
variables dict, run in eval mode with their running BatchNorm statistics, never
differentiated, no optimizer state), layers ``[cut, end)`` are *trained* (the
:class:`~jnet2net.train.TrainState` holds only their params, batch stats and moments).
Cuts sit at stage boundaries (:func:`~jnet2net.scale_down.stages.candidate_cuts`). Before
the first step, every candidate cut's step, cache move and BatchNorm recalibration is
compiled, as are the readiness check and the evaluation; training then only calls those
executables, so nothing is compiled while it runs, whatever the cut does.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.core import unfreeze
from jax.sharding import Mesh

from jnet2net.data.augment import augment_choices
from jnet2net.data.dataset import Dataset, normalize
from jnet2net.models.common import compute_dtype
from jnet2net.scale_down import cache as cache_lib
from jnet2net.scale_down.config import ScaleDownConfig
from jnet2net.scale_down.flops import cache_flops
from jnet2net.scale_down.policy import (
    NEVER,
    FreezePlan,
    compute_fraction,
    cut_at,
    layer_freeze_steps,
    plan_freezes,
    ramp_multipliers,
    step_times,
    update_plan,
)
from jnet2net.scale_down.recalibrate import recalibration_fn
from jnet2net.scale_down.scores import (
    ScoreHistory,
    change_norms,
    empty_history,
    group_changes,
    readiness,
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
from jnet2net.scale_down.stages import candidate_cuts, score_groups
from jnet2net.train.batches import augment_key, batch_indices, epoch_permutation, stream_key
from jnet2net.train.config import TrainConfig
from jnet2net.train.cost import CompiledStep, compile_step, is_compiled
from jnet2net.train.loop import (
    call_on_step,
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
from jnet2net.train.progress import (
    ProgressBar,
    append_jsonl,
    filter_jsonl,
    progress_enabled,
    progress_lines_enabled,
)
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

    Read off the augmentation's own choices (:func:`~jnet2net.data.augment_choices`; the
    flips do not depend on the crop), so a cached step takes the mirrored view exactly
    where the no-grad step of the same step number flips the image.
    """
    return augment_choices(key, n, crop_padding=0, flip=True)[1].astype(jnp.int32)


def scaled_updates(
    names: Sequence[str], updates: Any, step: jax.Array, freeze_at: jax.Array, ramp_steps: int
) -> Any:
    """``updates`` (keyed by layer name) times each layer's :func:`ramp_multipliers`."""
    multipliers = ramp_multipliers(step, freeze_at, ramp_steps)
    index = {name: i for i, name in enumerate(names)}
    return {
        name: jax.tree.map(lambda u, m=multipliers[index[name]]: u * m.astype(u.dtype), tree)
        for name, tree in updates.items()
    }


def suffix_update_fn(
    model: nn.Module, config: TrainConfig, cut: int, ramp_steps: int = 0
) -> Callable[[TrainState, jax.Array, jax.Array, jax.Array], tuple[TrainState, Metrics]]:
    """``(state, h, labels, freeze_at) -> (state, {'loss', 'accuracy'})``: one suffix step.

    ``h`` is the input of layer ``cut`` (normalised images at ``cut == 0``); ``state``
    holds the params, batch stats and optimizer state of layers ``[cut, end)`` only, so
    the gradient, the backward pass and the update cover the suffix alone. Each layer's
    update is multiplied by its learning-rate ramp (:func:`ramp_multipliers` of
    ``freeze_at (layers,)`` int32 and ``ramp_steps``).
    """
    names = model.layer_names()

    def update(
        state: TrainState, h: jax.Array, labels: jax.Array, freeze_at: jax.Array
    ) -> tuple[TrainState, Metrics]:
        def loss_fn(params: Any) -> tuple[jax.Array, tuple[Any, jax.Array]]:
            logits, stats = suffix_apply(model, params, state.batch_stats, h, cut, train=True)
            losses = cross_entropy_loss(logits, labels, label_smoothing=config.label_smoothing)
            return losses.mean(), (stats, logits)

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (stats, logits)), grads = grad_fn(state.params)
        updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
        updates = scaled_updates(names, updates, state.step, freeze_at, ramp_steps)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            opt_state=opt_state,
            batch_stats=stats if stats else {},
        )
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
    ramp_steps: int = 0,
    cached: bool = False,
    random_view: bool = False,
    mesh: Mesh | None = None,
) -> Callable[..., tuple[TrainState, Metrics]]:
    """The jitted step that trains layers ``[cut, end)`` on device data (state donated).

    No-grad (``cached=False``): ``(state, frozen, images, labels, permutation,
    freeze_at)``; the batch ``state.step % steps_per_epoch`` of ``permutation`` is
    gathered from ``images (n, h, w, c)`` uint8, augmented as ``config.augment`` says,
    normalised, run through the frozen prefix in eval mode without gradient, then through
    the suffix with gradient.

    Cached (``cached=True``): ``(state, activations, labels, permutation, freeze_at)``
    where ``activations (n_pad, views, ...)`` are an
    :class:`~jnet2net.scale_down.cache.ActivationCache`'s; with two views each example
    takes the mirrored one where the no-grad step of the same step number flips it
    (:func:`flip_choices` of ``augment_key(seed, step)``), with one view (or when
    ``config.augment`` has no flips: ``'crop'``, ``'none'``) the plain one. With
    ``random_view`` (a cache of augmented views) each example takes a view drawn uniformly
    with ``augment_key(seed, step)``.

    ``freeze_at (layers,)`` int32 gives each layer's freeze step; its updates ramp to zero
    over the ``ramp_steps`` before it (:func:`suffix_update_fn`).

    Args:
      model: the network in its compute dtype.
      config: batch size, augmentation, label smoothing, seed.
      cut: number of frozen layers.
      mean, std: normalisation of the images.
      steps_per_epoch: batches per epoch.
      ramp_steps: length of the learning-rate ramps.
      cached: read the prefix's output from a cache.
      random_view: pick cached views at random (augmented views) instead of by flips.
      mesh: shard batches over ``'data'``, replicate the rest (the cache stays sharded).

    Returns:
      the jitted step ``-> (state, {'loss', 'accuracy'})``.
    """
    update = suffix_update_fn(model, config, cut, ramp_steps)
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
        freeze_at: jax.Array,
    ) -> tuple[TrainState, Metrics]:
        TRACE_COUNTS["scale_down_step"] += 1
        index = indices(state, permutation)
        x = augment_batch(config, augment_key(config.seed, state.step), images[index])
        h = prefix_apply(model, frozen, normalize(x, mean, std, dtype), cut)
        return update(state, h, labels[index], freeze_at)

    def cached_step(
        state: TrainState,
        activations: jax.Array,
        labels: jax.Array,
        permutation: jax.Array,
        freeze_at: jax.Array,
    ) -> tuple[TrainState, Metrics]:
        TRACE_COUNTS["scale_down_step"] += 1
        index = indices(state, permutation)
        view, key = None, augment_key(config.seed, state.step)
        if random_view:
            view = jax.random.randint(key, (batch_size,), 0, activations.shape[1])
        elif activations.shape[1] > 1 and config.augment in FLIP_AUGMENTS:
            view = flip_choices(key, batch_size)
        h = cache_lib.gather_views(activations, index, view)
        return update(state, h, labels[index], freeze_at)

    if mesh is None:
        return jax.jit(cached_step if cached else nograd_step, donate_argnums=0)
    rep, rows = replicated(mesh), batch_sharding(mesh)
    if cached:
        shardings = (rep, rows, rep, rep, rep)
        return jax.jit(
            cached_step, donate_argnums=0, in_shardings=shardings, out_shardings=(rep, rep)
        )
    return jax.jit(nograd_step, donate_argnums=0, in_shardings=rep, out_shardings=(rep, rep))


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


def whole_variables(frozen: Variables, state: TrainState) -> dict:
    """The whole network's variables, without an empty ``batch_stats`` (as ``model.init``).

    Its tree is the same at every cut, so functions of it compile once.
    """
    merged = merge_variables(frozen, {"params": state.params, "batch_stats": state.batch_stats})
    return variables_of(merged["params"], merged.get("batch_stats", {}))


def _with_stats(frozen: dict, stats: dict) -> dict:
    """``frozen`` with the ``batch_stats`` of the layers in ``stats`` replaced."""
    if not stats:
        return frozen
    return {**frozen, "batch_stats": {**frozen["batch_stats"], **stats}}


# --- compiling ahead ---------------------------------------------------------------------


class CutRunner(NamedTuple):
    """Everything one candidate cut runs, compiled before training.

    Attributes:
      cut: frozen layers ``[0, cut)``.
      mode: ``'nograd'`` or ``'cache'``.
      step: the compiled training step and its FLOPs per step (whole mesh).
      cache: the compiled cache move to this cut (cache mode), else ``None``.
      cache_from: the cut the cache move starts from (0: the images).
      views: cached views (0 in no-grad mode).
      recalibrate: the compiled BatchNorm recalibration of the stage ending at this cut,
        or ``None`` (no BatchNorm in the stage, or ``bn_batches=0``).
      move_flops: one-off FLOPs of freezing this stage (cache move, recalibration).
      augment: what the step's inputs see of the augmentation.
    """

    cut: int
    mode: str
    step: CompiledStep
    cache: CompiledStep | None
    cache_from: int
    views: int
    recalibrate: CompiledStep | None
    move_flops: float
    augment: str


class _Setup(NamedTuple):
    """What every cut's functions are built from (fixed for the run)."""

    model: nn.Module  # in the compute dtype
    train_config: TrainConfig
    scale_config: ScaleDownConfig
    train: Dataset
    images: jax.Array  # (n, h, w, c) uint8, replicated
    labels: jax.Array  # (n,) int32, replicated
    mesh: Mesh
    steps_per_epoch: int
    ramp_steps: int
    cache_budget: int | None  # bytes over all devices


def _augment_name(train_config: TrainConfig, mode: str, views: int, augmented: bool = False) -> str:
    if train_config.augment == "none":
        return "none"
    if mode == "nograd":
        return train_config.augment
    if augmented:
        return f"{train_config.augment} ({views} cached views)"
    return "flip (cached mirror view)" if views > 1 else "none (cached)"


class _Compiler:
    """:func:`compile_step` that adds the seconds of fresh compiles."""

    def __init__(self, devices: int) -> None:
        self.devices = devices
        self.seconds = 0.0

    def __call__(self, jitted: Any, *args: Any) -> CompiledStep:
        fresh = not is_compiled(jitted, *args, devices=self.devices)
        compiled = compile_step(jitted, *args, devices=self.devices)
        if fresh:
            self.seconds += compiled.compile_s
        return compiled


def _cache_spec(setup: _Setup, frozen: dict, cut: int, views: int) -> jax.ShapeDtypeStruct:
    """Shape, dtype and sharding of the cache at ``cut``."""
    one = jax.ShapeDtypeStruct((1, *setup.train.image_shape), compute_dtype(setup.model))
    feature = jax.eval_shape(lambda f, x: prefix_apply(setup.model, f, x, cut), frozen, one)
    rows = cache_lib.padded_rows(len(setup.train), setup.mesh)
    return jax.ShapeDtypeStruct(
        (rows, views, *feature.shape[1:]), feature.dtype, sharding=batch_sharding(setup.mesh)
    )


def _layer_flops(setup: _Setup, whole: dict, start: int, stop: int, rows: tuple) -> float:
    """Eval-mode FLOPs per example of layers ``[start, stop)`` on inputs of shape ``rows``."""
    batch = jax.ShapeDtypeStruct((setup.train_config.batch_size, *rows), compute_dtype(setup.model))
    return cache_flops(setup.model, whole, start, stop, batch, how="lowered")


def _augmented_views(setup: _Setup) -> cache_lib.AugmentedViews | None:
    """The augmented views a cache holds (``None``: plain and mirrored images)."""
    config, train_config = setup.scale_config, setup.train_config
    if config.cache_augment != "views" or train_config.augment == "none":
        return None
    crops = train_config.augment in ("crop_flip", "crop")
    return cache_lib.AugmentedViews(
        stream_key(train_config.seed, "cache"),
        config.cache_views,
        train_config.crop_padding if crops else 0,
        train_config.augment in FLIP_AUGMENTS,
    )


def _compile_cache(
    setup: _Setup, state: TrainState, cut: int, start: int, views: int, compiler: _Compiler
) -> tuple[CompiledStep, jax.ShapeDtypeStruct, float]:
    """The compiled cache move ``start -> cut``, the cache's spec and the move's FLOPs."""
    model, train = setup.model, setup.train
    augmented = _augmented_views(setup)
    move = cache_lib.cache_fn(
        model,
        start,
        cut,
        mean=train.mean,
        std=train.std,
        flips=views > 1 and augmented is None and not start,
        views=None if start else augmented,
        chunk=setup.train_config.eval_batch_size,
        mesh=setup.mesh,
    )
    frozen = move_cut(model, state, {}, cut)[1]
    spec = _cache_spec(setup, frozen, cut, views)
    if start:
        source = _cache_spec(setup, move_cut(model, state, {}, start)[1], start, views)
        rows = source.shape[2:]
    else:
        source, rows = setup.images, train.image_shape
    # XLA's analysis of a loop (the chunks) counts its body once: count the layers apart.
    per_example = _layer_flops(setup, whole_variables({}, state), start, cut, rows)
    return compiler(move, frozen, source), spec, per_example * spec.shape[0] * views


def _compile_recalibration(
    setup: _Setup, state: TrainState, start: int, cut: int, order: jax.Array, compiler: _Compiler
) -> tuple[CompiledStep | None, float]:
    """The compiled recalibration of stage ``[start, cut)`` and its FLOPs (``None``: none)."""
    model, train_config = setup.model, setup.train_config
    batches = min(setup.scale_config.bn_batches, len(setup.train) // train_config.batch_size)
    whole = whole_variables({}, state)
    stats = whole.get("batch_stats", {})
    if not batches or not any(name in stats for name in model.layer_names()[start:cut]):
        return None, 0.0
    fn = recalibration_fn(
        model,
        start,
        cut,
        mean=setup.train.mean,
        std=setup.train.std,
        batch_size=train_config.batch_size,
        batches=batches,
        mesh=setup.mesh,
    )
    # A forward pass of layers [0, cut) per batch, and two more for the averaging weights.
    per_example = _layer_flops(setup, whole, 0, cut, setup.train.image_shape)
    flops = per_example * train_config.batch_size * (batches + 2)
    return compiler(fn, whole, setup.images, order), flops


def compile_runners(
    setup: _Setup,
    state: TrainState,
    cuts: Sequence[int],
    order: jax.Array,
    freeze_at: jax.Array,
    compiler: _Compiler,
) -> list[CutRunner]:
    """The runner of cut 0 and of every candidate cut, everything compiled.

    A cut runs from a cache in cache mode when the cache fits ``cache_budget``; its cache
    is moved on from the previous cut's when that one was cached too, else built from the
    images.

    Args:
      setup: the run's fixed inputs.
      state: the state at cut 0 (replicated); only its shapes and shardings are used.
      cuts: the candidate cuts, increasing.
      order: an epoch's permutation (replicated).
      freeze_at: ``(layers,)`` int32 freeze steps (replicated).
      compiler: compiles and counts the seconds.

    Returns:
      ``[runner of cut 0, runner of cuts[0], ...]``.
    """
    config, train_config = setup.scale_config, setup.train_config
    flips = config.cache_augment == "flip" and train_config.augment in FLIP_AUGMENTS
    augmented = _augmented_views(setup)
    views = augmented.count if augmented else (2 if flips else 1)
    common = {
        "mean": setup.train.mean,
        "std": setup.train.std,
        "steps_per_epoch": setup.steps_per_epoch,
        "ramp_steps": setup.ramp_steps,
        "mesh": setup.mesh,
    }
    runners: list[CutRunner] = []
    previous, previous_cached = 0, False
    for cut in (0, *cuts):
        cut_state, frozen = move_cut(setup.model, state, {}, cut)
        cached = False
        if cut and config.mode == "cache":
            spec = _cache_spec(setup, frozen, cut, views)
            need = cache_lib.cache_nbytes(spec.shape, spec.dtype, 1)
            cached = setup.cache_budget is None or need <= setup.cache_budget
        jitted = make_scaled_train_step(
            setup.model,
            train_config,
            cut,
            cached=cached,
            random_view=cached and augmented is not None,
            **common,
        )
        cache, cache_from, move_flops = None, 0, 0.0
        if cached:
            cache_from = previous if previous_cached else 0
            cache, spec, move_flops = _compile_cache(setup, state, cut, cache_from, views, compiler)
            step = compiler(jitted, cut_state, spec, setup.labels, order, freeze_at)
        else:
            args = (frozen, setup.images, setup.labels, order, freeze_at)
            step = compiler(jitted, cut_state, *args)
        recalibrate = None
        if cut:
            recalibrate, flops = _compile_recalibration(
                setup, state, previous, cut, order, compiler
            )
            move_flops += flops
        mode = "cache" if cached else "nograd"
        used_views = views if cached else 0
        runners.append(
            CutRunner(
                cut,
                mode,
                step,
                cache,
                cache_from,
                used_views,
                recalibrate,
                move_flops,
                _augment_name(train_config, mode, used_views, augmented is not None),
            )
        )
        previous, previous_cached = cut, cached
    return runners


def freeze_stages(
    model: nn.Module,
    moved: Sequence[CutRunner],
    state: TrainState,
    frozen: dict,
    cache: cache_lib.ActivationCache | None,
    images: jax.Array,
    order: jax.Array,
) -> tuple[TrainState, dict, cache_lib.ActivationCache | None]:
    """Freezes the stages ending at ``moved``'s cuts, in order (their ramps are over).

    For each: its BatchNorm statistics are recalibrated on the epoch's first batches, its
    layers move from ``state`` to ``frozen``, and the cache (cache mode) moves on to its
    cut. Only compiled functions run.

    Returns:
      ``(state, frozen, cache)`` at the last cut (``cache`` is ``None`` unless it runs
      from a cache).
    """
    for runner in moved:
        stats = {}
        if runner.recalibrate is not None:
            stats = runner.recalibrate.call(whole_variables(frozen, state), images, order)
        state, frozen = move_cut(model, state, frozen, runner.cut)
        frozen = _with_stats(frozen, stats)
        if runner.cache is not None:
            source = cache.activations if runner.cache_from else images
            cache = cache_lib.ActivationCache(runner.cut, runner.cache.call(frozen, source))
    return state, frozen, cache if moved[-1].mode == "cache" else None


# --- the training loop ----------------------------------------------------------------------


class ScaleDownCheckpoint(NamedTuple):
    """Everything a scale-down run needs to continue exactly where it stopped.

    The activation cache is not kept: it is a function of ``frozen`` and the images, and
    is rebuilt with the same compiled moves.

    Attributes:
      state: the trained suffix's state (its ``step`` is where the run continues).
      frozen: variables of the frozen prefix.
      plan: the freeze plan (deadlines, freezes brought forward, readiness count).
      scores: the readiness checks so far.
      snapshot: ``params`` of the whole network at the last check (``None``: none yet).
      pending_step: step of the last check, whose norms are read at the next one.
      pending_norms: its :func:`~jnet2net.scale_down.scores.change_norms` (or ``None``).
      totals: cumulative ``train_flops``, ``train_s``, ``compile_s``, ``move_s``,
        ``move_flops``.
      events: the freezes so far.
    """

    state: TrainState
    frozen: dict
    plan: FreezePlan
    scores: ScoreHistory
    snapshot: Any
    pending_step: int | None
    pending_norms: Any
    totals: dict[str, float]
    events: list[Record]


def _abstract_full_state(state: TrainState, frozen: dict, mesh: Mesh) -> TrainState:
    """Shapes and shardings of the state at cut 0 (every layer trained), from any cut's."""
    rep = replicated(mesh)

    def spec(x: Any) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep)

    whole = jax.tree.map(spec, whole_variables(frozen, state))
    opt_state = jax.tree.map(spec, jax.eval_shape(state.tx.init, whole["params"]))
    return state.replace(
        step=spec(state.step),
        params=whole["params"],
        opt_state=opt_state,
        batch_stats=whole.get("batch_stats", {}),
    )


def _trained_from(model: nn.Module, state: TrainState) -> int:
    """The cut of ``state``: the index of its first layer."""
    names = model.layer_names()
    return next(i for i, name in enumerate(names) if name in state.params)


def rebuild_cache(
    model: nn.Module, runners: Sequence[CutRunner], cut: int, frozen: dict, images: jax.Array
) -> cache_lib.ActivationCache:
    """The cache at ``cut`` from the images, by the same compiled moves as during the run."""
    by_cut = {r.cut: r for r in runners}
    chain = [by_cut[cut]]
    while chain[-1].cache_from:
        chain.append(by_cut[chain[-1].cache_from])
    activations = images
    for runner in reversed(chain):
        prefix, _ = split_variables(model, frozen, runner.cut)
        activations = runner.cache.call(prefix, activations)
    return cache_lib.ActivationCache(cut, activations)


def _trim_log(path: str, start: int, steps_per_epoch: int) -> None:
    """Keeps the records of the epochs finished by ``start`` (a resumed run logs the rest)."""
    filter_jsonl(path, lambda record: record.get("epoch", math.inf) * steps_per_epoch <= start)


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
      scores: every readiness check (empty with ``ready_ratio=None``).
      plan: the freeze plan at the end (deadlines and the freeze steps used).
      checkpoint: what :func:`fit_scale_down` needs to continue the run (``resume=``).
    """

    state: TrainState
    frozen: dict
    variables: dict
    cut: int
    history: list[Record]
    summary: Record
    scores: ScoreHistory
    plan: FreezePlan
    checkpoint: ScaleDownCheckpoint


def _num_params(params: Any) -> int:
    return sum(int(leaf.size) for leaf in jax.tree.leaves(params))


def _ratio(a: float, b: float) -> float | None:
    return a / b if b and math.isfinite(a) and math.isfinite(b) else None


def _json_float(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _steady_step_s(segments: list[tuple[int, int, float]], cut: int) -> float | None:
    """Seconds per step at ``cut`` over its timed segments (the run's first one left out
    when there are others: it holds the first steps' warm-up)."""
    timed = [(steps, seconds) for c, steps, seconds in segments[1:] if c == cut and steps]
    if not timed:
        timed = [(steps, seconds) for c, steps, seconds in segments[:1] if c == cut and steps]
    if not timed:
        return None
    return sum(seconds for _, seconds in timed) / sum(steps for steps, _ in timed)


def _summary(
    model: nn.Module,
    runners: Sequence[CutRunner],
    cut: int,
    steps: int,
    totals: dict[str, float],
    segments: list[tuple[int, int, float]],
    events: list[Record],
    history: list[Record],
    plan: FreezePlan,
    planned_compute: float,
    total_params: int,
) -> Record:
    full_flops = runners[0].step.flops * steps
    flops_ratio = _ratio(totals["train_flops"], full_flops)
    step_s = {str(r.cut): _steady_step_s(segments, r.cut) for r in runners}
    full_step_s = step_s["0"]
    train_s = totals["train_s"]
    full_train_s = None if full_step_s is None else full_step_s * steps
    last = history[-1] if history else {}
    names = model.layer_names()
    return {
        "epochs": len(history),
        "steps": steps,
        "cut": cut,
        "frozen": list(names[:cut]),
        "trained": list(names[cut:]),
        "trained_params": last.get("trained_params"),
        "total_params": total_params,
        "candidate_cuts": [r.cut for r in runners[1:]],
        "deadlines": [None if d == NEVER else d for d in plan.deadlines],
        "freeze_steps": [None if f == NEVER else f for f in plan.freeze_steps],
        "early": list(plan.early),
        "planned_compute": planned_compute,
        "events": events,
        "cut_step_flops": {str(r.cut): _json_float(r.step.flops) for r in runners},
        "cut_step_s": step_s,
        "train_flops": _json_float(totals["train_flops"]),
        "full_train_flops": _json_float(full_flops),
        "flops_ratio": flops_ratio,
        "flops_saved": None if flops_ratio is None else 1.0 - flops_ratio,
        "move_flops": _json_float(totals["move_flops"]),
        "train_s": train_s,
        "move_s": totals["move_s"],
        "compile_s": totals["compile_s"],
        "total_s": train_s + totals["compile_s"],
        "full_step_s": full_step_s,
        "full_train_s_estimate": full_train_s,
        "speedup_estimate": None if not full_train_s or not train_s else full_train_s / train_s,
        "test_acc": last.get("test_acc"),
        "test_loss": last.get("test_loss"),
    }


def _check_scale_inputs(model: nn.Module, scale_config: Any) -> ScaleDownConfig:
    scale_config = ScaleDownConfig() if scale_config is None else scale_config
    if not isinstance(scale_config, ScaleDownConfig):
        raise TypeError(
            f"scale_config must be a ScaleDownConfig, got {type(scale_config).__name__}"
        )
    if not hasattr(model, "layer_names"):
        raise TypeError(f"{type(model).__name__} has no layer_names(): it cannot be cut")
    return scale_config


def _compiled_scores(names: tuple[str, ...]) -> Any:
    """Jitted ``(previous, current) -> (change_norms, a copy of current)``."""

    def scores(previous: Any, current: Any) -> tuple[jax.Array, Any]:
        TRACE_COUNTS["scale_down_scores"] += 1
        return change_norms(previous, current, names), jax.tree.map(jnp.copy, current)

    return jax.jit(scores)


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
    resume: ScaleDownCheckpoint | None = None,
    on_step: Callable[[int], None] | None = None,
) -> ScaleDownResult:
    """Trains ``model`` and freezes a growing prefix of its stages on a compute budget.

    Before the first step, the step of every candidate cut (and its cache move and
    BatchNorm recalibration) is compiled and its FLOPs read from the executable; the
    deadlines follow from them (:func:`~jnet2net.scale_down.policy.plan_freezes`), and
    readiness checks may bring freezes forward (see :class:`ScaleDownConfig`). A stage's
    learning rate ramps to zero before its freeze; then its BatchNorm statistics are
    recalibrated and it joins the frozen prefix, which runs in eval mode, either every
    step without gradient (``mode='nograd'``) or from a cache of its outputs sharded by
    example over the mesh (``mode='cache'``; what it keeps of the augmentation as
    ``cache_augment`` says; a cut whose cache exceeds ``cache_max_bytes`` runs no-grad).
    The learning-rate schedule continues over the freezes; the frozen layers' moments are
    dropped, the others' kept.

    Args:
      model: a VGG or ResNet (anything with ``layer_names()`` and ``start``/``stop``).
      train: training set; its ``mean``/``std`` normalise both sets.
      test: evaluation set, or ``None``.
      train_config: optimizer, schedule, batch, augmentation, ``log_path``.
      scale_config: budget, readiness and execution (default :class:`ScaleDownConfig`).
      variables: start from these (e.g. a grown network) instead of a fresh init.
      mesh: devices to train on (default: all, axis ``'data'``).
      on_epoch_end: called as ``on_epoch_end(state, record)`` after each epoch (the state
        is the suffix's; copy what you keep: the next step donates it).
      max_steps: stop at this global step (the plan is for the whole schedule).
      resume: continue the run that gave this checkpoint (:attr:`ScaleDownResult.
        checkpoint`) with the same data and configs: the result, records and log continue
        it bitwise (the log keeps the epochs finished before the checkpoint).
      on_step: called as ``on_step(step)`` before each training step, as in
        :func:`jnet2net.train.fit` (what it raises ends the run there).

    Returns:
      :class:`ScaleDownResult`. Each epoch record holds :func:`jnet2net.train.fit`'s fields
      (``epoch``, ``step``, ``wall_s``, ``epoch_s`` (training steps, readiness checks and
      freezes), ``images_per_s``, ``lr``, ``train_loss``, ``train_acc``, ``test_loss``,
      ``test_acc``, ``step_flops`` (of the step in use at the epoch's end), and the
      cumulative ``train_flops``, ``train_s``, ``compile_s``) and ``cut``,
      ``trained_layers``, ``trained_params``, ``frozen_now`` (layers frozen this epoch),
      ``mode``, ``augment``, ``epoch_flops`` / ``full_epoch_flops`` (this epoch's
      training work, freezes included, and full training's), ``move_s`` (freezes:
      recalibration, cache moves), ``cache_bytes``. ``log_path`` gets the records and,
      last, ``{"summary": ...}``.

    Raises:
      ValueError: the compute target cannot be met (see ``plan_freezes``), or a setting
        does not fit the network.
      FloatingPointError: the loss became NaN or infinite.
    """
    scale_config = _check_scale_inputs(model, scale_config)
    check_fit_inputs(model, train, test, train_config)
    if max_steps is not None:
        max_steps = check_count("max_steps", max_steps, 0)
    if train_config.max_steps is not None:
        limit = train_config.max_steps
        max_steps = limit if max_steps is None else min(limit, max_steps)
    if train_config.eval_every_steps is not None:
        raise ValueError(
            "TrainConfig.eval_every_steps is not supported by scale-down training yet; "
            "leave it unset (records come at epoch ends)"
        )
    names = tuple(model.layer_names())
    cuts = candidate_cuts(model, scale_config.max_stages)
    groups = score_groups(model)
    mesh = data_mesh() if mesh is None else mesh
    check_batch_size(train_config.batch_size, mesh)
    spe = steps_per_epoch(len(train), train_config.batch_size)
    total_steps = train_config.epochs * spe
    times = step_times(scale_config, total_steps)
    if resume is not None and not isinstance(resume, ScaleDownCheckpoint):
        raise TypeError(f"resume must be a ScaleDownCheckpoint, got {type(resume).__name__}")
    if resume is not None and variables is not None:
        raise ValueError("pass variables or resume, not both")
    if resume is not None:
        state, frozen = put_replicated((resume.state, resume.frozen), mesh)
    else:
        if variables is not None:  # put_replicated may alias them, and the step donates
            # Plain dicts: the steps return dicts, and each cut's step is compiled for one tree.
            variables = jax.tree.map(jnp.copy, unfreeze(variables))
        state = create_train_state(
            model, train_config, train.images, variables=variables, steps_per_epoch=spe
        )
        state = put_replicated(state, mesh)
        state, frozen = move_cut(model, state, {}, 0)  # the trees the steps are compiled for
    check_outputs_fit(model, whole_variables(frozen, state), train, test)
    start = int(state.step)
    batch = train_config.batch_size
    end = total_steps if max_steps is None else min(total_steps, max_steps)
    log_path = train_config.log_path
    if log_path and os.path.exists(log_path):
        if resume is None:
            os.remove(log_path)
        else:
            _trim_log(log_path, start, spe)
    t_start = time.perf_counter()

    # --- device data, and everything compiled before the first step
    images, labels = put_replicated((train.images, train.labels), mesh)
    permutation = jax.jit(epoch_permutation, static_argnums=(0, 2), out_shardings=replicated(mesh))
    order = permutation(train_config.seed, start // spe, len(train))
    budget = scale_config.cache_max_bytes
    if budget is None:  # the cache is sharded: each device holds its share
        per_device = cache_lib.device_cache_budget(mesh.devices.flat[0])
        budget = None if per_device is None else per_device * mesh.size
    compute_model = with_compute_dtype(model, train_config.compute_dtype)
    setup = _Setup(
        compute_model,
        train_config,
        scale_config,
        train,
        images,
        labels,
        mesh,
        spe,
        times.ramp,
        budget,
    )
    compiler = _Compiler(mesh.size)
    freeze_at = put_replicated(np.full((len(names),), NEVER, np.int32), mesh)
    full_state = _abstract_full_state(state, frozen, mesh)
    runners = compile_runners(setup, full_state, cuts, order, freeze_at, compiler)
    score_fn = None
    if scale_config.ready_ratio is not None and cuts:
        params = full_state.params
        score_fn = compiler(_compiled_scores(names), params, params)
    eval_set = eval_fn = None
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
        zero = np.zeros((), np.float32)
        sums = put_replicated({"loss": zero, "correct": zero, "count": zero}, mesh)
        eval_args = (eval_set.images, eval_set.labels, np.int32(0), sums)
        whole = variables_of(full_state.params, full_state.batch_stats)
        eval_fn = compiler(eval_step, whole, *eval_args).call
    step_costs = [r.step.flops for r in runners]
    move_costs = [r.move_flops for r in runners[1:]]
    if resume is None:
        plan = plan_freezes(step_costs, total_steps, scale_config, move_flops=move_costs)
        totals = dict.fromkeys(("train_flops", "train_s", "compile_s", "move_s", "move_flops"), 0.0)
    else:
        plan, totals = resume.plan, dict(resume.totals)
    planned_compute = compute_fraction(step_costs, plan.deadlines, total_steps, move_costs)
    freeze_at = put_replicated(layer_freeze_steps(plan, cuts, len(names)), mesh)
    totals["compile_s"] += compiler.seconds

    # --- the run
    schedule = make_schedule(train_config, spe)
    runner = next(r for r in runners if r.cut == _trained_from(model, state))
    cache = None
    if runner.mode == "cache":
        cache = rebuild_cache(model, runners, runner.cut, frozen, images)
    scores = empty_history([g.name for g in groups])
    snapshot = pending = None
    events: list[Record] = []
    if resume is not None:
        scores, events = resume.scores, list(resume.events)
        if resume.snapshot is not None:
            snapshot = put_replicated(resume.snapshot, mesh)
        if resume.pending_norms is not None:
            pending = (resume.pending_step, put_replicated(resume.pending_norms, mesh))
    segments: list[tuple[int, int, float]] = []  # (cut, steps, seconds) between syncs
    history: list[Record] = []
    total_params = _num_params(state.params)
    progress = ProgressBar(
        max(end, 0),
        desc=f"scale-down {type(model).__name__}",
        enabled=progress_enabled(train_config.progress),
        lines=progress_lines_enabled(train_config.progress),
        batch_size=train_config.batch_size,
    )

    def step_args() -> tuple:
        if runner.mode == "cache":
            return (cache.activations, labels)
        return (frozen, images, labels)

    with progress:
        for epoch in range(start // spe, train_config.epochs):
            lo, hi = max(start, epoch * spe), min(end, (epoch + 1) * spe)
            if lo >= hi:
                break
            if epoch != start // spe:
                order = permutation(train_config.seed, epoch, len(train))
            t_epoch = t_mark = time.perf_counter()
            mark, move_s, flops_before = lo, 0.0, totals["train_flops"]
            frozen_now: list[str] = []
            step_metrics = []
            args = step_args()
            for step in range(lo, hi):
                target = cut_at(plan, cuts, step)
                if target != runner.cut:
                    # --- freeze: the ramp is over; recalibrate, move the cut, move the cache
                    jax.block_until_ready(state)
                    t_move = time.perf_counter()
                    segments.append((runner.cut, step - mark, t_move - t_mark))
                    old = runner.cut
                    moved = [r for r in runners if old < r.cut <= target]
                    state, frozen, cache = freeze_stages(
                        model, moved, state, frozen, cache, images, order
                    )
                    runner = moved[-1]
                    totals["move_flops"] += sum(r.move_flops for r in moved)
                    totals["train_flops"] += sum(r.move_flops for r in moved)
                    args = step_args()
                    jax.block_until_ready((state, frozen, args))
                    seconds = time.perf_counter() - t_move
                    move_s += seconds
                    totals["move_s"] += seconds
                    frozen_now += names[old : runner.cut]
                    early = [e for c, e in zip(cuts, plan.early, strict=True) if old < c <= target]
                    events.append(
                        {
                            "step": step,
                            "epoch": epoch + 1,
                            "from_cut": old,
                            "to_cut": runner.cut,
                            "layers": list(names[old : runner.cut]),
                            "mode": runner.mode,
                            "early": any(early),
                            "move_s": seconds,
                        }
                    )
                    t_mark, mark = time.perf_counter(), step
                if on_step is not None:
                    call_on_step(on_step, step, state, None)
                state, metrics = runner.step.call(state, *args, order, freeze_at)
                step_metrics.append(metrics)
                totals["train_flops"] += runner.step.flops
                progress.update()
                if score_fn is None or (step + 1) % scale_config.check_every:
                    continue
                # --- readiness check: read the previous check's norms (long computed), start
                # this one's; no host sync waits for the steps in flight.
                current = whole_variables(frozen, state)["params"]
                if snapshot is not None:
                    if pending is not None:
                        before = plan.freeze_steps
                        plan, scores = _read_check(
                            plan, scores, pending, step + 1, groups, cuts, scale_config, total_steps
                        )
                        if plan.freeze_steps != before:  # a freeze came forward
                            steps_now = layer_freeze_steps(plan, cuts, len(names))
                            freeze_at = put_replicated(steps_now, mesh)
                    norms, snapshot = score_fn.call(snapshot, current)
                    norms.copy_to_host_async()
                    pending = (step + 1, norms)
                else:
                    _, snapshot = score_fn.call(current, current)
            means = epoch_means(step_metrics)
            if mark < hi:
                segments.append((runner.cut, hi - mark, time.perf_counter() - t_mark))
            epoch_s = time.perf_counter() - t_epoch
            totals["train_s"] += epoch_s
            lr = float(schedule(hi - 1))
            if not (math.isfinite(means["loss"]) and math.isfinite(means["accuracy"])):
                raise nonfinite_loss_error(epoch + 1, lo, hi, lr, train_config)
            test_loss = test_acc = None
            if eval_set is not None:
                test_loss, test_acc = run_eval(
                    eval_fn, whole_variables(frozen, state), eval_set, mesh
                )
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
                "step_flops": _json_float(runner.step.flops),
                "cut": runner.cut,
                "trained_layers": len(names) - runner.cut,
                "trained_params": _num_params(state.params),
                "frozen_now": frozen_now,
                "mode": runner.mode,
                "augment": runner.augment,
                "epoch_flops": _json_float(totals["train_flops"] - flops_before),
                "full_epoch_flops": _json_float(runners[0].step.flops * (hi - lo)),
                "move_s": move_s,
                "cache_bytes": cache.nbytes if cache is not None else 0,
                "train_flops": _json_float(totals["train_flops"]),
                "train_s": totals["train_s"],
                "compile_s": totals["compile_s"],
            }
            history.append(record)
            progress.update(0, note=f"epoch {epoch + 1} cut {runner.cut} loss {means['loss']:.3f}")
            if log_path:
                append_jsonl(log_path, record)
            if on_epoch_end is not None:
                on_epoch_end(state, record)
    steps = int(state.step)
    summary = _summary(
        model,
        runners,
        runner.cut,
        steps,
        totals,
        segments,
        events,
        history,
        plan,
        planned_compute,
        total_params,
    )
    if log_path:
        append_jsonl(log_path, {"summary": summary})
    variables_out = whole_variables(frozen, state)
    checkpoint = ScaleDownCheckpoint(
        state,
        frozen,
        plan,
        scores,
        snapshot,
        None if pending is None else pending[0],
        None if pending is None else pending[1],
        dict(totals),
        list(events),
    )
    return ScaleDownResult(
        state, frozen, variables_out, runner.cut, history, summary, scores, plan, checkpoint
    )


def _read_check(
    plan: FreezePlan,
    scores: ScoreHistory,
    pending: tuple[int, jax.Array],
    step: int,
    groups: Sequence[Any],
    cuts: Sequence[int],
    config: ScaleDownConfig,
    total_steps: int,
) -> tuple[FreezePlan, ScoreHistory]:
    """Records the check measured at ``pending[0]`` and counts it toward the plan at ``step``.

    The candidate is the first stage whose ramp has not started at ``step``; it is ready
    when :func:`~jnet2net.scale_down.scores.readiness` is below ``config.ready_ratio``.
    """
    measured, norms = pending
    changes = group_changes(np.asarray(norms), groups)
    times = step_times(config, total_steps)
    candidate = next((k for k, f in enumerate(plan.freeze_steps) if step < f - times.ramp), -1)
    ratio = readiness(changes, candidate) if candidate >= 0 else math.nan
    scores = record_scores(scores, measured, changes, candidate, ratio)
    ready = bool(ratio < config.ready_ratio) if math.isfinite(ratio) else None
    return update_plan(plan, step, ready, config, total_steps), scores
