"""Compiling ahead: every candidate cut's step, cache move and BatchNorm recalibration.

Every candidate cut's functions are compiled ahead of their use (:func:`compile_runners`:
before the first step, or in a background thread while cut 0 trains) and their FLOPs read
from the executables, so no training step waits for a compile, whatever the cut does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jnet2net.data.dataset import Dataset
from jnet2net.models.common import compute_dtype
from jnet2net.scale_down import cache as cache_lib
from jnet2net.scale_down.config import ScaleDownConfig
from jnet2net.scale_down.flops import cache_flops
from jnet2net.scale_down.recalibrate import recalibration_fn
from jnet2net.scale_down.scores import change_norms
from jnet2net.scale_down.split import prefix_apply, split_variables
from jnet2net.scale_down.steps import (
    FLIP_AUGMENTS,
    make_scaled_train_step,
    move_cut,
    whole_variables,
    with_stats,
)
from jnet2net.train.batches import stream_key
from jnet2net.train.config import TrainConfig
from jnet2net.train.cost import CompiledStep, compile_step, is_compiled
from jnet2net.train.sharding import batch_sharding, replicated
from jnet2net.train.state import TrainState


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


class RunSetup(NamedTuple):
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
    lr_scale: tuple[float, ...]  # per layer (ScaleDownConfig.lr_boost)
    cache_budget: int | None  # bytes over all devices


def _augment_name(
    train_config: TrainConfig, mode: str, views: int, augmented: bool = False, pad: int = 0
) -> str:
    if train_config.augment == "none":
        return "none"
    if mode == "nograd":
        return train_config.augment
    if pad:
        return f"{train_config.augment} (crops of cached padded maps)"
    if augmented:
        return f"{train_config.augment} ({views} cached views)"
    return "flip (cached mirror view)" if views > 1 else "none (cached)"


class Compiler:
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


def _cache_spec(
    setup: RunSetup, frozen: dict, cut: int, views: int, pad: int = 0
) -> jax.ShapeDtypeStruct:
    """Shape, dtype and sharding of the cache at ``cut`` (of images padded by ``pad``)."""
    h, w, c = setup.train.image_shape
    one = jax.ShapeDtypeStruct((1, h + 2 * pad, w + 2 * pad, c), compute_dtype(setup.model))
    feature = jax.eval_shape(lambda f, x: prefix_apply(setup.model, f, x, cut), frozen, one)
    rows = cache_lib.padded_rows(len(setup.train), setup.mesh)
    return jax.ShapeDtypeStruct(
        (rows, views, *feature.shape[1:]), feature.dtype, sharding=batch_sharding(setup.mesh)
    )


def _layer_flops(setup: RunSetup, whole: dict, start: int, stop: int, rows: tuple) -> float:
    """Eval-mode FLOPs per example of layers ``[start, stop)`` on inputs of shape ``rows``."""
    batch = jax.ShapeDtypeStruct((setup.train_config.batch_size, *rows), compute_dtype(setup.model))
    return cache_flops(setup.model, whole, start, stop, batch, how="lowered")


def _cache_padding(setup: RunSetup, plain: jax.ShapeDtypeStruct) -> int:
    """The images' padding in a cache of padded maps, else 0: ``cache_augment='crop'`` with
    an augmentation that crops, at a cut whose stride divides the padding (``plain``: the
    cache spec of the unpadded maps). Otherwise the padded map's grid would sit between the
    plain map's pixels, and no crop of it is what the no-grad step computes."""
    config, train_config = setup.scale_config, setup.train_config
    pad = train_config.crop_padding
    if config.cache_augment != "crop" or train_config.augment not in ("crop_flip", "crop"):
        return 0
    image, feature = setup.train.image_shape[:2], plain.shape[2:4]
    aligned = all(i % f == 0 and pad % (i // f) == 0 for i, f in zip(image, feature, strict=True))
    return pad if aligned else 0


def _augmented_views(setup: RunSetup) -> cache_lib.AugmentedViews | None:
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
    setup: RunSetup,
    state: TrainState,
    cut: int,
    start: int,
    views: int,
    compiler: Compiler,
    pad: int = 0,
) -> tuple[CompiledStep, jax.ShapeDtypeStruct, float]:
    """The compiled cache move ``start -> cut`` (of images padded by ``pad``), the cache's
    spec and the move's FLOPs."""
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
        pad=0 if start else pad,
        chunk=setup.train_config.eval_batch_size,
        mesh=setup.mesh,
    )
    frozen = move_cut(model, state, {}, cut)[1]
    spec = _cache_spec(setup, frozen, cut, views, pad)
    if start:
        source = _cache_spec(setup, move_cut(model, state, {}, start)[1], start, views, pad)
        rows = source.shape[2:]
    else:
        h, w, c = train.image_shape
        source, rows = setup.images, (h + 2 * pad, w + 2 * pad, c)
    # XLA's analysis of a loop (the chunks) counts its body once: count the layers apart.
    per_example = _layer_flops(setup, whole_variables({}, state), start, cut, rows)
    return compiler(move, frozen, source), spec, per_example * spec.shape[0] * views


