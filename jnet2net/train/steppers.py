"""Steppers: what :func:`~jnet2net.train.fit` runs at each step, and the events that change it.

``fit`` owns the epochs, records, evaluation, logging, callbacks and timing; a *stepper*
owns the step: which compiled program runs, on what, and the *events* before a step that
change it (a growth event grows the network, a scale-down freeze moves the cut). fit calls
a stepper's methods at fixed points of its loop (:class:`Stepper`). :class:`GrowthSteps` is
the plain step with :class:`~jnet2net.train.Grow` events; scale-down's lives in
:mod:`jnet2net.scale_down.strategy`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jnet2net.data.dataset import Dataset, normalize
from jnet2net.data.streaming import StreamSet
from jnet2net.models.config import model_config
from jnet2net.train.batches import stream_key
from jnet2net.train.config import TrainConfig, restrict
from jnet2net.train.cost import CompiledStep, compile_step, is_compiled
from jnet2net.train.events import (
    Grow,
    event_key,
    example_input,
    grow_at_event,
    planned_models,
    relative_output_error,
)
from jnet2net.train.inputs import batch_spec, batch_train_step
from jnet2net.train.sharding import put_replicated
from jnet2net.train.state import TrainState, cached_call
from jnet2net.train.steps import make_indexed_train_step
from jnet2net.variables import check_key

Record = dict[str, Any]
Metrics = dict[str, jax.Array]


class Stepper:
    """The points at which :func:`~jnet2net.train.fit` hands over to a training strategy
    (the defaults: no events, the state is the whole network's, nothing else to report).

    ``data`` is ``(images, labels, order)`` (the training set on device and the epoch's
    permutation) or, when streaming, the step's ``(images, labels)`` (``None`` at
    :meth:`begin`). ``totals`` is fit's dict of cumulative compute counts.

    Attributes:
      model: the network the records and the evaluation describe now.
      step_flops: FLOPs of the step in use (after :meth:`begin`).
      event_total: the ``totals`` key that the seconds of its events add to.
      background: the work started by :meth:`run_in_background` (``None``: none).
    """

    model: nn.Module
    step_flops: float
    event_total = "grow_s"
    background: concurrent.futures.Future | None = None

    def run_in_background(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Starts ``fn(*args, **kwargs)`` in a thread of its own (:attr:`background`)."""
        pool = concurrent.futures.ThreadPoolExecutor(1)
        self.background = pool.submit(fn, *args, **kwargs)
        pool.shutdown(wait=False)

    def begin(self, state: TrainState, data: Any, totals: dict[str, float]) -> None:
        """Compiles what the run needs (adding to ``totals``), once, before the first step."""
        raise NotImplementedError

    def step(self, state: TrainState, data: Any) -> tuple[TrainState, Metrics]:
        """One training step (the state is donated)."""
        raise NotImplementedError

    def due(self, step: int) -> bool:
        """Whether an event comes before ``step``."""
        return False

    def event(self, step: int, state: TrainState, data: Any) -> tuple[TrainState, Record]:
        """The event before ``step``: the new state and its record (``event``, ...;
        ``event_flops``: the training FLOPs it did)."""
        raise NotImplementedError

    def after_step(self, step: int, state: TrainState) -> None:
        """After step ``step`` (e.g. a readiness check); must not wait for the device."""

    def segment(self, steps: int, seconds: float) -> None:
        """The last ``steps`` steps took ``seconds`` (timed once the device caught up)."""

    def wait(self) -> None:
        """Returns once background work has finished; re-raises its errors."""
        if self.background is not None:
            self.background.result()

    def variables(self, state: TrainState) -> Any:
        """The whole network's variables, for evaluation."""
        return state.variables

    def fields(self, state: TrainState, steps: int) -> Record:
        """Extra fields of the record of an epoch (or its part) of ``steps`` steps."""
        return {}

    def run_state(self, state: TrainState, totals: dict[str, float]) -> Any:
        """What the callbacks and the result get: ``fit(state=...)`` continues from it."""
        return state

    def finish(
        self, state: TrainState, history: list[Record], totals: dict[str, float]
    ) -> tuple[Any, Record | None]:
        """``(FitResult.scale_down``-like summary, a last log record``)``, or ``None`` each."""
        return None, None


def call_on_step(
    on_step: Callable[[int], None], step: int, state: TrainState, stepper: Stepper
) -> None:
    """``on_step(step)``; when it raises, the steps dispatched to the device and the
    stepper's background work finish first (an interpreter that exits while XLA runs them
    can crash)."""
    try:
        on_step(step)
    except BaseException:
        jax.block_until_ready(state)
        with contextlib.suppress(Exception):
            stepper.wait()
        raise


#: The config fields that the train step depends on (the optimizer lives in the state).
STEP_FIELDS = (
    "batch_size",
    "compute_dtype",
    "augment",
    "crop_padding",
    "seed",
    "label_smoothing",
    "ema_decay",
)

#: Images of the held batch on which a growth event's output change is measured.
HELD_BATCH = 64


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


def held_batch(dataset: Dataset, mean: tuple[float, ...], std: tuple[float, ...]) -> jax.Array:
    """The first :data:`HELD_BATCH` images of ``dataset`` normalised by ``mean``/``std``:
    ``(min(n, 64), h, w, c)`` float32."""
    return normalize(jnp.asarray(dataset.images[:HELD_BATCH]), mean, std)


