"""Streaming input: batches read from a random-access source with grain, one shard per process.

For data that does not fit in device memory (ImageNet-style). A :class:`StreamSet` wraps a
random-access source: ``tfds.data_source(name, split=..., data_dir=...)`` over array_record
files (:func:`stream`), or an in-memory :class:`~jnet2net.data.Dataset`
(:func:`stream_from_dataset`, for tests and comparisons). :func:`stream_batches` reads the
batches of global steps ``start..stop-1`` with a grain pipeline (threads decode and augment
on the host) and yields global device arrays sharded on ``'data'``.

Data order is the in-memory path's: step ``s`` takes batch ``s % steps_per_epoch`` of
``epoch_permutation(seed, s // steps_per_epoch, n)``, so a batch is a pure function of
``(seed, step)`` (resuming needs no replay) and equals the batch ``jnet2net.train.fit``
gathers on device for the same step. Each JAX process reads only its rows of every global
batch (grain's ``ShardByJaxProcess``), the rows its devices hold in the mesh. grain's own
``IndexSampler`` shuffle is not used: it draws another order than ``epoch_permutation``.

Host augmentation (``'resized_crop_flip'``, for ImageNet-style data) draws from a numpy
generator seeded by ``(seed, step, row in the global batch)``, so it does not depend on the
number of processes or threads. CIFAR-style crop-and-flip runs on device in the train step
with the same key as the in-memory path, so the two paths train on identical batches.

Modules: :mod:`~jnet2net.data.stream_set` (the :class:`StreamSet` and its constructors),
:mod:`~jnet2net.data.host_transforms` (resizing and host augmentation of one image),
:mod:`~jnet2net.data.device_batches` (host batches onto the devices); this module holds the
data order and the reading pipeline, and re-exports the others' names.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from jnet2net.data.device_batches import DeviceBatches, process_rows
from jnet2net.data.host_transforms import (
    HOST_AUGMENT_STREAM,
    HOST_AUGMENTATIONS,
    center_crop,
    check_host_augment,
    example_rng,
    fit_image,
    host_augmented,
    random_crop_flip,
    random_resized_crop,
    resize,
)
from jnet2net.data.stream_set import (
    EVAL_SPLITS,
    IMAGENET_NORMALIZATION,
    READ_CHUNK,
    STATS_SAMPLE,
    ArraySource,
    StreamSet,
    read_record,
    read_records,
    record_pair,
    sampled_stats,
    stream,
    stream_from_dataset,
    stream_protocol,
)

__all__ = [
    "CHUNK",
    "EVAL_SPLITS",
    "HOST_AUGMENTATIONS",
    "HOST_AUGMENT_STREAM",
    "IMAGENET_NORMALIZATION",
    "READ_CHUNK",
    "STATS_SAMPLE",
    "ArraySource",
    "DeviceBatches",
    "StreamSet",
    "batch_for_step",
    "batch_records",
    "center_crop",
    "check_host_augment",
    "chunk_size",
    "epoch_order",
    "eval_batch",
    "eval_batch_count",
    "eval_batches",
    "example_rng",
    "fit_image",
    "host_augmented",
    "local_batches",
    "process_rows",
    "random_crop_flip",
    "random_resized_crop",
    "read_record",
    "read_records",
    "record_pair",
    "resize",
    "sampled_stats",
    "shard_rows",
    "stream",
    "stream_batches",
    "stream_from_dataset",
    "stream_protocol",
]

# --- data order ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def epoch_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """``epoch_permutation(seed, epoch, num_examples)`` on the host: ``(n,)`` int32.

    Computed on the CPU backend where there is one (the permutation's sorts are stable, so
    it is the same on every backend), cached for the last few epochs; read-only.
    """
    import jax

    from jnet2net.train.batches import epoch_permutation

    try:
        device = jax.local_devices(backend="cpu")[0]
    except RuntimeError:  # e.g. JAX_PLATFORMS=cuda: no CPU backend
        device = jax.local_devices()[0]
    with jax.default_device(device):
        order = np.asarray(jax.device_get(epoch_permutation(seed, epoch, num_examples)))
    order.setflags(write=False)
    return order


def shard_rows(batch_size: int, shard_options: Any = None) -> tuple[int, int]:
    """``(lo, hi)``: the rows ``lo..hi-1`` of every global batch that this process reads.

    Args:
      batch_size: the global batch.
      shard_options: a ``grain.sharding.ShardOptions``; default
        ``ShardByJaxProcess(drop_remainder=True)`` (process ``p`` of ``P`` reads rows
        ``p * b / P .. (p + 1) * b / P - 1``).
    """
    from grain import sharding

    if shard_options is None:
        shard_options = sharding.ShardByJaxProcess(drop_remainder=True)
    count, index = shard_options.shard_count, shard_options.shard_index
    if batch_size % count:
        raise ValueError(
            f"batch_size={batch_size} must be a multiple of the {count} processes reading it"
        )
    per = batch_size // count
    return index * per, (index + 1) * per


def batch_records(
    seed: int, step: int, num_examples: int, batch_size: int, rows: tuple[int, int] | None = None
) -> np.ndarray:
    """Record indices of global step ``step``'s batch: ``(hi - lo,)`` int (``rows=(lo,
    hi)``, default all ``batch_size``); the in-memory path's ``batch_indices``."""
    spe = num_examples // batch_size
    if spe < 1:
        raise ValueError(
            f"batch_size={batch_size} is larger than the {num_examples} training examples"
        )
    epoch, index = divmod(int(step), spe)
    lo, hi = (0, batch_size) if rows is None else rows
    start = index * batch_size
    return epoch_order(int(seed), epoch, num_examples)[start + lo : start + hi]


