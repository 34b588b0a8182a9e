"""Learning-rate schedules and optimizers built from a :class:`TrainConfig`."""

from __future__ import annotations

import functools
from typing import Any

import jax
import optax

from jnet2net.train.config import TrainConfig, restrict

ONECYCLE_DEFAULT_PCT_START = 0.3
ONECYCLE_DIV_FACTOR = 25.0
ONECYCLE_FINAL_DIV = 1e4
#: The config fields that the optimizer depends on.
OPTIMIZER_FIELDS = (
    "epochs",
    "optimizer",
    "learning_rate",
    "momentum",
    "nesterov",
    "weight_decay",
    "schedule",
    "warmup_epochs",
)


Rewarm = tuple[tuple[int, int], ...]


def make_schedule(
    config: TrainConfig, steps_per_epoch: int, *, rewarm: Rewarm = ()
) -> optax.Schedule:
    """The learning rate at each step: warm-up, then ``config.schedule``.

    Args:
      config: uses ``schedule``, ``learning_rate``, ``epochs``, ``warmup_epochs``.
      steps_per_epoch: optimizer steps per epoch.
      rewarm: ``(start_step, length)`` windows (e.g. after growth events) in which the
        learning rate ramps linearly from ``1 / length`` of the schedule's value at
        ``start_step`` to all of it at ``start_step + length``.

    Returns:
      ``step -> learning rate``; the schedule spans ``epochs * steps_per_epoch`` steps and
      stays at its final value after them.
    """
    base = _base_schedule(config, steps_per_epoch)
    if not rewarm:
        return base
    windows = check_rewarm(rewarm)

    def schedule(step: Any) -> Any:
        factor = 1.0
        for start, length in windows:
            ramp = jax.numpy.clip((step - start + 1) / length, 0.0, 1.0)
            factor = factor * jax.numpy.where(step >= start, ramp, 1.0)
        return base(step) * factor

    return schedule


def check_rewarm(rewarm: Any) -> Rewarm:
    """``rewarm`` as a tuple of ``(start_step >= 0, length >= 1)`` int pairs."""
    try:
        windows = tuple((int(start), int(length)) for start, length in rewarm)
    except (TypeError, ValueError):
        raise ValueError(f"rewarm must be (start_step, length) pairs, got {rewarm!r}") from None
    for start, length in windows:
        if start < 0 or length < 1:
            raise ValueError(f"rewarm windows need start >= 0 and length >= 1, got {rewarm!r}")
    return windows


def _base_schedule(config: TrainConfig, steps_per_epoch: int) -> optax.Schedule:
    if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int):
        raise TypeError(f"steps_per_epoch must be an int, got {steps_per_epoch!r}")
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    total = config.epochs * steps_per_epoch
    warmup = min(round(config.warmup_epochs * steps_per_epoch), total)
    peak = config.learning_rate
    if config.schedule == "cosine":
        if warmup >= total:
            return optax.linear_schedule(0.0, peak, total)
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, total, end_value=0.0)
    if config.schedule == "onecycle":
        return onecycle_schedule(peak, warmup or round(ONECYCLE_DEFAULT_PCT_START * total), total)
    if warmup == 0:
        return optax.constant_schedule(peak)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup]
    )


def onecycle_schedule(peak: float, peak_step: int, total: int) -> optax.Schedule:
    """Cosine one-cycle over ``total`` steps that reaches ``peak`` at step ``peak_step``.

    Starts at ``peak / 25`` and ends at ``peak / 2.5e5`` (optax's one-cycle); ``peak_step``
    is clipped to the last step, so a warm-up over every step still reaches the peak.
    """
    peak_step = max(0, min(peak_step, total - 1))
    return optax.piecewise_interpolate_schedule(
        "cosine",
        peak / ONECYCLE_DIV_FACTOR,
        {peak_step: ONECYCLE_DIV_FACTOR, total: 1.0 / (ONECYCLE_DIV_FACTOR * ONECYCLE_FINAL_DIV)},
    )


def decay_mask(params: Any) -> Any:
    """``True`` for kernels (ndim > 1), ``False`` for biases and BatchNorm scales/offsets."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(
    config: TrainConfig, steps_per_epoch: int, *, rewarm: Rewarm = ()
) -> optax.GradientTransformation:
    """SGD (momentum, Nesterov) or AdamW with ``make_schedule``'s learning rate.

    Weight decay applies to kernels only (:func:`decay_mask`): added to the gradient
    before momentum for SGD (L2), decoupled for AdamW.

    Args:
      config: the training config.
      steps_per_epoch: optimizer steps per epoch (sets the schedule's length).
      rewarm: learning-rate re-warm windows (:func:`make_schedule`); they change the
        schedule only, not the optimizer state's structure.

    Returns:
      The optax transformation (the same object for equal optimizer settings); its state
      holds params-shaped trees (momentum, or Adam's ``mu``/``nu``) that
      ``optax.tree_map_params`` can map.
    """
    make_schedule(config, steps_per_epoch)  # checks steps_per_epoch
    return _optimizer(restrict(config, OPTIMIZER_FIELDS), steps_per_epoch, check_rewarm(rewarm))


@functools.lru_cache(maxsize=64)
def _optimizer(
    config: TrainConfig, steps_per_epoch: int, rewarm: Rewarm = ()
) -> optax.GradientTransformation:
    # Cached: equal configs give the same (immutable) transformation, so train states built
    # from them have equal tree structures and share compiled steps.
    schedule = make_schedule(config, steps_per_epoch, rewarm=rewarm)
    if config.optimizer == "adamw":
        return optax.adamw(schedule, weight_decay=config.weight_decay, mask=decay_mask)
    sgd = optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov)
    if config.weight_decay == 0:
        return sgd
    return optax.chain(optax.add_decayed_weights(config.weight_decay, mask=decay_mask), sgd)
