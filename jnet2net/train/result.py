"""What :func:`~jnet2net.train.fit` returns: :class:`FitResult`."""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn

Record = dict[str, Any]


class FitResult(NamedTuple):
    """What :func:`~jnet2net.train.fit` returns.

    Attributes:
      state: the final run state, replicated over the mesh: the :class:`TrainState`, or
        with ``scale_down`` a :class:`~jnet2net.scale_down.ScaleDownCheckpoint` (the
        trained suffix's state, the frozen prefix, the policy's state). ``fit(...,
        state=result.state)`` continues the run.
      history: one record per epoch run: ``epoch`` (1-based; ``step / steps_per_epoch``
        when ``max_steps`` stops it early), ``step`` (global step at its end), ``wall_s``
        (wall time: since ``fit`` started, compiles and evaluations included), ``train_s``
        (training seconds: the training steps only, cumulative over resumes),
        ``epoch_s`` (this epoch's training steps), ``images_per_s`` (over those steps, the
        first step of ``fit`` left out; ``None`` when that was the epoch's only step),
        ``lr`` (of the epoch's last step), ``train_loss``, ``train_acc`` (means over the
        epoch's augmented batches),
        ``test_loss``, ``test_acc`` (``None`` without a test set; with
        ``config.ema_decay`` those of the moving average, and ``test_loss_live``,
        ``test_acc_live`` those of the live weights), ``epoch_flops`` (the
        epoch's training FLOPs); the first record also has
        ``first_step_s`` (compile and run of the first step) and, when the run resumed a
        state past step 0, ``resumed: true`` (its ``wall_s`` clock starts again). Every
        record also counts compute (``step_flops``, the cumulative totals
        :data:`~jnet2net.train.records.TOTALS`). Events add records to the history:
        ``{"event": "grow", ...}`` (growth) or ``{"event": "freeze", ...}`` (scale-down),
        each with ``epoch``, ``step``, ``event_s`` and the totals after it.
        ``config.eval_every_steps`` adds records between epoch ends, whose ``epoch`` is
        fractional (``step / steps_per_epoch``), without ``epoch_s``/``images_per_s`` and
        with the epoch's means so far; ``initial_eval`` adds a first record at epoch 0,
        step 0 (``test_loss``, ``test_acc``, zero totals).
      model: the final module (the grown one after growth events).
      scale_down: with ``scale_down``, the run's
        :class:`~jnet2net.scale_down.ScaleDownResult` (frozen prefix, whole variables,
        cut, summary, scores, plan); else ``None``.
      ema_variables: with ``config.ema_decay``, the moving average of the weights
        (``{'params', 'batch_stats'}`` of ``model``, the network to keep; ``state.ema``);
        else ``None``. ``state.variables`` are the live weights.
    """

    state: Any
    history: list[Record]
    model: nn.Module | None = None
    scale_down: Any = None
    ema_variables: Any = None
