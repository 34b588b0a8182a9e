"""When each candidate stage freezes: deadlines from a compute budget, readiness, ramps.

A *plan* holds one freeze step per candidate cut (:func:`~jnet2net.scale_down.stages.
candidate_cuts`), non-decreasing, :data:`NEVER` for a stage that keeps training. The
deadlines come from the measured per-step FLOPs of every cut's compiled step
(:func:`plan_freezes`); readiness checks may only move a freeze earlier
(:func:`update_plan`); a stage's learning rate ramps to zero before its freeze
(:func:`ramp_multipliers`). Everything here is a pure function of host numbers except
:func:`ramp_multipliers`, which runs inside the training step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jnet2net.scale_down.config import ScaleDownConfig

#: Freeze step of a stage that never freezes (the largest int32).
NEVER = 2**31 - 1


class StepTimes(NamedTuple):
    """A config's fractions of training in steps.

    Attributes:
      total: steps of the run (``epochs * steps_per_epoch``).
      not_before: earliest freeze step, ``ceil(not_before * total)``.
      spacing: least steps between freezes, ``ceil(min_spacing * total)``.
      ramp: steps of the learning-rate ramp before a freeze, ``round(ramp * total)``.
    """

    total: int
    not_before: int
    spacing: int
    ramp: int


def step_times(config: ScaleDownConfig, total_steps: int) -> StepTimes:
    """``config``'s ``not_before``, ``min_spacing`` and ``ramp`` for a run of ``total_steps``."""
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be an int >= 1, got {total_steps!r}")

    def steps(fraction: float) -> float:
        return round(fraction * total_steps, 6)  # 0.3 * 10 is 3, not 3.0000000000000004

    return StepTimes(
        total_steps,
        math.ceil(steps(config.not_before)),
        math.ceil(steps(config.min_spacing)),
        round(steps(config.ramp)),
    )


class FreezePlan(NamedTuple):
    """Freeze steps of the candidate cuts, and the readiness count of the next one.

    Attributes:
      deadlines: ``(K,)`` latest freeze step of each candidate (:data:`NEVER`: none).
      freeze_steps: ``(K,)`` the plan now: ``<= deadlines``, non-decreasing.
      early: ``(K,)`` whether readiness brought the freeze forward.
      candidate: the stage whose ready checks are counted (-1: none yet).
      ready_checks: its ready checks in a row.
    """

    deadlines: tuple[int, ...]
    freeze_steps: tuple[int, ...]
    early: tuple[bool, ...]
    candidate: int = -1
    ready_checks: int = 0


def _costs(step_flops: Sequence[float], move_flops: Sequence[float] | None) -> tuple:
    costs = np.asarray(step_flops, np.float64)
    if costs.ndim != 1 or costs.size < 1 or not np.all(np.isfinite(costs) & (costs > 0)):
        raise ValueError(
            f"step_flops must be finite and > 0, got {[float(c) for c in np.ravel(costs)]} "
            "(FLOPs per step at cut 0 and after each candidate freeze)"
        )
    moves = np.zeros(costs.size - 1) if move_flops is None else np.asarray(move_flops, float)
    if moves.shape != (costs.size - 1,):
        raise ValueError(
            f"move_flops needs {costs.size - 1} entries (one per candidate freeze), got "
            f"{moves.size}"
        )
    if not np.all(np.isfinite(moves) & (moves >= 0)):
        raise ValueError(f"move_flops must be finite and >= 0, got {moves.tolist()}")
    return costs, moves


def _fractions(costs: np.ndarray, moves: np.ndarray, freezes: np.ndarray, total: int) -> np.ndarray:
    """``(..., K)`` freeze steps (clipped to ``total``) -> ``(...)`` compute fractions."""
    freezes = np.minimum(freezes, total)
    zeros = np.zeros((*freezes.shape[:-1], 1))
    bounds = np.concatenate([zeros, freezes, zeros + total], axis=-1)
    work = np.diff(bounds, axis=-1) @ costs + (freezes < total) @ moves
    return work / (costs[0] * total)


