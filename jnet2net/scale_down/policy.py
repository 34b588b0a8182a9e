"""When the next layer stops training: a contiguous prefix from the input, never the head."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jnet2net.scale_down.config import ScaleDownConfig
from jnet2net.scale_down.scores import ScoreHistory, still_learning


class PolicyState(NamedTuple):
    """Where the cut is and how long each layer has looked stopped.

    Attributes:
      cut: layers ``[0, cut)`` are dropped from training.
      quiet_checks: ``(layers,)`` int64 consecutive checks after warm-up at which each
        layer was not still learning (0 for dropped layers).
    """

    cut: int
    quiet_checks: np.ndarray


def cut_limit(num_layers: int, config: ScaleDownConfig) -> int:
    """Largest cut the policy may reach: every layer but the head, at most ``max_frozen``."""
    if num_layers < 2:
        raise ValueError(f"scale-down needs at least one layer before the head, got {num_layers}")
    limit = num_layers - 1
    return limit if config.max_frozen is None else min(limit, config.max_frozen)


def initial_policy(num_layers: int, cut: int = 0) -> PolicyState:
    """A policy state with layers ``[0, cut)`` already dropped and no quiet checks."""
    if not 0 <= cut < num_layers:
        raise ValueError(f"cut must be in [0, {num_layers - 1}] (the head stays), got {cut}")
    return PolicyState(cut, np.zeros((num_layers,), np.int64))


def update_policy(
    state: PolicyState, history: ScoreHistory, step: int, config: ScaleDownConfig
) -> PolicyState:
    """Counts the latest check and moves the cut over every quiet layer right after it.

    A layer is quiet once it has not been still learning (:func:`still_learning`) for
    ``config.patience`` checks in a row, counting only checks at ``step >=
    config.warmup_steps``. Layers behind a layer that is still learning keep counting but
    are not dropped before it: the dropped layers always form a prefix.

    Args:
      state: the policy before this check.
      history: scores including this check; its names are ``model.layer_names()``.
      step: training step of this check.
      config: thresholds, patience, warm-up and ``max_frozen``.

    Returns:
      The policy after this check; ``cut`` never decreases.
    """
    num_layers = len(history.names)
    if state.quiet_checks.shape != (num_layers,):
        raise ValueError(
            f"policy tracks {state.quiet_checks.shape[0]} layers, the history "
            f"{num_layers} ({history.names})"
        )
    if step < config.warmup_steps:
        return PolicyState(state.cut, np.zeros_like(state.quiet_checks))
    learning = still_learning(history, config)
    quiet = np.where(learning, 0, state.quiet_checks + 1)
    quiet[: state.cut] = 0
    cut = state.cut
    limit = cut_limit(num_layers, config)
    while cut < limit and quiet[cut] >= config.patience:
        cut += 1
    quiet[:cut] = 0
    return PolicyState(cut, quiet)


def replay_policy(history: ScoreHistory, config: ScaleDownConfig) -> list[tuple[int, int]]:
    """The cut after each check if ``config``'s policy had read ``history`` as it was recorded.

    Tunes thresholds offline from one recorded run (e.g. with ``max_frozen=0``, which
    scores every layer throughout). Only an estimate: a real cut changes how the layers
    after it learn.

    Returns:
      ``[(step, cut), ...]``, one per check.
    """
    state = initial_policy(len(history.names))
    cuts = []
    for i, step in enumerate(history.steps):
        upto = ScoreHistory(
            history.names, history.steps[: i + 1], history.raw[: i + 1], history.smoothed[: i + 1]
        )
        state = update_policy(state, upto, int(step), config)
        cuts.append((int(step), state.cut))
    return cuts
