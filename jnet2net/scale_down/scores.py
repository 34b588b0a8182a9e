"""Readiness of a stage to freeze: its update against the deeper stages still training.

Every check compares two snapshots of the whole network's ``params`` (keyed by layer name;
frozen layers included, so the tree, and the compiled function, never change). On the
device only two numbers per layer are computed (:func:`change_norms`); the host sums them
per stage into relative updates ``||theta_g(t) - theta_g(t - K)|| / ||theta_g(t - K)||``
(:func:`group_changes`) and compares the next stage to freeze with the median of the
deeper stages (:func:`readiness`). The score is relative across stages, never normalised
by a stage's own history: all stages share the learning rate, so it cancels.
:func:`read_check` records a check and counts it toward the freeze plan.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jnet2net.scale_down.config import ScaleDownConfig
from jnet2net.scale_down.policy import FreezePlan, step_times, update_plan
from jnet2net.scale_down.stages import Stage

Params = Mapping[str, Any]  # {layer_name: subtree of arrays}


def _squared_norm(tree: Any) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    return sum((jnp.sum(jnp.square(leaf.astype(jnp.float32))) for leaf in leaves), jnp.float32(0))


def change_norms(previous: Params, current: Params, names: Sequence[str]) -> jax.Array:
    """Squared update and squared size of every layer's parameters (traceable).

    Args:
      previous: ``params`` at step ``t - K``, keyed by layer name.
      current: ``params`` at step ``t``, with the same structure and shapes.
      names: the layers, in order.

    Returns:
      ``(2, len(names))`` float32: row 0 ``||current_l - previous_l||^2``, row 1
      ``||previous_l||^2``.
    """
    moved, size = [], []
    for name in names:
        prev, cur = previous[name], current[name]
        for p, c in zip(jax.tree.leaves(prev), jax.tree.leaves(cur), strict=True):
            if p.shape != c.shape:
                raise ValueError(
                    f"params/{name} has a leaf of shape {c.shape} now and {p.shape} before"
                )
        diff = jax.tree.map(lambda a, b: a.astype(jnp.float32) - b.astype(jnp.float32), cur, prev)
        moved.append(_squared_norm(diff))
        size.append(_squared_norm(prev))
    return jnp.stack([jnp.stack(moved), jnp.stack(size)]).astype(jnp.float32)


def group_changes(norms: np.ndarray, groups: Sequence[Stage]) -> np.ndarray:
    """``(groups,)`` relative update of each group from :func:`change_norms`' ``(2, layers)``.

    A group that did not move scores 0 (also when its size is 0).
    """
    norms = np.asarray(norms, np.float64)
    out = np.zeros((len(groups),))
    for g, group in enumerate(groups):
        moved = norms[0, group.start : group.stop].sum()
        size = norms[1, group.start : group.stop].sum()
        out[g] = 0.0 if moved == 0 else np.sqrt(moved / size) if size > 0 else np.inf
    return out


def readiness(changes: np.ndarray, candidate: int) -> float:
    """The candidate stage's update over the median update of the deeper stages.

    Args:
      changes: ``(groups,)`` :func:`group_changes` over the stages and, last, the head
        group (left out of the median).
      candidate: index of the stage that would freeze next.

    Returns:
      the ratio (below ``ready_ratio``: ready); ``nan`` when no deeper stage moved.
    """
    deeper = np.asarray(changes, np.float64)[candidate + 1 : -1]
    median = float(np.median(deeper)) if deeper.size else 0.0
    if not median > 0:
        return float("nan")
    return float(changes[candidate]) / median


@dataclasses.dataclass(frozen=True)
class ScoreHistory:
    """Every readiness check of a run.

    Attributes:
      names: group names (stages, then ``'head'``).
      steps: ``(checks,)`` int64 training step of each check.
      changes: ``(checks, groups)`` relative updates since the previous check.
      candidate: ``(checks,)`` int64 stage that was next to freeze (-1: none).
      readiness: ``(checks,)`` its :func:`readiness` (``nan``: none).
    """

    names: tuple[str, ...]
    steps: np.ndarray
    changes: np.ndarray
    candidate: np.ndarray
    readiness: np.ndarray


def empty_history(names: Sequence[str]) -> ScoreHistory:
    """A history of groups ``names`` with no check yet."""
    names = tuple(names)
    return ScoreHistory(
        names,
        np.zeros((0,), np.int64),
        np.zeros((0, len(names))),
        np.zeros((0,), np.int64),
        np.zeros((0,)),
    )


def record_scores(
    history: ScoreHistory, step: int, changes: np.ndarray, candidate: int, ready: float
) -> ScoreHistory:
    """``history`` with one more check appended (a new history; the old one is unchanged)."""
    changes = np.asarray(changes, np.float64)
    if changes.shape != (len(history.names),):
        raise ValueError(
            f"record_scores needs ({len(history.names)},) changes for groups {history.names}, "
            f"got shape {changes.shape}"
        )
    if history.steps.size and step <= history.steps[-1]:
        raise ValueError(f"check at step {step} is not after the last one ({history.steps[-1]})")
    return ScoreHistory(
        history.names,
        np.append(history.steps, np.int64(step)),
        np.vstack([history.changes, changes[None]]),
        np.append(history.candidate, np.int64(candidate)),
        np.append(history.readiness, float(ready)),
    )


def read_check(
    plan: FreezePlan,
    scores: ScoreHistory,
    pending: tuple[int, jax.Array],
    step: int,
    groups: Sequence[Any],
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