def compute_fraction(
    step_flops: Sequence[float],
    freeze_steps: Sequence[int],
    total_steps: int,
    move_flops: Sequence[float] | None = None,
) -> float:
    """The run's training FLOPs over full training's for one plan.

    Args:
      step_flops: ``(K + 1,)`` FLOPs of one step at cut 0 (full training) and after each
        of the ``K`` candidate freezes.
      freeze_steps: ``(K,)`` non-decreasing; a step ``>= total_steps`` (e.g.
        :data:`NEVER`) never happens.
      total_steps: steps of the run.
      move_flops: ``(K,)`` one-off FLOPs of each freeze (cache build, BatchNorm
        recalibration); default none.

    Returns:
      ``(sum of step FLOPs + one-off FLOPs) / (step_flops[0] * total_steps)``.
    """
    costs, moves = _costs(step_flops, move_flops)
    freezes = np.asarray(freeze_steps, np.int64)
    if freezes.shape != (costs.size - 1,):
        raise ValueError(f"freeze_steps needs {costs.size - 1} entries, got {freezes.size}")
    if np.any(np.diff(freezes) < 0):
        raise ValueError(f"freeze_steps must not decrease, got {freezes.tolist()}")
    return float(_fractions(costs, moves, freezes, total_steps))


def plan_freezes(
    step_flops: Sequence[float],
    total_steps: int,
    config: ScaleDownConfig,
    *,
    move_flops: Sequence[float] | None = None,
) -> FreezePlan:
    """The latest freezes that meet ``config.target_compute``.

    Candidate ``k`` freezes at ``s + k * spacing`` (:func:`step_times`); ``s`` is the
    largest start at or after ``not_before`` whose schedule costs at most
    ``target_compute`` of full training (:func:`compute_fraction`). Freezes that would
    fall at or after the end are :data:`NEVER`.

    Args:
      step_flops: ``(K + 1,)`` FLOPs per step at cut 0 and after each candidate freeze,
        e.g. from XLA's cost analysis of each compiled step.
      total_steps: steps of the run.
      config: ``target_compute``, ``not_before``, ``min_spacing``.
      move_flops: ``(K,)`` one-off FLOPs of each freeze.

    Returns:
      a plan whose ``freeze_steps`` are its ``deadlines``.

    Raises:
      ValueError: even the earliest schedule allowed costs more than the target.
    """
    costs, moves = _costs(step_flops, move_flops)
    times = step_times(config, total_steps)
    k = costs.size - 1
    starts = np.arange(times.not_before, total_steps + 1, dtype=np.int64)
    freezes = starts[:, None] + times.spacing * np.arange(k, dtype=np.int64)[None, :]
    fractions = _fractions(costs, moves, freezes, total_steps)
    feasible = np.flatnonzero(fractions <= config.target_compute + 1e-12)
    if not feasible.size:
        if k == 0:
            why = "no stage may freeze (no candidate cut; see max_stages)"
        else:
            why = (
                f"freezing all {k} candidate stages as early as allowed (not_before="
                f"{config.not_before}, min_spacing={config.min_spacing}) costs at least "
                f"{fractions.min():.3g} of full training's FLOPs"
            )
        raise ValueError(
            f"ScaleDownConfig.target_compute={config.target_compute} cannot be met: {why}; "
            "raise target_compute, or lower not_before or min_spacing"
        )
    chosen = freezes[feasible[-1]]
    deadlines = tuple(int(f) if f < total_steps else NEVER for f in chosen)
    return FreezePlan(deadlines, deadlines, (False,) * k)


def _next_uncommitted(plan: FreezePlan, step: int, ramp: int) -> int | None:
    """The first candidate whose ramp has not started at ``step`` (``None``: all have)."""
    for k, freeze in enumerate(plan.freeze_steps):
        if step < freeze - ramp:
            return k
    return None