def _compile_recalibration(
    setup: RunSetup, state: TrainState, start: int, cut: int, order: jax.Array, compiler: Compiler
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
    setup: RunSetup,
    state: TrainState,
    cuts: Sequence[int],
    order: jax.Array,
    freeze_at: jax.Array,
    compiler: Compiler,
    *,
    with_full: bool = True,
) -> list[CutRunner]:
    """The runner of cut 0 and of every candidate cut, everything compiled.

    A cut runs from a cache in cache mode when the cache fits ``cache_budget``; its cache
    is moved on from the previous cut's when that one was cached too, else built from the
    images. ``with_full=False`` leaves out cut 0's runner (compiled apart, e.g. before
    the others compile in the background; cut 0 never runs from a cache, so the candidates'
    runners are the same either way).

    Args:
      setup: the run's fixed inputs.
      state: the state at cut 0 (replicated); only its shapes and shardings are used.
      cuts: the candidate cuts, increasing.
      order: an epoch's permutation (replicated).
      freeze_at: ``(layers,)`` int32 freeze steps (replicated).
      compiler: compiles and counts the seconds.

    Returns:
      ``[runner of cut 0, runner of cuts[0], ...]`` (without the first with
      ``with_full=False``).
    """
    config, train_config = setup.scale_config, setup.train_config
    flips = config.cache_augment in ("flip", "crop") and train_config.augment in FLIP_AUGMENTS
    augmented = _augmented_views(setup)
    views = augmented.count if augmented else (2 if flips else 1)
    common = {
        "mean": setup.train.mean,
        "std": setup.train.std,
        "steps_per_epoch": setup.steps_per_epoch,
        "ramp_steps": setup.ramp_steps,
        "lr_scale": setup.lr_scale,
        "mesh": setup.mesh,
    }
    runners: list[CutRunner] = []
    previous, previous_cached, previous_pad = 0, False, 0
    for cut in ((0,) if with_full else ()) + tuple(cuts):
        cut_state, frozen = move_cut(setup.model, state, {}, cut)
        cached, window, pad = False, None, 0
        if cut and config.mode == "cache":
            plain = _cache_spec(setup, frozen, cut, views)
            pad = _cache_padding(setup, plain)
            spec = _cache_spec(setup, frozen, cut, views, pad) if pad else plain
            need = cache_lib.cache_nbytes(spec.shape, spec.dtype, 1)
            cached = setup.cache_budget is None or need <= setup.cache_budget
            window = plain.shape[2:4] if pad else None
        jitted = make_scaled_train_step(
            setup.model,
            train_config,
            cut,
            cached=cached,
            random_view=cached and augmented is not None,
            crop_window=window if cached else None,
            crop_padding=pad,
            **common,
        )
        cache, cache_from, move_flops = None, 0, 0.0
        if cached:  # a cache moves on from the previous one when both have the same padding
            cache_from = previous if previous_cached and previous_pad == pad else 0
            cache, spec, move_flops = _compile_cache(
                setup, state, cut, cache_from, views, compiler, pad
            )
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
                _augment_name(
                    train_config, mode, used_views, augmented is not None, pad if cached else 0
                ),
            )
        )
        previous, previous_cached, previous_pad = cut, cached, pad
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
        frozen = with_stats(frozen, stats)
        if runner.cache is not None:
            source = cache.activations if runner.cache_from else images
            cache = cache_lib.ActivationCache(runner.cut, runner.cache.call(frozen, source))
    return state, frozen, cache if moved[-1].mode == "cache" else None


def abstract_full_state(state: TrainState, frozen: dict, mesh: Mesh) -> TrainState:
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


def trained_from(model: nn.Module, state: TrainState) -> int:
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


def compiled_scores(names: tuple[str, ...]) -> Any:
    """Jitted ``(previous, current) -> (change_norms, a copy of current)``."""

    def scale_down_scores(previous: Any, current: Any) -> tuple[jax.Array, Any]:
        return change_norms(previous, current, names), jax.tree.map(jnp.copy, current)

    return jax.jit(scale_down_scores)
