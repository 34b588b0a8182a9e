"""Per-layer change scores from parameter snapshots, their smoothing and their trend.

A snapshot is a ``params`` dict keyed by layer name (``model.layer_names()``); the score of
layer ``l`` between two snapshots is ``||theta_l(t) - theta_l(t - K)|| / ||theta_l(t - K)||``
over all of its parameters. The history of scores lives on the host (a few floats per
check); only the norms are computed on the device.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jnet2net.scale_down.config import ScaleDownConfig

Params = Mapping[str, Any]  # {layer_name: subtree of arrays}


def _squared_norm(tree: Any) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    return sum((jnp.sum(jnp.square(leaf.astype(jnp.float32))) for leaf in leaves), jnp.float32(0))


def _squared_distance(a: Any, b: Any) -> jax.Array:
    diffs = jax.tree.map(lambda x, y: x.astype(jnp.float32) - y.astype(jnp.float32), a, b)
    return _squared_norm(diffs)


@functools.partial(jax.jit, static_argnames="names")
def layer_change_scores(previous: Params, current: Params, names: tuple[str, ...]) -> jax.Array:
    """Relative change of every layer's parameters between two snapshots.

    Args:
      previous: ``params`` at step ``t - K``, keyed by layer name.
      current: ``params`` at step ``t``; a layer's subtree must have the structure and
        shapes it has in ``previous``.
      names: layer names to score, in order.

    Returns:
      ``(len(names),)`` float32 ``||current_l - previous_l|| / ||previous_l||``; ``nan`` for
      a layer missing from either snapshot (a dropped layer). A layer whose previous norm
      is zero scores ``inf`` if it moved and 0 if not.
    """
    scores = []
    for name in names:
        if name not in previous or name not in current:
            scores.append(jnp.float32(jnp.nan))
            continue
        prev, cur = previous[name], current[name]
        if jax.tree.structure(prev) != jax.tree.structure(cur):
            raise ValueError(
                f"params/{name} changed structure between snapshots: "
                f"{jax.tree.structure(prev)} vs {jax.tree.structure(cur)}"
            )
        for p, c in zip(jax.tree.leaves(prev), jax.tree.leaves(cur), strict=True):
            if p.shape != c.shape:
                raise ValueError(
                    f"params/{name} has a leaf of shape {c.shape} now and {p.shape} before"
                )
        moved = jnp.sqrt(_squared_distance(cur, prev))
        size = jnp.sqrt(_squared_norm(prev))
        scores.append(jnp.where(moved == 0, 0.0, moved / size))
    return jnp.stack(scores).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class ScoreHistory:
    """Every check so far: raw and smoothed scores of each layer.

    Attributes:
      names: layer names (columns).
      steps: ``(checks,)`` int64 training step of each check.
      raw: ``(checks, layers)`` float64 change scores; ``nan`` while a layer is dropped.
      smoothed: ``(checks, layers)`` exponential moving average of ``raw``.
    """

    names: tuple[str, ...]
    steps: np.ndarray
    raw: np.ndarray
    smoothed: np.ndarray

    @property
    def peak(self) -> np.ndarray:
        """``(layers,)`` largest smoothed score so far (``nan`` for a never-scored layer)."""
        finite = np.where(np.isfinite(self.smoothed), self.smoothed, -np.inf)
        peak = finite.max(axis=0, initial=-np.inf)
        return np.where(np.isfinite(peak), peak, np.nan)


def empty_history(names: Sequence[str]) -> ScoreHistory:
    """A history of ``names`` with no check yet."""
    names = tuple(names)
    return ScoreHistory(
        names, np.zeros((0,), np.int64), np.zeros((0, len(names))), np.zeros((0, len(names)))
    )


def record_scores(
    history: ScoreHistory, step: int, raw: np.ndarray | jax.Array, smoothing: float
) -> ScoreHistory:
    """Appends one check; the moving average of a layer restarts at its first finite score.

    Args:
      history: the checks so far.
      step: the training step of this check (larger than the last one).
      raw: ``(layers,)`` change scores (``nan`` for dropped layers).
      smoothing: EMA factor ``beta``: ``m_t = beta * m_{t-1} + (1 - beta) * s_t``.

    Returns:
      The history with one more row.
    """
    raw = np.asarray(raw, np.float64)
    if raw.shape != (len(history.names),):
        raise ValueError(
            f"record_scores needs ({len(history.names)},) scores for layers {history.names}, "
            f"got shape {raw.shape}"
        )
    if history.steps.size and step <= history.steps[-1]:
        raise ValueError(f"check at step {step} is not after the last one ({history.steps[-1]})")
    if history.smoothed.shape[0]:
        last = history.smoothed[-1]
        smoothed = np.where(np.isfinite(last), smoothing * last + (1 - smoothing) * raw, raw)
    else:
        smoothed = raw
    return ScoreHistory(
        history.names,
        np.append(history.steps, np.int64(step)),
        np.vstack([history.raw, raw[None]]),
        np.vstack([history.smoothed, smoothed[None]]),
    )


def score_levels(history: ScoreHistory, normalize: str) -> np.ndarray:
    """``(layers,)`` latest smoothed score, over its peak when ``normalize == 'peak'``."""
    if not history.steps.size:
        return np.full((len(history.names),), np.nan)
    last = history.smoothed[-1]
    if normalize == "none":
        return last
    with np.errstate(divide="ignore", invalid="ignore"):
        level = last / history.peak
    return np.where(last == 0, 0.0, level)


def score_trends(history: ScoreHistory, window: int) -> np.ndarray:
    """``(layers,)`` relative slope per check of the last ``window`` smoothed scores.

    The least-squares slope over the trailing run of finite smoothed scores (at most
    ``window`` of them) divided by their mean; ``nan`` with fewer than two, 0 when the
    mean is 0.
    """
    trends = np.full((len(history.names),), np.nan)
    for layer in range(len(history.names)):
        column = history.smoothed[-window:, layer]
        trailing = 0
        while trailing < column.size and np.isfinite(column[column.size - 1 - trailing]):
            trailing += 1
        run = column[column.size - trailing :]
        if run.size < 2:
            continue
        x = np.arange(run.size, dtype=np.float64)
        x -= x.mean()
        slope = float(np.dot(x, run - run.mean()) / np.dot(x, x))
        mean = float(run.mean())
        trends[layer] = 0.0 if mean == 0 else slope / mean
    return trends


def still_learning(history: ScoreHistory, config: ScaleDownConfig) -> np.ndarray:
    """``(layers,)`` bool: level ``>= threshold``, trend ``> trend_tolerance``, or unknown.

    A layer without a finite level or trend yet (fewer than two checks, or dropped) counts
    as still learning: nothing is known that says otherwise.
    """
    level = score_levels(history, config.normalize)
    trend = score_trends(history, config.trend_window)
    known = np.isfinite(level) & np.isfinite(trend)
    quiet = known & (level < config.threshold) & (trend <= config.trend_tolerance)
    return ~quiet
