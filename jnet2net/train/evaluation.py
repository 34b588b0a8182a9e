"""Evaluation: a test set on device, padded to whole batches, and ``evaluate``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jnet2net.data.dataset import Dataset
from jnet2net.data.streaming import StreamSet, eval_batches
from jnet2net.train import dispatch
from jnet2net.train.config import TrainConfig
from jnet2net.train.inputs import as_stream, streams_eval
from jnet2net.train.sharding import batch_sharding, data_mesh, put_replicated, replicated
from jnet2net.train.state import TrainState, cached_call
from jnet2net.train.steps import eval_step_fn, make_indexed_eval_step


def check_count(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int; raises ValueError unless it is an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


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


def check_not_empty(dataset: Dataset | StreamSet) -> None:
    """Raises ValueError when ``dataset`` holds no example (no accuracy to measure)."""
    if len(dataset) == 0:
        raise ValueError(f"the evaluation set {dataset.name!r} is empty: no accuracy to measure")


def put_eval_set(dataset: Dataset, batch_size: int, mesh: Mesh) -> DeviceEvalSet:
    """``dataset`` padded to a multiple of ``batch_size`` and replicated over ``mesh``."""
    check_not_empty(dataset)
    n = len(dataset)
    num_batches = -(-n // batch_size)
    pad = num_batches * batch_size - n
    images = np.concatenate([dataset.images, np.zeros((pad, *dataset.image_shape), np.uint8)])
    labels = np.concatenate([dataset.labels, np.full((pad,), -1, np.int32)])
    images, labels = put_replicated((images, labels), mesh)
    return DeviceEvalSet(images, labels, batch_size, num_batches)


@functools.lru_cache(maxsize=16)
def eval_step_for(
    model: nn.Module,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    batch_size: int,
    compute_dtype: str | None,
    mesh: Mesh,
) -> Callable[..., Any]:
    """The indexed eval step (:func:`~jnet2net.train.steps.make_indexed_eval_step`), shared by
    calls with equal settings."""
    return make_indexed_eval_step(
        model, mean=mean, std=std, batch_size=batch_size, compute_dtype=compute_dtype, mesh=mesh
    )


class StreamEvalSet(NamedTuple):
    """An evaluation set that ``fit`` streams: ``data`` read in global batches of
    ``batch_size`` (a multiple of the devices)."""

    data: StreamSet
    batch_size: int


@functools.lru_cache(maxsize=16)
def batch_eval_step(
    model: nn.Module,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    compute_dtype: str | None,
    mesh: Mesh,
) -> Callable[..., Any]:
    """Jitted ``(variables, images (b, ...) uint8, labels (b,), totals) -> totals``: adds
    one streamed batch's sums to ``totals`` (donated); labels ``-1`` are padding."""
    inner = eval_step_fn(model, mean=mean, std=std, compute_dtype=compute_dtype)

    def step(variables: Any, images: jax.Array, labels: jax.Array, totals: Any) -> Any:
        sums = inner(variables, images, jnp.maximum(labels, 0), labels >= 0)
        return jax.tree.map(jnp.add, totals, sums)

    rep, batch = replicated(mesh), batch_sharding(mesh)
    return jax.jit(step, donate_argnums=3, in_shardings=(rep, batch, batch, rep), out_shardings=rep)


def zero_totals(mesh: Mesh) -> dict[str, jax.Array]:
    """``{'loss', 'correct', 'count'}`` sums at zero, replicated over ``mesh``."""
    zero = np.zeros((), np.float32)
    return put_replicated({"loss": zero, "correct": zero, "count": zero}, mesh)


def mean_loss_accuracy(totals: dict[str, jax.Array]) -> tuple[float, float]:
    """``(loss, accuracy)`` from the sums (fetched from device once)."""
    totals = jax.device_get(totals)
    count = max(float(totals["count"]), 1.0)
    return float(totals["loss"]) / count, float(totals["correct"]) / count


def run_eval(
    eval_step: Callable[..., Any], variables: Any, data: DeviceEvalSet, mesh: Mesh
) -> tuple[float, float]:
    """``(loss, accuracy)`` of an indexed eval step over every batch of ``data``."""
    totals, sync = zero_totals(mesh), dispatch.Every()
    for index in range(data.num_batches):
        totals = eval_step(variables, data.images, data.labels, np.int32(index), totals)
        sync.push(totals)
    return mean_loss_accuracy(totals)