class GrowthSteps(Stepper):
    """The plain training step, grown at each :class:`~jnet2net.train.Grow` event.

    At an event the model and the whole train state grow exactly (one compiled program,
    :func:`_jitted_growth`) and the grown step is compiled; with ``precompile`` every
    pending event's program and step compile in a background thread while training runs,
    on a zero copy of the state.

    Args:
      model: the network at ``state.step``.
      config, train, test, mesh, steps_per_epoch, streaming: as ``fit`` has them.
      state: the state the run starts from (replicated).
      events: the run's growth schedule; those from ``state.step`` on are pending.
      growth_key: event ``i`` uses ``fold_in(growth_key, i)`` (default: from the seed).
      precompile: compile the events in the background.

    Raises:
      ValueError: a pending event does not fit the network (before training).
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        train: Any,
        test: Dataset | None,
        mesh: Mesh,
        steps_per_epoch: int,
        state: TrainState,
        *,
        streaming: bool,
        events: Sequence[Grow] = (),
        growth_key: jax.Array | None = None,
        precompile: bool = True,
    ) -> None:
        start = int(state.step)
        self.pending = [(i, e) for i, e in enumerate(events) if e.at_step(steps_per_epoch) >= start]
        planned_models(model, [e for _, e in self.pending], train.image_shape)  # fails early
        self.growth_key = stream_key(config.seed, "growth") if growth_key is None else growth_key
        if events:
            check_key("fit", self.growth_key)
        self.held = None  # the batch on which each event's output change is measured
        if self.pending:
            held_set = test if test is not None else train
            if isinstance(held_set, StreamSet):
                held_set = held_set.to_dataset(HELD_BATCH)
            self.held = put_replicated(held_batch(held_set, train.mean, train.std), mesh)
        self.model, self.config, self.train, self.mesh = model, config, train, mesh
        self.spe, self.streaming, self.precompile = steps_per_epoch, streaming, precompile
        self.step_config = restrict(config, STEP_FIELDS)
        self.compiled: CompiledStep | None = None
        self.totals: dict[str, float] = {}

    @property
    def step_flops(self) -> float:
        return self.compiled.flops

    def _compile(
        self, model: nn.Module, state: TrainState, data: Any, total: str = "compile_s"
    ) -> CompiledStep:
        train, mesh = self.train, self.mesh
        if self.streaming:
            jitted = cached_call(
                batch_train_step, model, self.step_config, train.mean, train.std, mesh
            )
            data = batch_spec(train.image_shape, self.config.batch_size, mesh)
        else:
            jitted = cached_call(
                _train_step, model, self.step_config, train.mean, train.std, self.spe, mesh
            )
        fresh = not is_compiled(jitted, state, *data, devices=mesh.size)
        step = compile_step(jitted, state, *data, devices=mesh.size)
        if fresh:
            self.totals[total] += step.compile_s
        return step

    def _precompile_events(self, zero_state: TrainState, data: Any) -> None:
        """Runs every pending event on a zero state and compiles the grown steps, so the
        real events find their programs compiled (a background thread, during training)."""
        model = self.model
        for index, event in self.pending:
            (new_model,) = planned_models(model, [event], self.train.image_shape)
            key = put_replicated(event_key(self.growth_key, index), self.mesh)
            zero_state, _, _ = _jitted_growth(model, event)(zero_state, key, self.held)
            zero_state = put_replicated(zero_state, self.mesh)
            self._compile(new_model, zero_state, data, total="background_compile_s")
            model = new_model

    def begin(self, state: TrainState, data: Any, totals: dict[str, float]) -> None:
        self.totals = totals
        zero_state = None  # made before the first step donates the state's buffers
        if self.pending and self.precompile and jax.process_count() == 1:
            zero_state = put_replicated(jax.tree.map(jnp.zeros_like, state), self.mesh)
        self.compiled = self._compile(self.model, state, data)
        if zero_state is not None:  # the events' compiles overlap training
            self.run_in_background(self._precompile_events, zero_state, data)

    def due(self, step: int) -> bool:
        return bool(self.pending) and self.pending[0][1].at_step(self.spe) == step

    def event(self, step: int, state: TrainState, data: Any) -> tuple[TrainState, Record]:
        index, event = self.pending.pop(0)
        self.wait()
        key = event_key(self.growth_key, index)
        self.model, state, record = _grow(self.model, state, event, key, self.held, self.mesh)
        self.compiled = self._compile(self.model, state, data)
        record["epoch"] = event.at_epoch
        return state, record

    def step(self, state: TrainState, data: Any) -> tuple[TrainState, Metrics]:
        return self.compiled.call(state, *data)


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
        "output_error": relative_output_error(before[0], after[0]),
    }
    if len(before) > 1:  # the moving average of the weights grew too
        record["ema_output_error"] = relative_output_error(before[1], after[1])
    return new_model, new_state, record


@functools.lru_cache(maxsize=8)
def _jitted_growth(model: nn.Module, event: Grow) -> Callable[..., Any]:
    """``(state, key, held) -> (grown state, logits before, logits after)``, jitted; the
    logits are a tuple: the weights', then (when the state has one) their average's."""

    def grow(state: TrainState, key: jax.Array, held: jax.Array) -> Any:
        # Threefry draws for every leaf make this program compile several times slower on a
        # CPU than the RBG generator (ResNet-20, fresh units: 24 s against 5 s), so the
        # event's key seeds an RBG key.
        key = jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl="rbg")
        example = example_input(held.shape[1:])  # numpy: concrete inside the trace
        new_model, new_state = grow_at_event(model, state, event, key, example_input=example)
        trees = [(state.variables, new_state.variables)]
        if state.ema is not None:
            trees.append((state.ema, new_state.ema))
        before = tuple(model.apply(old, held, train=False) for old, _ in trees)
        after = tuple(new_model.apply(new, held, train=False) for _, new in trees)
        return new_state, before, after

    return jax.jit(grow)


def _architecture(model: nn.Module) -> Any:
    try:
        return model_config(model)
    except TypeError:
        return repr(model)
