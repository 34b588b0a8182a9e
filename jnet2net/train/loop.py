"""``fit`` and ``evaluate``: the whole dataset on device, data parallel over a mesh.

Sections: inputs, device data, evaluation, the training loop.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jnet2net import distributed
from jnet2net.data.dataset import Dataset, normalize
from jnet2net.data.streaming import StreamSet
from jnet2net.models.config import model_config
from jnet2net.train.batches import epoch_permutation, stream_key
from jnet2net.train.config import TrainConfig, restrict
from jnet2net.train.cost import CompiledStep, compile_step, is_compiled
from jnet2net.train.events import (
    Grow,
    check_growth,
    event_key,
    example_input,
    grow_at_event,
    planned_models,
    relative_output_error,
    rewarm_windows,
)
from jnet2net.train.inputs import (
    StreamEvalSet,
    as_stream,
    batch_eval_step,
    batch_spec,
    batch_train_step,
    run_stream_eval,
    streams_eval,
    streams_input,
    train_batches,
)
from jnet2net.train.optim import make_optimizer, make_schedule
from jnet2net.train.progress import (
    ProgressBar,
    append_jsonl,
    filter_jsonl,
    progress_enabled,
    progress_lines_enabled,
    read_jsonl,
)
from jnet2net.train.sharding import check_batch_size, data_mesh, put_replicated, replicated
from jnet2net.train.state import TrainState, cached_call, create_train_state
from jnet2net.train.steps import make_indexed_eval_step, make_indexed_train_step
from jnet2net.variables import check_key, check_variables

Record = dict[str, Any]


class FitResult(NamedTuple):
    """What :func:`fit` returns.

    Attributes:
      state: the final training state (replicated over the mesh).
      history: one record per epoch run: ``epoch`` (1-based; ``step / steps_per_epoch``
        when ``max_steps`` stops it early), ``step`` (global step at its end), ``wall_s``
        (wall time: since ``fit`` started, compiles and evaluations included), ``train_s``
        (training seconds: the training steps only, cumulative over resumes),
        ``epoch_s`` (this epoch's training steps), ``images_per_s`` (over those steps, the
        first step of ``fit`` left out; ``None`` when that was the epoch's only step),
        ``lr`` (of the epoch's last step), ``train_loss``, ``train_acc`` (means over the
        epoch's augmented batches),
        ``test_loss``, ``test_acc`` (``None`` without a test set); the first record also has
        ``first_step_s`` (compile and run of the first step) and, when the run resumed a
        state past step 0, ``resumed: true`` (its ``wall_s`` clock starts again). Every
        record also counts compute (``step_flops``, cumulative ``train_flops``,
        ``train_s``, ``compile_s``);
        growth events add ``{"event": "grow", ...}`` records to the history.
        ``config.eval_every_steps`` adds records between epoch ends, whose ``epoch`` is
        fractional (``step / steps_per_epoch``), without ``epoch_s``/``images_per_s`` and
        with the epoch's means so far; ``initial_eval`` adds a first record at epoch 0,
        step 0 (``test_loss``, ``test_acc``, zero totals).
      model: the final module (the grown one after growth events).
    """

    state: TrainState
    history: list[Record]
    model: nn.Module | None = None


# --- inputs -------------------------------------------------------------------------------


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Full batches per epoch (the last partial batch is dropped)."""
    if batch_size > num_examples:
        raise ValueError(
            f"batch_size={batch_size} is larger than the {num_examples} training examples"
        )
    return num_examples // batch_size


def check_fit_inputs(
    model: nn.Module, train: Any, test: Any, config: Any, *, streams: bool = False
) -> None:
    """Raises TypeError/ValueError unless the datasets, model outputs and config fit
    (``streams``: :class:`~jnet2net.data.StreamSet` s are accepted too)."""
    kinds = (Dataset, StreamSet) if streams else (Dataset,)
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    for what, data in (("train", train), ("test", test)):
        if data is None and what == "test":
            continue
        if not isinstance(data, kinds):
            allowed = "Dataset or StreamSet" if streams else "Dataset"
            raise TypeError(f"{what} must be a jnet2net.data.{allowed}, got {type(data).__name__}")
        classes = getattr(model, "num_classes", data.num_classes)
        if classes != data.num_classes:
            raise ValueError(
                f"the model has {classes} outputs but the {what} set {data.name!r} has "
                f"{data.num_classes} classes"
            )
    if test is not None and test.image_shape != train.image_shape:
        raise ValueError(
            f"train images {train.image_shape} and test images {test.image_shape} differ in shape"
        )


def check_model_outputs(
    model: nn.Module, variables: Any, dataset: Dataset, what: str, *, exact: bool = True
) -> None:
    """Raises ValueError unless ``model`` gives ``(n, dataset.num_classes)`` logits.

    Traces one example's shapes (nothing runs). With ``exact=False`` more logits than
    classes pass. Labels past the logits would otherwise give a silently wrong loss.
    """
    example = jax.ShapeDtypeStruct((1, *dataset.image_shape), jnp.float32)
    logits = jax.eval_shape(functools.partial(model.apply, train=False), variables, example)
    shape = getattr(logits, "shape", None)
    classes = dataset.num_classes
    fits = shape is not None and len(shape) == 2 and shape[0] == 1
    fits = fits and (shape[1] == classes if exact else shape[1] >= classes)
    if not fits:
        need = f"(1, {classes})" if exact else f"(1, k) with k >= {classes}"
        raise ValueError(
            f"{type(model).__name__} gives logits {shape} for one {dataset.image_shape} image, "
            f"but the {what} set {dataset.name!r} has {classes} classes: it needs {need}"
        )


def check_outputs_fit(model: nn.Module, variables: Any, train: Dataset, test: Any) -> None:
    """:func:`check_model_outputs` for the train set and, when given, the test set."""
    for what, data in (("train", train), ("test", test)):
        if data is not None:
            check_model_outputs(model, variables, data, what)


def check_count(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int; raises ValueError unless it is an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


# --- device data --------------------------------------------------------------------------


class DeviceEvalSet(NamedTuple):
    """An evaluation set on device, padded to whole batches (padding labels are ``-1``)."""

    images: jax.Array
    labels: jax.Array
    batch_size: int
    num_batches: int


def eval_batch_size(requested: int, num_examples: int, mesh: Mesh) -> int:
    """``requested``, capped at the set's size, rounded up to a multiple of the devices."""
    size = max(1, min(requested, num_examples))
    return -(-size // mesh.size) * mesh.size


def put_eval_set(dataset: Dataset, batch_size: int, mesh: Mesh) -> DeviceEvalSet:
    """``dataset`` padded to a multiple of ``batch_size`` and replicated over ``mesh``."""
    n = len(dataset)
    if n == 0:
        raise ValueError(f"the evaluation set {dataset.name!r} is empty: no accuracy to measure")
    num_batches = -(-n // batch_size)
    pad = num_batches * batch_size - n
    images = np.concatenate([dataset.images, np.zeros((pad, *dataset.image_shape), np.uint8)])
    labels = np.concatenate([dataset.labels, np.full((pad,), -1, np.int32)])
    images, labels = put_replicated((images, labels), mesh)
    return DeviceEvalSet(images, labels, batch_size, num_batches)


# --- compiled functions, shared by calls with equal settings ------------------------------

#: The config fields that the train step depends on (the optimizer lives in the state).
STEP_FIELDS = ("batch_size", "compute_dtype", "augment", "crop_padding", "seed", "label_smoothing")


@functools.lru_cache(maxsize=16)
def _train_step(
    model: nn.Module,
    config: TrainConfig,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    spe: int,
    mesh: Mesh,
) -> Callable[..., Any]:
    return make_indexed_train_step(
        model, config, mean=mean, std=std, steps_per_epoch=spe, mesh=mesh
    )


@functools.lru_cache(maxsize=16)
def _eval_step(
    model: nn.Module,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    batch_size: int,
    compute_dtype: str | None,
    mesh: Mesh,
) -> Callable[..., Any]:
    return make_indexed_eval_step(
        model, mean=mean, std=std, batch_size=batch_size, compute_dtype=compute_dtype, mesh=mesh
    )


@functools.lru_cache(maxsize=16)
def _permutation(mesh: Mesh) -> Callable[[int, int, int], jax.Array]:
    return jax.jit(epoch_permutation, static_argnums=(0, 2), out_shardings=replicated(mesh))


# --- evaluation ---------------------------------------------------------------------------


def run_eval(
    eval_step: Callable[..., Any], variables: Any, data: DeviceEvalSet, mesh: Mesh
) -> tuple[float, float]:
    """``(loss, accuracy)`` of an indexed eval step over every batch of ``data``."""
    zero = np.zeros((), np.float32)
    totals = put_replicated({"loss": zero, "correct": zero, "count": zero}, mesh)
    for index in range(data.num_batches):
        totals = eval_step(variables, data.images, data.labels, np.int32(index), totals)
    totals = jax.device_get(totals)
    count = max(float(totals["count"]), 1.0)
    return float(totals["loss"]) / count, float(totals["correct"]) / count


def evaluate(
    model: nn.Module,
    variables: Any,
    dataset: Dataset | StreamSet,
    *,
    batch_size: int = 512,
    mesh: Mesh | None = None,
    compute_dtype: str | None = None,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on every example of ``dataset``.

    Args:
      model: the network.
      variables: ``{'params', 'batch_stats'}`` or a :class:`TrainState`.
      dataset: images are normalised with its ``mean``/``std``; a
        :class:`~jnet2net.data.StreamSet` is streamed once in order (e.g. ImageNet's
        validation split), each process reading its rows of every batch.
      batch_size: examples per device batch (rounded up to a multiple of the devices).
      mesh: devices to shard batches over (default: all).
      compute_dtype: e.g. ``'bfloat16'``; ``None``: the model's own dtype.

    Returns:
      ``(loss, accuracy)`` as Python floats.
    """
    if not isinstance(dataset, (Dataset, StreamSet)):
        raise TypeError(
            f"dataset must be a jnet2net.data.Dataset or StreamSet, got {type(dataset).__name__}"
        )
    batch_size = check_count("batch_size", batch_size, 1)
    if isinstance(variables, TrainState):
        variables = variables.variables
    if len(dataset):
        check_model_outputs(model, variables, dataset, "evaluation", exact=False)
    mesh = data_mesh() if mesh is None else mesh
    batch = eval_batch_size(batch_size, len(dataset), mesh)
    if isinstance(dataset, StreamSet):
        if not len(dataset):
            raise ValueError(f"the evaluation set {dataset.name!r} is empty: nothing to measure")
        step = cached_call(batch_eval_step, model, dataset.mean, dataset.std, compute_dtype, mesh)
        return run_stream_eval(step, put_replicated(variables, mesh), dataset, batch, mesh)
    data = put_eval_set(dataset, batch, mesh)
    step = cached_call(_eval_step, model, dataset.mean, dataset.std, batch, compute_dtype, mesh)
    return run_eval(step, put_replicated(variables, mesh), data, mesh)


# --- the training loop --------------------------------------------------------------------


def epoch_means(metrics: list[dict[str, jax.Array]]) -> dict[str, float]:
    """Means over an epoch of per-step scalar metrics (fetched from device once, stacked on
    the host: no eager device op per epoch)."""
    host = jax.device_get(metrics)
    return {k: float(np.mean(np.stack([m[k] for m in host]))) for k in host[0]}


def drop_later_records(log_path: str, step: int) -> None:
    """Rewrites a JSONL log without the records after ``step``, event records at ``step``
    (the resumed run makes them again) and unreadable lines.

    A run resumed at ``step`` logs those epochs again; they are left over when it stopped
    between logging an epoch and saving its checkpoint, or when it resumes an earlier one.
    """

    def keep(record: Record) -> bool:
        at = record.get("step")
        if not isinstance(at, int):
            return True
        return at < step or (at == step and "event" not in record)

    filter_jsonl(log_path, keep)


def nonfinite_loss_error(
    epoch: int, lo: int, hi: int, lr: float, config: TrainConfig
) -> FloatingPointError:
    """The error raised when epoch ``epoch`` (steps ``lo..hi-1``) had a non-finite loss;
    it suggests only changes to settings the config does not have already."""
    advice = [f"a lower learning_rate (now {config.learning_rate:g})"]
    if config.warmup_epochs == 0:
        advice.append("warmup_epochs > 0")
    if config.compute_dtype != "float32":
        advice.append(f"compute_dtype=float32 (now {config.compute_dtype})")
    return FloatingPointError(
        f"training diverged: the mean training loss of epoch {epoch} (steps {lo}..{hi - 1}, "
        f"learning rate {lr:.4g}) is not finite. Try {' or '.join(advice)}."
    )


def fit(
    model: nn.Module,
    train: Dataset,
    test: Dataset | None,
    config: TrainConfig,
    *,
    state: TrainState | None = None,
    variables: Any = None,
    mesh: Mesh | None = None,
    on_epoch_end: Callable[[TrainState, Record], None] | None = None,
    stop_at_accuracy: float | None = None,
    max_steps: int | None = None,
    growth: Sequence[Grow] | None = None,
    growth_key: jax.Array | None = None,
    on_grow: Callable[[nn.Module, TrainState, Record], None] | None = None,
    precompile: bool = True,
    initial_eval: bool = False,
    on_step: Callable[[int], None] | None = None,
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
        at ``state.step``. The caller's arrays stay valid.
      variables: start a fresh state (step 0) from these variables (e.g. a grown student).
      mesh: devices to train on (default: every device, axis ``'data'``).
      on_epoch_end: called as ``on_epoch_end(state, record)`` after each epoch and each
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
        for compiles; ``False`` compiles each at its event. With several processes each
        event compiles at its step (a background program could interleave its
        cross-process collectives with the training steps' in another order per process).
      initial_eval: a run that starts at step 0 evaluates its starting network on ``test``
        first and logs it as a record at epoch 0, step 0 (a grown student's head start).
      on_step: called as ``on_step(step)`` before each training step (global ``step``)
        and a growth event at that step; what it raises (e.g.
        :class:`jnet2net.signals.Interrupted` from :func:`jnet2net.signals.check_interrupt`)
        ends the run there, once the device work in flight and the background compiles
        have finished.

    Returns:
      :class:`FitResult` with the final state and module and the per-epoch records, also
      appended to ``config.log_path`` as JSON lines (the file is started afresh when
      training starts at step 0; a resumed run first drops the records after its starting
      step). Records count compute: ``step_flops`` (one step of the current architecture,
      XLA's cost analysis), ``train_flops`` and ``train_s`` (cumulative over the run's
      training steps; a resumed run continues the totals of its log), ``compile_s``
      (cumulative compile seconds the run waited for), ``grow_s`` (cumulative seconds of
      growth events), ``background_compile_s`` (compiles overlapped with training) and
      ``wall_s``.

    Raises:
      FloatingPointError: the loss became NaN or infinite.
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
    test_streams = test is not None and streams_eval(config, test, mesh)
    if isinstance(test, StreamSet) and not test_streams:
        test = test.to_dataset()
    spe = steps_per_epoch(len(train), config.batch_size)
    events = check_growth(growth, config.epochs, spe)
    growth_key = stream_key(config.seed, "growth") if growth_key is None else growth_key
    if events:
        check_key("fit", growth_key)
    windows = rewarm_windows(events, spe)
    tx = make_optimizer(config, spe, rewarm=windows)
    if state is None:
        example = np.zeros((1, *train.image_shape), np.uint8)
        state = create_train_state(
            model, config, example, variables=variables, steps_per_epoch=spe, tx=tx
        )
    elif not isinstance(state, TrainState):
        raise TypeError(f"state must be a jnet2net TrainState, got {type(state).__name__}")
    else:
        if hasattr(model, "example_input"):
            check_variables(model, state.variables)
        if windows:
            state = state.replace(tx=tx)
    check_outputs_fit(model, state.variables, train, test)
    state = put_replicated(state, mesh)
    start = int(state.step)
    limits = (config.epochs * spe, max_steps, config.max_steps)
    end = min(limit for limit in limits if limit is not None)
    pending = [(i, e) for i, e in enumerate(events) if e.at_step(spe) >= start]
    planned_models(model, [e for _, e in pending], train.image_shape)  # fails before training
    totals = dict.fromkeys(TOTALS, 0.0)
    if config.log_path:
        totals.update(start_log(config.log_path, start))
    log_path = config.log_path if distributed.is_primary() else None  # one writer

    images = labels = None  # streaming: each step gets its batch from the stream
    if not streaming:
        images, labels = put_replicated((train.images, train.labels), mesh)
    permutation = _permutation(mesh)
    step_config = restrict(config, STEP_FIELDS)
    eval_set: DeviceEvalSet | StreamEvalSet | None = None
    if test is not None:
        batch = eval_batch_size(config.eval_batch_size, len(test), mesh)
        if test_streams:
            eval_set = StreamEvalSet(as_stream(test), batch)
        else:
            eval_set = put_eval_set(test, batch, mesh)
    held_set = test if test is not None else train
    if isinstance(held_set, StreamSet):
        held_set = held_set.to_dataset(HELD_BATCH)
    held = put_replicated(held_batch(held_set, train.mean, train.std), mesh)
    schedule = make_schedule(config, spe, rewarm=windows)
    history: list[Record] = []
    if start >= end:
        return FitResult(state, history, model)
    batches: Any = contextlib.nullcontext()
    if streaming:
        batches = train_batches(config, as_stream(train), mesh, start=start, stop=end)

    def compiled_for(
        model: nn.Module, state: TrainState, order: Any, *, total: str = "compile_s"
    ) -> CompiledStep:
        if streaming:
            jitted = cached_call(batch_train_step, model, step_config, train.mean, train.std, mesh)
            data = batch_spec(train.image_shape, config.batch_size, mesh)
        else:
            jitted = cached_call(_train_step, model, step_config, train.mean, train.std, spe, mesh)
            data = (images, labels, order)
        fresh = not is_compiled(jitted, state, *data, devices=mesh.size)
        step = compile_step(jitted, state, *data, devices=mesh.size)
        if fresh:
            totals[total] += step.compile_s
        return step

    def precompile_events(model: nn.Module, zero_state: TrainState, order: jax.Array) -> None:
        """Runs every pending event on a zero state and compiles the grown steps, so the
        real events find their programs compiled (a background thread, during training)."""
        for index, event in pending:
            (new_model,) = planned_models(model, [event], train.image_shape)
            zero_state, _, _ = _jitted_growth(model, event)(
                zero_state, put_replicated(event_key(growth_key, index), mesh), held
            )
            zero_state = put_replicated(zero_state, mesh)
            compiled_for(new_model, zero_state, order, total="background_compile_s")
            model = new_model

    def eval_step_for(model: nn.Module) -> Any:
        if eval_set is None:
            return None
        if isinstance(eval_set, StreamEvalSet):
            return cached_call(
                batch_eval_step, model, train.mean, train.std, config.compute_dtype, mesh
            )
        return cached_call(
            _eval_step,
            model,
            train.mean,
            train.std,
            eval_set.batch_size,
            config.compute_dtype,
            mesh,
        )

    t_start = time.perf_counter()
    first_step_s = None
    eval_step = eval_step_for(model)
    if initial_eval and start == 0 and eval_set is not None:
        record = {
            "epoch": 0,
            "step": 0,
            **_test_metrics(eval_step, state, eval_set, mesh),
            "wall_s": time.perf_counter() - t_start,
            "lr": float(schedule(0)),
            **totals,
        }
        history.append(record)
        if log_path:
            append_jsonl(log_path, record)
        if on_epoch_end is not None:
            on_epoch_end(state, record)
    progress = ProgressBar(
        end - start,
        desc=f"train {type(model).__name__}",
        enabled=distributed.is_primary() and progress_enabled(config.progress),
        lines=distributed.is_primary() and progress_lines_enabled(config.progress),
        offset=start,
        batch_size=config.batch_size,
    )
    step_fn: CompiledStep | None = None
    background = None
    zero_state = None  # made before the first step donates the state's buffers
    if pending and precompile and jax.process_count() == 1:
        zero_state = put_replicated(jax.tree.map(jnp.zeros_like, state), mesh)
    with progress, batches:
        for epoch in range(start // spe, config.epochs):
            lo, hi = max(start, epoch * spe), min(end, (epoch + 1) * spe)
            if lo >= hi:
                break
            order = None if streaming else permutation(config.seed, epoch, len(train))
            if step_fn is None:
                step_fn = compiled_for(model, state, order)
                if zero_state is not None:  # the events' compiles overlap training
                    pool = concurrent.futures.ThreadPoolExecutor(1)
                    background = pool.submit(precompile_events, model, zero_state, order)
                    pool.shutdown(wait=False)
                    zero_state = None
            t_epoch = time.perf_counter()
            step_metrics = []
            timed_steps = hi - lo
            epoch_s = counted_s = 0.0
            for step in range(lo, hi):
                if on_step is not None:
                    call_on_step(on_step, step, state, background)
                if pending and pending[0][1].at_step(spe) == step:
                    jax.block_until_ready(state)
                    epoch_s += time.perf_counter() - t_epoch
                    index, event = pending.pop(0)
                    t_grow = time.perf_counter()
                    if background is not None:
                        background.result()  # re-raises what went wrong there
                    model, state, grow_record = _grow(
                        model, state, event, event_key(growth_key, index), held, mesh
                    )
                    grow_s = time.perf_counter() - t_grow
                    totals["grow_s"] += grow_s
                    step_fn = compiled_for(model, state, order)
                    eval_step = eval_step_for(model)
                    grow_record.update(
                        epoch=event.at_epoch,
                        step=step,
                        event_s=grow_s,
                        step_flops=step_fn.flops,
                        **totals,
                    )
                    history.append(grow_record)
                    if log_path:
                        append_jsonl(log_path, grow_record)
                    if on_grow is not None:
                        on_grow(model, state, grow_record)
                    t_epoch = time.perf_counter()
                data = next(batches) if streaming else (images, labels, order)
                state, metrics = step_fn.call(state, *data)
                step_metrics.append(metrics)
                totals["train_flops"] += step_fn.flops
                if first_step_s is None:  # kept out of the rates
                    jax.block_until_ready(metrics)
                    first_step_s = time.perf_counter() - t_start
                    totals["train_s"] += time.perf_counter() - t_epoch
                    t_epoch, timed_steps = time.perf_counter(), hi - lo - 1
                progress.update(metrics=metrics)
                every = config.eval_every_steps
                if every is not None and (step + 1) % every == 0 and step + 1 < hi:
                    means = epoch_means(step_metrics)
                    elapsed = time.perf_counter() - t_epoch
                    epoch_s, counted_s = epoch_s + elapsed, counted_s + elapsed
                    totals["train_s"] += elapsed
                    lr = float(schedule(step))
                    if not (math.isfinite(means["loss"]) and math.isfinite(means["accuracy"])):
                        raise nonfinite_loss_error(epoch + 1, lo, step + 1, lr, config)
                    record = {
                        "epoch": (step + 1) / spe,
                        "step": step + 1,
                        "wall_s": time.perf_counter() - t_start,
                        "lr": lr,
                        "train_loss": means["loss"],
                        "train_acc": means["accuracy"],
                        **_test_metrics(eval_step, state, eval_set, mesh),
                        "step_flops": step_fn.flops,
                        **totals,
                    }
                    history.append(record)
                    if log_path:
                        append_jsonl(log_path, record)
                    if on_epoch_end is not None:
                        on_epoch_end(state, record)
                    t_epoch = time.perf_counter()
            means = epoch_means(step_metrics)
            epoch_s += time.perf_counter() - t_epoch
            totals["train_s"] += epoch_s - counted_s
            lr = float(schedule(hi - 1))
            if not (math.isfinite(means["loss"]) and math.isfinite(means["accuracy"])):
                raise nonfinite_loss_error(epoch + 1, lo, hi, lr, config)
            tested = _test_metrics(eval_step, state, eval_set, mesh)
            test_acc = tested["test_acc"]
            record: Record = {
                "epoch": epoch + 1 if hi == (epoch + 1) * spe else hi / spe,  # a stop mid-epoch
                "step": hi,
                "wall_s": time.perf_counter() - t_start,
                "epoch_s": epoch_s,
                "images_per_s": (
                    timed_steps * config.batch_size / max(epoch_s, 1e-9) if timed_steps else None
                ),
                "lr": lr,
                "train_loss": means["loss"],
                "train_acc": means["accuracy"],
                **tested,
                "step_flops": step_fn.flops,
                **totals,
            }
            if not any("epoch_s" in r for r in history):
                record["first_step_s"] = first_step_s
                if start > 0:  # its wall_s clock restarted: plots chain the segments
                    record["resumed"] = True
            history.append(record)
            progress.update(0, note=_summary(record, config.epochs))
            if log_path:
                append_jsonl(log_path, record)
            if on_epoch_end is not None:
                on_epoch_end(state, record)
            if (
                stop_at_accuracy is not None
                and test_acc is not None
                and test_acc >= stop_at_accuracy
            ):
                break
    return FitResult(state, history, model)


def _test_metrics(
    eval_step: Any,
    state: TrainState,
    eval_set: DeviceEvalSet | StreamEvalSet | None,
    mesh: Mesh,
) -> Record:
    """``{'test_loss', 'test_acc'}`` of ``state`` on ``eval_set`` (``None`` without one)."""
    if eval_set is None:
        return {"test_loss": None, "test_acc": None}
    if isinstance(eval_set, StreamEvalSet):
        loss, accuracy = run_stream_eval(
            eval_step, state.variables, eval_set.data, eval_set.batch_size, mesh
        )
    else:
        loss, accuracy = run_eval(eval_step, state.variables, eval_set, mesh)
    return {"test_loss": loss, "test_acc": accuracy}


def call_on_step(
    on_step: Callable[[int], None],
    step: int,
    state: TrainState,
    background: concurrent.futures.Future | None,
) -> None:
    """``on_step(step)``; when it raises, the steps dispatched to the device and the
    background compiles finish first (an interpreter that exits while XLA runs them can
    crash)."""
    try:
        on_step(step)
    except BaseException:
        jax.block_until_ready(state)
        if background is not None:
            concurrent.futures.wait([background])
        raise


#: The cumulative compute counts every record carries (and a resumed run continues).
TOTALS = ("train_flops", "train_s", "compile_s", "grow_s", "background_compile_s")

#: Images of the held batch on which a growth event's output change is measured.
HELD_BATCH = 64


def held_batch(dataset: Dataset, mean: tuple[float, ...], std: tuple[float, ...]) -> jax.Array:
    """The first :data:`HELD_BATCH` images of ``dataset`` normalised by ``mean``/``std``:
    ``(min(n, 64), h, w, c)`` float32."""
    return normalize(jnp.asarray(dataset.images[:HELD_BATCH]), mean, std)


def _grow(
    model: nn.Module,
    state: TrainState,
    event: Grow,
    key: jax.Array,
    held: jax.Array,
    mesh: Mesh,
) -> tuple[nn.Module, TrainState, Record]:
    """One growth event: the grown model and state (replicated), and the event's record.

    The growth and both networks' outputs on ``held`` run as one compiled program (op by op,
    growing a ResNet-20 state takes tens of seconds on a CPU).
    """
    (new_model,) = planned_models(model, [event], held.shape[1:])
    new_state, before, after = _jitted_growth(model, event)(state, put_replicated(key, mesh), held)
    new_state = put_replicated(new_state, mesh)
    record: Record = {
        "event": "grow",
        "grow": event.to_dict(),
        "model": _architecture(new_model),
        "output_error": relative_output_error(before, after),
    }
    return new_model, new_state, record


@functools.lru_cache(maxsize=8)
def _jitted_growth(model: nn.Module, event: Grow) -> Callable[..., Any]:
    """``(state, key, held) -> (grown state, logits before, logits after)``, jitted."""

    def grow(state: TrainState, key: jax.Array, held: jax.Array) -> Any:
        # Threefry draws for every leaf make this program compile several times slower on a
        # CPU than the RBG generator (ResNet-20, fresh units: 24 s against 5 s), so the
        # event's key seeds an RBG key.
        key = jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl="rbg")
        example = example_input(held.shape[1:])  # numpy: concrete inside the trace
        new_model, new_state = grow_at_event(model, state, event, key, example_input=example)
        before = model.apply(state.variables, held, train=False)
        after = new_model.apply(new_state.variables, held, train=False)
        return new_state, before, after

    return jax.jit(grow)


def _architecture(model: nn.Module) -> Any:
    try:
        return model_config(model)
    except TypeError:
        return repr(model)


def start_log(log_path: str, step: int) -> dict[str, float]:
    """Readies a run's JSONL log for a run that starts at ``step``; returns the compute
    totals to continue (:func:`logged_totals`, ``{}`` at step 0).

    At step 0 an old log is removed, later the records after ``step`` are dropped
    (:func:`drop_later_records`). With several processes only process 0 changes the file;
    the others read it after a barrier.
    """
    if distributed.is_primary() and os.path.exists(log_path):
        if step == 0:
            os.remove(log_path)
        else:
            drop_later_records(log_path, step)
    distributed.barrier("start_log")
    if step == 0 or not os.path.exists(log_path):
        return {}
    return logged_totals(log_path, step)


def logged_totals(log_path: str, step: int) -> dict[str, float]:
    """The compute totals of the last record at or before ``step`` in a JSONL log (read
    after :func:`drop_later_records`, which leaves only readable objects)."""
    totals: dict[str, float] = {}
    for record in read_jsonl(log_path):
        at = record.get("step")
        if isinstance(at, int) and at <= step and "train_flops" in record:
            totals = {k: float(v) for k, v in record.items() if k in TOTALS and v is not None}
    return totals


def _summary(record: Record, epochs: int) -> str:
    text = f"epoch {record['epoch']:.4g}/{epochs} loss {record['train_loss']:.3f}"
    if record["test_acc"] is not None:
        text += f" test_acc {record['test_acc']:.3f}"
    return text
