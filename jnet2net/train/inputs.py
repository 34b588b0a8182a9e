"""Where ``fit``'s training batches come from: the whole set on device, or a stream.

``TrainConfig.input='memory'`` puts the training set on every device and the step gathers
its batch there (:func:`~jnet2net.train.steps.make_indexed_train_step`); ``'stream'`` reads
each batch on the host with grain (:mod:`jnet2net.data.streaming`) and the step takes it as
an argument (:func:`~jnet2net.train.steps.make_train_step`); ``'auto'`` picks memory for a
:class:`~jnet2net.data.Dataset` that fits comfortably on a device. Both give the same batch
for the same ``(seed, step)`` and augment it on device with the same key, so a run trains
the same either way (up to the float rounding of two differently compiled programs).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jnet2net.data.dataset import Dataset
from jnet2net.data.streaming import (
    DeviceBatches,
    StreamSet,
    stream_batches,
    stream_from_dataset,
)
from jnet2net.train.config import TrainConfig
from jnet2net.train.sharding import batch_sharding
from jnet2net.train.steps import make_train_step

#: ``'auto'`` keeps a training set in device memory up to this many bytes when the device
#: does not report its memory, else up to a quarter of it.
MEMORY_INPUT_BYTES = 2**30


def memory_budget(mesh: Mesh) -> int:
    """Bytes of training images ``'auto'`` keeps on each device of ``mesh``."""
    device = mesh.devices.flat[0]
    try:
        stats = device.memory_stats()
    except Exception:  # backends without memory statistics
        stats = None
    limit = (stats or {}).get("bytes_limit")
    return int(limit) // 4 if limit else MEMORY_INPUT_BYTES


def streams_input(config: TrainConfig, train: Dataset | StreamSet, mesh: Mesh) -> bool:
    """Whether ``fit`` streams ``train`` (``True``) or holds it on device (``False``).

    ``'auto'`` streams a :class:`StreamSet`, a set larger than :func:`memory_budget`, and
    any set under ``'resized_crop_flip'`` augmentation (which only the host does).

    Raises:
      ValueError: ``input='memory'`` with a :class:`StreamSet` or with host augmentation.
    """
    host_only = config.augment == "resized_crop_flip"
    if config.input == "memory":
        if isinstance(train, StreamSet):
            raise ValueError(
                f"TrainConfig.input='memory' needs the training set in memory, got a stream "
                f"{train!r}: load it with jnet2net.data.load (or use input='stream')"
            )
        if host_only:
            raise ValueError(
                "augment='resized_crop_flip' runs on the host: it needs input='stream' or "
                "'auto', not 'memory'"
            )
        return False
    if config.input == "stream" or isinstance(train, StreamSet) or host_only:
        return True
    return train.images.nbytes > memory_budget(mesh)


def as_stream(train: Dataset | StreamSet) -> StreamSet:
    """``train`` as a :class:`StreamSet` (a :class:`Dataset` is read from host memory)."""
    return train if isinstance(train, StreamSet) else stream_from_dataset(train)


def host_augment(config: TrainConfig) -> str:
    """The augmentation the stream does on the host: ``'resized_crop_flip'`` there, all
    others on device in the step (as the in-memory path does), so ``'none'`` here."""
    return "resized_crop_flip" if config.augment == "resized_crop_flip" else "none"


def train_batches(
    config: TrainConfig, train: StreamSet, mesh: Mesh, *, start: int, stop: int
) -> DeviceBatches:
    """The batches of steps ``start..stop-1`` that ``fit`` trains on, as device arrays."""
    return stream_batches(
        train,
        mesh,
        seed=config.seed,
        batch_size=config.batch_size,
        start=start,
        stop=stop,
        augment=host_augment(config),
        crop_padding=config.crop_padding,
        min_crop_area=config.min_crop_area,
    )


def batch_spec(
    image_shape: tuple[int, ...], batch_size: int, mesh: Mesh
) -> tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]:
    """Abstract ``(images, labels)`` of a streamed batch, for compiling the step ahead."""
    sharding = batch_sharding(mesh)
    return (
        jax.ShapeDtypeStruct((batch_size, *image_shape), jnp.uint8, sharding=sharding),
        jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=sharding),
    )


@functools.lru_cache(maxsize=16)
def batch_train_step(
    model: nn.Module,
    config: TrainConfig,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    mesh: Mesh,
) -> Callable[..., Any]:
    """:func:`make_train_step` ``(state, images, labels)``, shared by calls with equal
    settings (``config`` restricted to the step's fields)."""
    return make_train_step(model, config, mean=mean, std=std, mesh=mesh)


# --- evaluation ---------------------------------------------------------------------------


def streams_eval(config: TrainConfig, test: Dataset | StreamSet, mesh: Mesh) -> bool:
    """Whether ``fit`` streams its evaluation set (``True``) or holds it on device.

    A :class:`StreamSet` streams under ``input='stream'``; under ``'auto'`` any set larger
    than :func:`memory_budget` streams; under ``'memory'`` none does (a ``StreamSet`` is
    read into memory once).
    """
    if config.input == "memory":
        return False
    if config.input == "stream" and isinstance(test, StreamSet):
        return True
    size = test.nbytes if isinstance(test, StreamSet) else test.images.nbytes
    return size > memory_budget(mesh)