def update_plan(
    plan: FreezePlan, step: int, ready: bool | None, config: ScaleDownConfig, total_steps: int
) -> FreezePlan:
    """Counts one readiness check and, after ``patience`` in a row, brings a freeze forward.

    The check concerns the first candidate whose ramp has not started (stages whose ramp
    has started are committed). Checks before ``not_before - ramp`` do not count. After
    ``config.patience`` ready checks in a row the candidate's freeze moves to the earliest
    step allowed: ``step + ramp`` (a full ramp first), not before ``not_before``, at least
    ``min_spacing`` after the previous freeze, and only if that is earlier than planned.

    Args:
      plan: the plan before this check.
      step: the training step of the check.
      ready: whether the candidate is ready (``None``: not known, counts as not ready).
      config: ``ready_ratio`` (``None``: the plan never changes), ``patience`` and times.
      total_steps: steps of the run.

    Returns:
      the plan after this check.
    """
    if config.ready_ratio is None:
        return plan
    times = step_times(config, total_steps)
    k = _next_uncommitted(plan, step, times.ramp)
    if k is None:
        return plan._replace(candidate=-1, ready_checks=0)
    if step < times.not_before - times.ramp:
        return plan._replace(candidate=k, ready_checks=0)
    count = plan.ready_checks if plan.candidate == k else 0
    count = count + 1 if ready else 0
    if count < config.patience:
        return plan._replace(candidate=k, ready_checks=count)
    earliest = max(step + times.ramp, times.not_before)
    if k > 0:
        earliest = max(earliest, plan.freeze_steps[k - 1] + times.spacing)
    if earliest >= min(plan.freeze_steps[k], total_steps):
        return plan._replace(candidate=k, ready_checks=0)
    freeze_steps = (*plan.freeze_steps[:k], earliest, *plan.freeze_steps[k + 1 :])
    early = (*plan.early[:k], True, *plan.early[k + 1 :])
    return plan._replace(freeze_steps=freeze_steps, early=early, candidate=k, ready_checks=0)


def layer_freeze_steps(plan: FreezePlan, cuts: Sequence[int], num_layers: int) -> np.ndarray:
    """``(num_layers,)`` int32: each layer's freeze step (its stage's), :data:`NEVER` if none.

    Args:
      plan: the freeze steps of the candidate cuts.
      cuts: the candidate cuts, increasing (stage ``k`` is layers ``[cuts[k-1], cuts[k])``).
      num_layers: layers of the network.
    """
    if len(cuts) != len(plan.freeze_steps):
        raise ValueError(f"{len(cuts)} cuts but {len(plan.freeze_steps)} freeze steps")
    steps = np.full((num_layers,), NEVER, np.int32)
    start = 0
    for cut, freeze in zip(cuts, plan.freeze_steps, strict=True):
        steps[start:cut] = min(freeze, NEVER)
        start = cut
    return steps


def cut_at(plan: FreezePlan, cuts: Sequence[int], step: int) -> int:
    """The cut in force at ``step``: the largest candidate frozen by then (0: none)."""
    frozen = [cut for cut, freeze in zip(cuts, plan.freeze_steps, strict=True) if freeze <= step]
    return max(frozen, default=0)


def ramp_multipliers(
    step: jax.Array,
    freeze_at: jax.Array,
    ramp_steps: int,
    lr_scale: Sequence[float] | None = None,
) -> jax.Array:
    """Learning-rate multiplier of each layer at ``step``: half a cosine down to its freeze.

    ``m = s * (1 - cos(pi * p)) / 2`` with ``p = clip((freeze_at - step) / ramp_steps, 0,
    1)``: exactly ``s`` until ``ramp_steps`` before the freeze, 0 from the freeze on (a step
    from ``s`` to 0 at the freeze when ``ramp_steps == 0``); ``s`` is the layer's
    ``lr_scale`` (1 without).

    Args:
      step: int32 scalar, the optimizer step.
      freeze_at: ``(layers,)`` int32 freeze steps (:func:`layer_freeze_steps`).
      ramp_steps: static ramp length.
      lr_scale: static ``(layers,)`` learning-rate factors (:func:`layer_lr_scale`).

    Returns:
      ``(layers,)`` float32.
    """
    left = (freeze_at - step).astype(jnp.float32)
    if ramp_steps == 0:
        multipliers = (left > 0).astype(jnp.float32)
    else:
        p = jnp.clip(left / jnp.float32(ramp_steps), 0.0, 1.0)
        ramp = 0.5 * (1.0 - jnp.cos(jnp.float32(math.pi) * p))
        multipliers = jnp.where(p >= 1.0, jnp.float32(1.0), ramp).astype(jnp.float32)
    if lr_scale is None:
        return multipliers
    return multipliers * jnp.asarray(lr_scale, jnp.float32)


def layer_lr_scale(cuts: Sequence[int], num_layers: int, boost: float) -> tuple[float, ...]:
    """Each layer's learning-rate factor: ``boost`` for the layers that may freeze (those
    before the last candidate cut), 1 for the rest (FreezeOut's larger learning rate for
    the layers that stop early)."""
    last = max(cuts, default=0)
    return tuple(float(boost) if i < last else 1.0 for i in range(num_layers))
