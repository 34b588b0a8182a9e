"""``fit``: one training loop for every strategy, data parallel over a mesh.

The loop owns epochs, records, evaluation, the log, callbacks and timing; a stepper
(:mod:`jnet2net.train.steppers`) owns the step and the events that change it:
:class:`~jnet2net.train.steppers.GrowthSteps` (the plain step, grown at growth events) or
scale-down's (:mod:`jnet2net.scale_down.strategy`). What it returns is in
:mod:`~jnet2net.train.result`, the checks of its arguments in :mod:`~jnet2net.train.checks`,
the state and epoch order it starts from in :mod:`~jnet2net.train.start`.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import Mesh

from jnet2net import distributed
from jnet2net.data.dataset import Dataset
from jnet2net.train import dispatch
from jnet2net.train.checks import check_fit_inputs, check_outputs_fit, steps_per_epoch
from jnet2net.train.config import TrainConfig
from jnet2net.train.evaluation import check_count, ema_eval_metrics, put_test_set, test_step_for
from jnet2net.train.events import Grow, check_growth, rewarm_windows
from jnet2net.train.inputs import as_stream, streams_input, train_batches
from jnet2net.train.optim import make_schedule
from jnet2net.train.progress import (
    ProgressBar,
    append_jsonl,
    progress_enabled,
    progress_lines_enabled,
)
from jnet2net.train.records import (
    TOTALS,
    epoch_means,
    nonfinite_loss_error,
    progress_note,
    start_log,
)
from jnet2net.train.result import FitResult
from jnet2net.train.sharding import check_batch_size, data_mesh, put_replicated
from jnet2net.train.start import device_permutation, start_state
from jnet2net.train.state import TrainState
from jnet2net.train.steppers import GrowthSteps, call_on_step

__all__ = [
    "FitResult",
    "call_on_step",
    "check_fit_inputs",
    "check_outputs_fit",
    "fit",
    "steps_per_epoch",
]

Record = dict[str, Any]


# --- the training loop --------------------------------------------------------------------


def fit(
    model: nn.Module,
    train: Dataset,
    test: Dataset | None,
    config: TrainConfig,
    *,
    state: Any = None,
    variables: Any = None,
    mesh: Mesh | None = None,
    on_epoch_end: Callable[[Any, Record], None] | None = None,
    stop_at_accuracy: float | None = None,
    max_steps: int | None = None,
    growth: Sequence[Grow] | None = None,
    growth_key: jax.Array | None = None,
    on_grow: Callable[[nn.Module, TrainState, Record], None] | None = None,
    precompile: bool = True,
    initial_eval: bool = False,
    on_step: Callable[[int], None] | None = None,
    scale_down: Any = None,
) -> FitResult:
    """Trains ``model`` on ``train`` for ``config.epochs``, evaluating on ``test`` each epoch.

    Both sets live on device whole; every step gathers its batch from the epoch's
    permutation on device, augments it and takes an optimizer step (one compile per
    architecture, ahead of time). With ``config.input='stream'`` (or ``'auto'`` for a large
    set or a :class:`~jnet2net.data.StreamSet`) a grain pipeline reads the same batches on
    the host instead, each process its rows (:mod:`jnet2net.train.inputs`). Data order
    and augmentation depend only on ``(config.seed, step)``, so resuming from a state saved
    at step ``N`` reproduces an uninterrupted run.

    With ``growth``, the network grows inside the run: before the step of each
    :class:`~jnet2net.train.Grow` event the model and the whole train state grow exactly
    (params, batch_stats, optimizer moments mapped; step and schedule continue), the new
    step is compiled once, and a record ``{"event": "grow", "epoch", "step", "model",
    "output_error", ...}`` is logged, where ``output_error`` is the relative eval-mode
    output change on a held batch (the test set's first images).

    With ``scale_down`` (a :class:`~jnet2net.scale_down.ScaleDownConfig`), a growing prefix
    of the network's stages freezes on a compute budget (:mod:`jnet2net.scale_down`): every
    candidate cut's step, cache move and recalibration is compiled before the first step
    (nothing compiles while training runs); before a step where the plan moves the cut,
    the freezing stages leave the train state (a record ``{"event": "freeze", "from_cut",
    "to_cut", "layers", "mode", "early", ...}``; its FLOPs count as training FLOPs, its
    seconds as ``move_s``); epoch records add ``cut``, ``trained_layers``,
    ``trained_params``, ``frozen_now``, ``mode``, ``augment``, ``full_epoch_flops``,
    ``cache_bytes``, and the log ends with ``{"step", "summary"}`` (``result.scale_down``).
    The training set must be in memory; growth events and ``scale_down`` do not combine
    (ValueError).

    With ``config.ema_decay``, the state carries an exponential moving average of the
    weights (``state.ema``, started at the starting weights, updated in the step, grown by
    each event's plan like the weights, saved by ``checkpoint.save_train_state``); records'
    ``test_loss``/``test_acc`` are the average's and ``test_loss_live``/``test_acc_live``
    the live weights'; ``FitResult.ema_variables`` is the average. A resumed ``state``
    without an average starts one at its weights; a run without ``ema_decay`` drops a
    state's average. It does not combine with ``scale_down`` (ValueError).

    Under ``jax.distributed`` (:func:`jnet2net.distributed.initialize`) every process calls
    ``fit`` with the same arguments and data; the default mesh spans every process's
    devices, batches are sharded over all of them and the state stays replicated. Process 0
    alone writes ``config.log_path`` and the progress output; callbacks run in every
    process (a checkpoint saver must, since saving is collective).

    Args:
      model: the network (when resuming: the architecture at ``state.step``);
        ``config.compute_dtype`` overrides its ``dtype``.
      train: training set (a :class:`~jnet2net.data.Dataset`, or a
        :class:`~jnet2net.data.StreamSet` to stream); its ``mean``/``std`` normalise both
        sets. ``config.input`` says whether it is held on device or streamed (the same
        batches either way; :mod:`jnet2net.train.inputs`).
      test: evaluation set, or ``None``: held on device, or streamed once in order at
        each evaluation when it is a ``StreamSet`` under ``config.input='stream'`` or
        larger than the device memory budget under ``'auto'``
        (:func:`~jnet2net.train.inputs.streams_eval`); a smaller ``StreamSet`` is read
        into memory first.
      config: the training config.
      state: resume from this state (e.g. restored from a checkpoint): training continues
        at ``state.step``. The caller's arrays stay valid. With ``scale_down``: a
        :class:`~jnet2net.scale_down.ScaleDownCheckpoint` (a scale-down run's state).
      variables: start a fresh state (step 0) from these variables (e.g. a grown student).
      mesh: devices to train on (default: every device, axis ``'data'``).
      on_epoch_end: called as ``on_epoch_end(state, record)`` (the run state, as in
        :attr:`FitResult.state`) after each epoch and each
        ``config.eval_every_steps`` record, e.g. to save a checkpoint (copy what you keep:
        the next step donates ``state``'s buffers), and for the step-0 record of
        ``initial_eval``.
      stop_at_accuracy: stop after the first epoch whose test accuracy reaches this.
      max_steps: stop at this global step (may be mid-epoch) instead of the end; the
        smaller of this and ``config.max_steps`` counts.
      growth: :class:`~jnet2net.train.Grow` events; a resumed run passes the same
        schedule (events before ``state.step`` have already happened).
      growth_key: randomness of the growth events (default: from ``config.seed``); event
        ``i`` (in time order) uses ``fold_in(growth_key, i)``.
      on_grow: called as ``on_grow(new_model, state, record)`` after each growth event.
      precompile: compile every growth event's program and grown step in a background
        thread while training runs (on a zero copy of the state), so the events do not wait
        for compiles; ``False`` compiles each at its event. With ``scale_down``: only cut
        0's step compiles before the first step, the candidate cuts' programs in the
        background (the same training step for step; ``False``: all before the first
        step). With several processes everything compiles in the main thread (a background
        program could interleave its cross-process collectives with the training steps' in
        another order per process).
      initial_eval: a run that starts at step 0 evaluates its starting network on ``test``
        first and logs it as a record at epoch 0, step 0 (a grown student's head start).
      on_step: called as ``on_step(step)`` before each training step (global ``step``)
        and a growth event at that step; what it raises (e.g.
        :class:`jnet2net.signals.Interrupted` from :func:`jnet2net.signals.check_interrupt`)
        ends the run there, once the device work in flight and the background compiles
        have finished.
      scale_down: a :class:`~jnet2net.scale_down.ScaleDownConfig`: train with scale-down.

    Returns:
      :class:`FitResult` with the final state and module and the per-epoch records, also
      appended to ``config.log_path`` as JSON lines (the file is started afresh when
      training starts at step 0; a resumed run first drops the records after its starting
      step). Records count compute: ``step_flops`` (one step of the current architecture,
      XLA's cost analysis), ``train_flops`` and ``train_s`` (cumulative over the run's
      training steps; a resumed run continues the totals of its log, or of its
      ``ScaleDownCheckpoint``), ``compile_s`` (cumulative compile seconds the run waited
      for), ``grow_s`` and ``move_s`` (cumulative seconds of growth events and of
      scale-down freezes), ``background_compile_s`` (compiles overlapped with training)
      and ``wall_s``.

    Raises:
      FloatingPointError: the loss became NaN or infinite.
      ValueError: growth events or ``config.ema_decay`` with ``scale_down``, or
        ``scale_down`` with streamed input.
    """
    check_fit_inputs(model, train, test, config, streams=True)
    if state is not None and variables is not None:
        raise ValueError("pass state (to resume) or variables (to start from them), not both")
    if stop_at_accuracy is not None and not 0.0 < stop_at_accuracy <= 1.0:
        raise ValueError(f"stop_at_accuracy must lie in (0, 1], got {stop_at_accuracy}")
    if stop_at_accuracy is not None and test is None:
        raise ValueError("stop_at_accuracy needs a test set to measure the accuracy on")
    if max_steps is not None:
        max_steps = check_count("max_steps", max_steps, 0)
    mesh = data_mesh() if mesh is None else mesh
    check_batch_size(config.batch_size, mesh)
    streaming = streams_input(config, train, mesh)
    spe = steps_per_epoch(len(train), config.batch_size)
    events = check_growth(growth, config.epochs, spe)
    if scale_down is not None:
        if config.ema_decay is not None:
            raise ValueError(
                "TrainConfig.ema_decay and scale_down do not combine in one fit (scale-down "
                "trains a suffix of the network); pick one"
            )
        if events:
            raise ValueError("growth events and scale_down do not combine in one fit; pick one")
        if streaming:
            raise ValueError(
                "scale_down trains from data in memory: pass a Dataset with "
                f"TrainConfig.input='memory' or 'auto' (got input={config.input!r})"
            )
        # scale_down builds on train (it is the layer above): imported where it is used.
        from jnet2net.scale_down.strategy import scale_down_steps

        stepper, state = scale_down_steps(
            model,
            config,
            scale_down,
            train,
            mesh,
            spe,
            state=state,
            variables=variables,
            precompile=precompile,
        )
        windows: tuple = ()
    else:
        windows = rewarm_windows(events, spe)
        state = start_state(model, config, train, spe, state, variables, windows, mesh)
        stepper = GrowthSteps(
            model,
            config,
            train,
            test,
            mesh,
            spe,
            state,
            streaming=streaming,
            events=events,
            growth_key=growth_key,
            precompile=precompile,
        )
    check_outputs_fit(model, stepper.variables(state), train, test)
    start = int(state.step)
    limits = (config.epochs * spe, max_steps, config.max_steps)
    end = min(limit for limit in limits if limit is not None)
    totals = dict.fromkeys(TOTALS, 0.0)
    if config.log_path:
        totals.update(start_log(config.log_path, start))
    log_path = config.log_path if distributed.is_primary() else None  # one writer

    if start >= end and scale_down is None:  # nothing to train (scale-down still summarises)
        return FitResult(state, [], model, ema_variables=ema_of(state))
    images = labels = None  # streaming: each step gets its batch from the stream
    if not streaming:
        images, labels = put_replicated((train.images, train.labels), mesh)
    permutation = device_permutation(mesh)
    eval_set = None if test is None else put_test_set(test, config, mesh)
    schedule = make_schedule(config, spe, rewarm=windows)
    history: list[Record] = []
    batches: Any = contextlib.nullcontext()
    if streaming:
        batches = train_batches(config, as_stream(train), mesh, start=start, stop=end)

    def tested(state: TrainState) -> Record:
        eval_step = None
        if eval_set is not None:
            eval_step = test_step_for(
                stepper.model, eval_set, train.mean, train.std, config.compute_dtype, mesh
            )
        return ema_eval_metrics(eval_step, stepper.variables(state), ema_of(state), eval_set, mesh)

    def trained(metrics: list[Any], epoch: int, lo: int, stop: int) -> Record:
        """``lr``, ``train_loss``, ``train_acc`` after steps ``lo..stop-1`` of ``epoch``
        (fetching the metrics waits for those steps)."""
        means = epoch_means(metrics)
        lr = float(schedule(stop - 1))
        if not (math.isfinite(means["loss"]) and math.isfinite(means["accuracy"])):
            raise nonfinite_loss_error(epoch + 1, lo, stop, lr, config)
        return {"lr": lr, "train_loss": means["loss"], "train_acc": means["accuracy"]}

    def emit(record: Record, state: TrainState, callback: Callable[..., None] | None) -> None:
        history.append(record)
        if log_path:
            append_jsonl(log_path, record)
        if callback is not None:
            callback(stepper.run_state(state, totals), record)

    t_start = time.perf_counter()
    first_step_s = None
    if initial_eval and start == 0 and eval_set is not None:
        record = {
            "epoch": 0,
            "step": 0,
            **tested(state),
            "wall_s": time.perf_counter() - t_start,
            "lr": float(schedule(0)),
            **totals,
        }
        emit(record, state, on_epoch_end)
    progress = ProgressBar(
        end - start,
        desc=f"train {type(model).__name__}",
        enabled=distributed.is_primary() and progress_enabled(config.progress),
        lines=distributed.is_primary() and progress_lines_enabled(config.progress),
        offset=start,
        batch_size=config.batch_size,
    )
    data = None
    if not streaming:
        data = (images, labels, permutation(config.seed, start // spe, len(train)))
    stepper.begin(state, data, totals)
    in_flight = dispatch.DispatchWindow()  # see dispatch: unbounded queues abort on CPU
    with progress, batches:
        for epoch in range(start // spe, config.epochs):
            lo, hi = max(start, epoch * spe), min(end, (epoch + 1) * spe)
            if lo >= hi:
                break
            if not streaming and epoch != start // spe:
                data = (images, labels, permutation(config.seed, epoch, len(train)))
            t_epoch, mark = time.perf_counter(), lo  # the timed segment: steps mark.. on
            step_metrics = []
            timed_steps = hi - lo
            epoch_s = counted_s = 0.0
            flops_before = totals["train_flops"]
            for step in range(lo, hi):
                if on_step is not None:
                    call_on_step(on_step, step, state, stepper)
                if stepper.due(step):
                    jax.block_until_ready(state)
                    elapsed = time.perf_counter() - t_epoch
                    epoch_s += elapsed
                    stepper.segment(step - mark, elapsed)
                    t_event = time.perf_counter()
                    state, record = stepper.event(step, state, data)
                    event_s = time.perf_counter() - t_event
                    totals[stepper.event_total] += event_s
                    totals["train_flops"] += record.pop("event_flops", 0.0)
                    record.setdefault("epoch", step / spe)
                    record.update(step=step, event_s=event_s, step_flops=stepper.step_flops)
                    record.update(totals)
                    grew = on_grow if record["event"] == "grow" else None
                    emit(record, state, grew and functools.partial(grew, stepper.model))
                    t_epoch, mark = time.perf_counter(), step
                state, metrics = stepper.step(state, next(batches) if streaming else data)
                step_metrics.append(metrics)
                in_flight.push(metrics)
                totals["train_flops"] += stepper.step_flops
                if first_step_s is None:  # kept out of the rates
                    jax.block_until_ready(metrics)
                    first_step_s = time.perf_counter() - t_start
                    totals["train_s"] += time.perf_counter() - t_epoch
                    t_epoch, mark, timed_steps = time.perf_counter(), step + 1, hi - lo - 1
                progress.update(metrics=metrics)
                stepper.after_step(step, state)
                every = config.eval_every_steps
                if every is not None and (step + 1) % every == 0 and step + 1 < hi:
                    fields = trained(step_metrics, epoch, lo, step + 1)
                    elapsed = time.perf_counter() - t_epoch
                    stepper.segment(step + 1 - mark, elapsed)
                    epoch_s, counted_s = epoch_s + elapsed, counted_s + elapsed
                    totals["train_s"] += elapsed
                    record = {
                        "epoch": (step + 1) / spe,
                        "step": step + 1,
                        "wall_s": time.perf_counter() - t_start,
                        **fields,
                        **tested(state),
                        "step_flops": stepper.step_flops,
                        **totals,
                    }
                    emit(record, state, on_epoch_end)
                    t_epoch, mark = time.perf_counter(), step + 1
            fields = trained(step_metrics, epoch, lo, hi)
            elapsed = time.perf_counter() - t_epoch
            stepper.segment(hi - mark, elapsed)
            epoch_s += elapsed
            totals["train_s"] += epoch_s - counted_s
            test_metrics = tested(state)
            record: Record = {
                "epoch": epoch + 1 if hi == (epoch + 1) * spe else hi / spe,  # a stop mid-epoch
                "step": hi,
                "wall_s": time.perf_counter() - t_start,
                "epoch_s": epoch_s,
                "images_per_s": (
                    timed_steps * config.batch_size / max(epoch_s, 1e-9) if timed_steps else None
                ),
                **fields,
                **test_metrics,
                "step_flops": stepper.step_flops,
                "epoch_flops": totals["train_flops"] - flops_before,
                **stepper.fields(state, hi - lo),
                **totals,
            }
            if not any("epoch_s" in r for r in history):
                record["first_step_s"] = first_step_s
                if start > 0:  # its wall_s clock restarted: plots chain the segments
                    record["resumed"] = True
            progress.update(0, note=progress_note(record, config.epochs))
            emit(record, state, on_epoch_end)
            accuracy = test_metrics["test_acc"]
            if (
                stop_at_accuracy is not None
                and accuracy is not None
                and accuracy >= stop_at_accuracy
            ):
                break
    extra, summary = stepper.finish(state, history, totals)
    if summary is not None and log_path:
        append_jsonl(log_path, summary)
    run_state = stepper.run_state(state, totals)
    return FitResult(run_state, history, stepper.model, extra, ema_of(run_state))


def ema_of(state: Any) -> Any:
    """The moving average of the weights that ``state`` carries, or ``None``."""
    return getattr(state, "ema", None)