def run_stream_eval(
    eval_step: Callable[..., Any], variables: Any, test: StreamSet, batch_size: int, mesh: Mesh
) -> tuple[float, float]:
    """``(loss, accuracy)`` of :func:`batch_eval_step` over every record of ``test``,
    streamed once in order."""
    totals, sync = zero_totals(mesh), dispatch.Every()
    with eval_batches(test, mesh, batch_size=batch_size) as batches:
        for images, labels in batches:
            totals = eval_step(variables, images, labels, totals)
            sync.push(totals)
    return mean_loss_accuracy(totals)


def eval_metrics(
    eval_step: Any,
    variables: Any,
    eval_set: DeviceEvalSet | StreamEvalSet | None,
    mesh: Mesh,
) -> dict[str, float | None]:
    """``{'test_loss', 'test_acc'}`` of ``variables`` on ``eval_set`` (``None`` without one)."""
    if eval_set is None:
        return {"test_loss": None, "test_acc": None}
    if isinstance(eval_set, StreamEvalSet):
        loss, accuracy = run_stream_eval(
            eval_step, variables, eval_set.data, eval_set.batch_size, mesh
        )
    else:
        loss, accuracy = run_eval(eval_step, variables, eval_set, mesh)
    return {"test_loss": loss, "test_acc": accuracy}


def ema_eval_metrics(
    eval_step: Any,
    variables: Any,
    ema_variables: Any,
    eval_set: DeviceEvalSet | StreamEvalSet | None,
    mesh: Mesh,
) -> dict[str, float | None]:
    """:func:`eval_metrics` of ``variables``, or with a moving average ``ema_variables``
    (not ``None``): ``test_loss``/``test_acc`` of the average and ``test_loss_live``/
    ``test_acc_live`` of ``variables``."""
    live = eval_metrics(eval_step, variables, eval_set, mesh)
    if ema_variables is None:
        return live
    kept = eval_metrics(eval_step, ema_variables, eval_set, mesh)
    return {**kept, "test_loss_live": live["test_loss"], "test_acc_live": live["test_acc"]}


def put_test_set(
    test: Dataset | StreamSet, config: TrainConfig, mesh: Mesh
) -> DeviceEvalSet | StreamEvalSet:
    """``fit``'s evaluation set: on device, or streamed at each evaluation
    (:func:`~jnet2net.train.inputs.streams_eval`; a small ``StreamSet`` is read whole)."""
    batch = eval_batch_size(config.eval_batch_size, len(test), mesh)
    if streams_eval(config, test, mesh):
        return StreamEvalSet(as_stream(test), batch)
    if isinstance(test, StreamSet):
        test = test.to_dataset()
    return put_eval_set(test, batch, mesh)


def eval_set_of(
    dataset: Dataset | StreamSet, batch_size: int, mesh: Mesh
) -> DeviceEvalSet | StreamEvalSet:
    """``dataset`` on device (a :class:`Dataset`) or to stream (a ``StreamSet``)."""
    if isinstance(dataset, StreamSet):
        check_not_empty(dataset)
        return StreamEvalSet(dataset, batch_size)
    return put_eval_set(dataset, batch_size, mesh)


def test_step_for(
    model: nn.Module,
    eval_set: DeviceEvalSet | StreamEvalSet,
    mean: Any,
    std: Any,
    compute_dtype: str | None,
    mesh: Mesh,
) -> Callable[..., Any]:
    """The eval step that :func:`eval_metrics` runs over ``eval_set``."""
    if isinstance(eval_set, StreamEvalSet):
        return cached_call(batch_eval_step, model, mean, std, compute_dtype, mesh)
    return cached_call(eval_step_for, model, mean, std, eval_set.batch_size, compute_dtype, mesh)


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
    eval_set = eval_set_of(dataset, batch, mesh)
    step = test_step_for(model, eval_set, dataset.mean, dataset.std, compute_dtype, mesh)
    metrics = eval_metrics(step, put_replicated(variables, mesh), eval_set, mesh)
    return metrics["test_loss"], metrics["test_acc"]