def batch_for_step(
    data: StreamSet,
    *,
    seed: int,
    step: int,
    batch_size: int,
    augment: str = "none",
    crop_padding: int = 4,
    min_crop_area: float = 0.08,
    rows: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Step ``step``'s batch (rows ``lo..hi-1`` of it), read and host-augmented in this thread.

    A pure function of its arguments: what :func:`stream_batches` yields for the step.

    Returns:
      ``(images (b, *image_shape) uint8, labels (b,) int32)``.
    """
    check_host_augment(augment)
    lo = 0 if rows is None else rows[0]
    keys = batch_records(seed, step, len(data), batch_size, rows)
    return _chunk(data, seed, step, lo, keys, augment, crop_padding, min_crop_area)


def _chunk(
    data: StreamSet,
    seed: int,
    step: int,
    first_row: int,
    keys: Any,
    augment: str,
    crop_padding: int,
    min_crop_area: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Records ``keys`` (rows ``first_row..`` of step ``step``'s batch) read and augmented:
    ``(images (k, *image_shape) uint8, labels (k,) int32)``."""
    images, labels = [], []
    for j, (image, label) in enumerate(read_records(data.source, keys)):
        rng = None if augment == "none" else example_rng(seed, step, first_row + j)
        image = host_augmented(
            image,
            rng,
            data.image_shape,
            augment=augment,
            crop_padding=crop_padding,
            crop_fraction=data.crop_fraction,
            min_crop_area=min_crop_area,
        )
        if image.shape != data.image_shape:
            raise ValueError(
                f"record {keys[j]} of {data.name!r} gave an image {image.shape}, not the "
                f"stream's {data.image_shape}"
            )
        images.append(image)
        labels.append(label)
    return np.stack(images), np.asarray(labels, np.int32)


#: Records that one grain element reads together (at most; a divisor of the local batch).
CHUNK = 32


def chunk_size(local_batch: int) -> int:
    """The largest divisor of ``local_batch`` up to :data:`CHUNK`: records per read."""
    return max(d for d in range(1, min(CHUNK, local_batch) + 1) if local_batch % d == 0)


def _concatenate(chunks: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])


# --- the pipeline -------------------------------------------------------------------------


