"""A scale-down run in Orbax checkpoints: saved at each epoch, restored to continue it.

A step directory of a scale-down run is an ordinary checkpoint of the whole network
(:func:`jnet2net.checkpoint.restore` gives its variables, for evaluation or growth) that also
holds what the run needs to continue where it stopped:

* optimizer state: the trained suffix's (the layers from the cut on);
* extra arrays: the readiness snapshot and the norms of the check in flight, when there are;
* metadata ``"scale_down_run"``: the cut, the freeze plan, the readiness history, the step of
  the check in flight, the totals and the freeze events (JSON; floats round-trip exactly),
  beside ``"scale_down"``, the :class:`ScaleDownConfig`.

``fit(..., scale_down=config, state=restore_run(...)[0])`` then continues bitwise as if the
run had not stopped (the activation cache is rebuilt from the frozen prefix).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jnet2net import checkpoint
from jnet2net.scale_down.config import ScaleDownConfig
from jnet2net.scale_down.policy import FreezePlan
from jnet2net.scale_down.results import ScaleDownCheckpoint
from jnet2net.scale_down.runners import trained_from
from jnet2net.scale_down.scores import ScoreHistory
from jnet2net.scale_down.split import merge_variables, split_variables
from jnet2net.scale_down.steps import move_cut, whole_variables
from jnet2net.train.config import TrainConfig
from jnet2net.train.state import TrainState, create_train_state

#: Metadata keys of a scale-down checkpoint: its config and its run state.
CONFIG_KEY, RUN_KEY = "scale_down", "scale_down_run"
Record = dict[str, Any]


def _json_floats(values: Any) -> Any:
    """Floats as JSON numbers, ``nan`` as ``None`` (nested lists)."""
    if isinstance(values, list):
        return [_json_floats(v) for v in values]
    return None if isinstance(values, float) and math.isnan(values) else values


def _floats(values: Any) -> Any:
    if isinstance(values, list):
        return [_floats(v) for v in values]
    return math.nan if values is None else values


def run_record(run: ScaleDownCheckpoint, cut: int) -> Record:
    """The JSON part of a run state: cut, plan, readiness history, totals, events."""
    scores = run.scores
    return {
        "cut": cut,
        "plan": {k: list(v) if isinstance(v, tuple) else v for k, v in run.plan._asdict().items()},
        "scores": {
            "names": list(scores.names),
            "steps": scores.steps.tolist(),
            "changes": _json_floats(scores.changes.tolist()),
            "candidate": scores.candidate.tolist(),
            "readiness": _json_floats(scores.readiness.tolist()),
        },
        "pending_step": run.pending_step,
        "totals": {k: float(v) for k, v in run.totals.items()},
        "events": list(run.events),
    }


def _plan(record: Record) -> FreezePlan:
    plan = record["plan"]
    return FreezePlan(
        tuple(int(d) for d in plan["deadlines"]),
        tuple(int(f) for f in plan["freeze_steps"]),
        tuple(bool(e) for e in plan["early"]),
        int(plan["candidate"]),
        int(plan["ready_checks"]),
    )


def _scores(record: Record) -> ScoreHistory:
    scores = record["scores"]
    names = tuple(scores["names"])
    return ScoreHistory(
        names,
        np.asarray(scores["steps"], np.int64).reshape(-1),
        np.asarray(_floats(scores["changes"]), np.float64).reshape(-1, len(names)),
        np.asarray(scores["candidate"], np.int64).reshape(-1),
        np.asarray(_floats(scores["readiness"]), np.float64).reshape(-1),
    )


def save_run(
    directory: checkpoint.PathLike,
    model: nn.Module,
    run: ScaleDownCheckpoint,
    train_config: TrainConfig | None = None,
    scale_config: ScaleDownConfig | None = None,
    *,
    metadata: Record | None = None,
    input_shape: tuple[int, ...] | None = None,
    max_to_keep: int | None = None,
) -> pathlib.Path:
    """Saves a scale-down run state (``fit``'s callback argument) at its step.

    Args:
      directory: the checkpoint (run) directory.
      model: the whole network.
      run: the run state.
      train_config: the run's ``TrainConfig``.
      scale_config: the run's ``ScaleDownConfig`` (saved as metadata ``"scale_down"``).
      metadata: other JSON metadata.
      input_shape: ``(1, h, w, c)`` of the training images.
      max_to_keep: keep only this many most recent steps.

    Returns:
      The step directory.
    """
    state = run.state
    extra = {}
    if run.snapshot is not None:
        extra["snapshot"] = run.snapshot
    if run.pending_norms is not None:
        extra["pending_norms"] = run.pending_norms
    info = {**(metadata or {}), RUN_KEY: run_record(run, trained_from(model, state))}
    if scale_config is not None:
        info[CONFIG_KEY] = dataclasses.asdict(scale_config)
    return checkpoint.save(
        directory,
        model=model,
        variables=whole_variables(run.frozen, state),
        step=int(state.step),
        opt_state=state.opt_state,
        train_config=train_config,
        metadata=info,
        input_shape=input_shape,
        max_to_keep=max_to_keep,
        extra=extra or None,
    )


def run_saver(
    directory: checkpoint.PathLike,
    model: nn.Module,
    train_config: TrainConfig | None = None,
    scale_config: ScaleDownConfig | None = None,
    *,
    input_shape: tuple[int, ...] | None = None,
    metadata: Record | None = None,
    max_to_keep: int | None = None,
) -> Callable[[ScaleDownCheckpoint, Record], None]:
    """An ``on_epoch_end(run, record)`` callback for a scale-down ``fit`` that saves the run
    state (synchronously: the next step donates its buffers), the record in the metadata."""

    def save_epoch(run: ScaleDownCheckpoint, record: Record) -> None:
        save_run(
            directory,
            model,
            run,
            train_config,
            scale_config,
            metadata={**(metadata or {}), "record": record},
            input_shape=input_shape,
            max_to_keep=max_to_keep,
        )

    return save_epoch


def is_run_checkpoint(info: checkpoint.CheckpointInfo) -> bool:
    """Whether a checkpoint holds a scale-down run state."""
    return RUN_KEY in info.metadata


def abstract_suffix(
    model: nn.Module,
    config: TrainConfig,
    image_shape: tuple[int, ...],
    steps_per_epoch: int,
    cut: int,
) -> TrainState:
    """Shapes and structure of the trained suffix's state at ``cut`` (nothing computed)."""
    example = np.zeros((1, *image_shape), np.uint8)

    def suffix() -> TrainState:
        state = create_train_state(
            model, config, example, key=jax.random.key(0), steps_per_epoch=steps_per_epoch
        )
        return move_cut(model, state, {}, cut)[0]

    return jax.eval_shape(suffix)


def restore_run(
    directory: checkpoint.PathLike,
    model: nn.Module,
    config: TrainConfig,
    image_shape: tuple[int, ...],
    steps_per_epoch: int,
    *,
    step: int | None = None,
) -> tuple[ScaleDownCheckpoint, checkpoint.Restored]:
    """The run state saved by :func:`save_run`, ready for ``fit(..., state=)``.

    Args:
      directory: the checkpoint (run) directory.
      model: the whole network (checked against the checkpoint's).
      config: the run's ``TrainConfig`` (its optimizer gives the state's structure).
      image_shape: ``(h, w, c)`` of the training images.
      steps_per_epoch: optimizer steps per epoch.
      step: which step (``None``: the latest).

    Returns:
      ``(run state, restored checkpoint)``.

    Raises:
      ValueError: the checkpoint holds no scale-down run state, or another architecture.
    """
    info = checkpoint.checkpoint_info(directory, step=step)
    if not is_run_checkpoint(info):
        raise ValueError(
            f"checkpoint {info.path} holds no scale-down run state (it was not saved by a "
            "scale-down run at an epoch's end)"
        )
    record = info.metadata[RUN_KEY]
    cut = int(record["cut"])
    like = abstract_suffix(model, config, image_shape, steps_per_epoch, cut)
    restored = checkpoint.restore(
        directory, step=info.step, model=model, opt_state_like=like.opt_state
    )
    whole = restored.variables
    trained = {"params": whole["params"], "batch_stats": whole.get("batch_stats", {})}
    moved, kept = split_variables(model, trained, cut)
    changes: Record = {
        "params": kept["params"],
        "batch_stats": kept.get("batch_stats", {}),
        "opt_state": restored.opt_state,
        "step": jnp.asarray(restored.step, like.step.dtype),
    }
    extra = restored.extra or {}
    run = ScaleDownCheckpoint(
        state=like.replace(**changes),
        frozen=merge_variables({}, moved),
        plan=_plan(record),
        scores=_scores(record),
        snapshot=extra.get("snapshot"),
        pending_step=record["pending_step"],
        pending_norms=extra.get("pending_norms"),
        totals=dict(record["totals"]),
        events=list(record["events"]),
    )
    return run, restored
