"""What a scale-down run keeps and gives: :class:`ScaleDownCheckpoint` (its run state, from
which ``fit(state=...)`` continues) and :class:`ScaleDownResult` (``fit(...).scale_down``)."""

from __future__ import annotations

from typing import Any, NamedTuple

from jnet2net.scale_down.policy import FreezePlan
from jnet2net.scale_down.scores import ScoreHistory
from jnet2net.train.state import TrainState

Record = dict[str, Any]


class ScaleDownCheckpoint(NamedTuple):
    """Everything a scale-down run needs to continue exactly where it stopped: its run
    state (what ``fit``'s callbacks get, and ``fit(..., state=...)`` continues from).

    The activation cache is not kept: it is a function of ``frozen`` and the images, and
    is rebuilt with the same compiled moves.

    Attributes:
      state: the trained suffix's state (its ``step`` is where the run continues; the next
        training step donates its buffers: copy it to keep it).
      frozen: variables of the frozen prefix.
      plan: the freeze plan (deadlines, freezes brought forward, readiness count).
      scores: the readiness checks so far.
      snapshot: ``params`` of the whole network at the last check (``None``: none yet).
      pending_step: step of the last check, whose norms are read at the next one.
      pending_norms: its :func:`~jnet2net.scale_down.scores.change_norms` (or ``None``).
      totals: ``fit``'s cumulative compute counts and ``move_flops``.
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


class ScaleDownResult(NamedTuple):
    """What a scale-down run gives: ``train.fit(..., scale_down=...).scale_down``, or
    :func:`fit_scale_down`'s result.

    Attributes:
      state: the trained suffix's state (layers ``[cut, end)``; replicated over the mesh).
      frozen: variables of the frozen prefix (layers ``[0, cut)``).
      variables: the whole network's ``{'params', 'batch_stats'}`` (``frozen`` and
        ``state`` merged; no ``batch_stats`` without BatchNorm, as ``model.init``), ready
        for ``model.apply``.
      cut: the final cut.
      history: ``fit``'s records without the freeze events (those are in
        ``summary["events"]``).
      summary: totals of the run against full training for as many steps (also the
        ``{"step", "summary"}`` line that ends the log).
      scores: every readiness check (empty with ``ready_ratio=None``).
      plan: the freeze plan at the end (deadlines and the freeze steps used).
      checkpoint: the run state to continue from (``fit(..., state=)``, ``resume=``).
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