def local_batches(
    data: StreamSet,
    *,
    seed: int,
    batch_size: int,
    start: int,
    stop: int,
    rows: tuple[int, int],
    augment: str = "none",
    crop_padding: int = 4,
    min_crop_area: float = 0.08,
    num_threads: int = 8,
    prefetch: int | None = None,
) -> Any:
    """A grain ``IterDataset`` of this process's batches of steps ``start..stop-1``.

    Each grain element is a chunk of up to :data:`CHUNK` records of one batch, read in one
    batched read, decoded and augmented by one of ``num_threads`` threads (``prefetch``
    records ahead; default two local batches); the chunks are joined in order.

    Returns:
      an iterable of ``(images (hi - lo, *image_shape) uint8, labels (hi - lo,) int32)``,
      equal to :func:`batch_for_step` with ``rows=(lo, hi)`` for each step.
    """
    import grain

    check_host_augment(augment)
    lo, hi = rows
    local = hi - lo
    if not 0 <= start <= stop:
        raise ValueError(f"steps must satisfy 0 <= start <= stop, got {start}..{stop}")

    size = chunk_size(local)
    per_batch = local // size

    def element(i: int) -> tuple[np.ndarray, np.ndarray]:
        step, part = divmod(i, per_batch)
        keys = batch_records(seed, step, len(data), batch_size, rows)
        keys = keys[part * size : (part + 1) * size]
        return _chunk(
            data, seed, step, lo + part * size, keys, augment, crop_padding, min_crop_area
        )

    prefetch = 2 * local if prefetch is None else prefetch
    options = grain.ReadOptions(
        num_threads=num_threads, prefetch_buffer_size=max(1, prefetch // size)
    )
    chunks = grain.MapDataset.range(start * per_batch, stop * per_batch).map(element)
    return chunks.to_iter_dataset(options).batch(
        per_batch, drop_remainder=True, batch_fn=_concatenate
    )


def stream_batches(
    data: StreamSet,
    mesh: Any,
    *,
    seed: int,
    batch_size: int,
    start: int = 0,
    stop: int,
    augment: str = "none",
    crop_padding: int = 4,
    min_crop_area: float = 0.08,
    shard_options: Any = None,
    num_threads: int = 8,
    prefetch: int | None = None,
    device_prefetch: int = 2,
) -> DeviceBatches:
    """Global batches of steps ``start..stop-1`` as device arrays sharded over ``mesh``.

    Args:
      data: the :class:`StreamSet`.
      mesh: a mesh with a ``'data'`` axis (``jnet2net.train.data_mesh()``).
      seed: the data order's seed (``TrainConfig.seed``).
      batch_size: the global batch (a multiple of the mesh's devices).
      start: the first global step (a resumed run's ``state.step``).
      stop: one past the last step.
      augment: host augmentation, one of :data:`HOST_AUGMENTATIONS` (``'none'`` when the
        train step augments on device).
      crop_padding: padding of the host ``'crop_flip'``/``'crop'`` augmentation.
      min_crop_area: smallest area share of ``'resized_crop_flip'``'s boxes.
      shard_options: which rows of each batch this process reads (default
        ``ShardByJaxProcess(drop_remainder=True)``); checked against the rows that its
        devices hold in ``mesh``.
      num_threads: grain's reading threads.
      prefetch: records read ahead on the host (default: two of this process's batches).
      device_prefetch: batches transferred to the devices ahead of the step.

    Returns:
      A :class:`DeviceBatches` iterator of ``(images (batch_size, *image_shape) uint8,
      labels (batch_size,) int32)``.
    """
    if not isinstance(data, StreamSet):
        raise TypeError(f"data must be a StreamSet, got {type(data).__name__}")
    rows = shard_rows(batch_size, shard_options)
    held = process_rows(mesh, batch_size)
    if rows != held:
        raise ValueError(
            f"this process reads rows {rows[0]}..{rows[1] - 1} of each batch, but its devices "
            f"hold rows {held[0]}..{held[1] - 1} of it in the mesh"
        )
    host = local_batches(
        data,
        seed=seed,
        batch_size=batch_size,
        start=start,
        stop=stop,
        rows=rows,
        augment=augment,
        crop_padding=crop_padding,
        min_crop_area=min_crop_area,
        num_threads=num_threads,
        prefetch=prefetch,
    )
    return DeviceBatches(host, mesh, device_prefetch)


# --- evaluation: the set in order, once ---------------------------------------------------


def eval_batch_count(num_examples: int, batch_size: int) -> int:
    """Batches of ``batch_size`` that cover ``num_examples`` (the last one padded)."""
    return -(-int(num_examples) // int(batch_size))


def eval_batch(
    data: StreamSet, index: int, batch_size: int, rows: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``lo..hi-1`` (default all) of evaluation batch ``index``: records ``index *
    batch_size + lo ..`` in order, centre-cropped; rows past the set's end are zero images
    with label ``-1`` (padding that the evaluation masks out).

    Returns:
      ``(images (hi - lo, *image_shape) uint8, labels (hi - lo,) int32)``.
    """
    lo, hi = (0, batch_size) if rows is None else rows
    first = int(index) * int(batch_size)
    keys = np.arange(first + lo, min(first + hi, len(data)))
    images = np.zeros((hi - lo, *data.image_shape), np.uint8)
    labels = np.full((hi - lo,), -1, np.int32)
    if len(keys):
        read, read_labels = _chunk(data, 0, 0, lo, keys, "none", 0, 1.0)
        images[: len(keys)], labels[: len(keys)] = read, read_labels
    return images, labels


def eval_batches(
    data: StreamSet,
    mesh: Any,
    *,
    batch_size: int,
    num_threads: int = 8,
    device_prefetch: int = 2,
) -> DeviceBatches:
    """Every record of ``data`` once, in order, as global ``(images, labels)`` device
    batches sharded over ``mesh`` (:func:`eval_batch`; each process reads the rows its
    devices hold).

    Args:
      data: the :class:`StreamSet`, e.g. ImageNet's validation split.
      mesh: a mesh with a ``'data'`` axis.
      batch_size: the global batch (a multiple of the mesh's devices).
      num_threads: grain's reading threads.
      device_prefetch: batches transferred to the devices ahead of the step.
    """
    import grain

    if not isinstance(data, StreamSet):
        raise TypeError(f"data must be a StreamSet, got {type(data).__name__}")
    rows = process_rows(mesh, batch_size)
    count = eval_batch_count(len(data), batch_size)
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2)
    host = (
        grain.MapDataset.range(count)
        .map(lambda index: eval_batch(data, index, batch_size, rows))
        .to_iter_dataset(options)
    )
    return DeviceBatches(host, mesh, device_prefetch)
