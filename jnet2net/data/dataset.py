"""An in-memory image classification dataset and its normalisation."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Images and labels held in host memory, ready to be put on device whole.

    Attributes:
      images: ``(n, h, w, c)`` uint8 pixels 0..255, NHWC.
      labels: ``(n,)`` int32 class indices in ``[0, num_classes)``.
      num_classes: number of classes.
      name: dataset name (``'digits'``, ``'cifar10'``, ...).
      mean: per-channel mean of the training split's pixels (0..255 units), ``c`` floats.
      std: per-channel standard deviation of the training split's pixels, ``c`` floats.
      class_names: optional readable class names.
    """

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    name: str
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        images, labels = np.asarray(self.images), np.asarray(self.labels)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise TypeError(
                f"Dataset {self.name!r}: images must be uint8 (n, h, w, c), got "
                f"{images.dtype} {images.shape}"
            )
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(
                f"Dataset {self.name!r}: labels must be ints of shape (n,), got "
                f"{labels.dtype} {labels.shape}"
            )
        if len(labels) != len(images):
            raise ValueError(
                f"Dataset {self.name!r}: {len(images)} images but {len(labels)} labels"
            )
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int):
            raise TypeError(f"Dataset {self.name!r}: num_classes must be an int")
        if self.num_classes < 1:
            raise ValueError(
                f"Dataset {self.name!r}: num_classes must be >= 1, got {self.num_classes}"
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(
                f"Dataset {self.name!r}: labels must lie in [0, {self.num_classes}), got "
                f"[{labels.min()}, {labels.max()}]"
            )
        channels = images.shape[-1]
        mean = tuple(float(m) for m in self.mean)
        std = tuple(float(s) for s in self.std)
        if not mean or not std:
            mean, std = channel_stats(images)
        if len(mean) != channels or len(std) != channels:
            raise ValueError(
                f"Dataset {self.name!r}: mean {mean} and std {std} need {channels} entries "
                f"(images {images.shape})"
            )
        if not np.all(np.isfinite(mean + std)):
            raise ValueError(f"Dataset {self.name!r}: mean {mean} and std {std} must be finite")
        if min(std) <= 0:
            raise ValueError(f"Dataset {self.name!r}: std must be positive, got {std}")
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "labels", labels.astype(np.int32, copy=False))
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "class_names", tuple(self.class_names))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(h, w, c)`` of one image."""
        return tuple(self.images.shape[1:])

    def take(self, indices: Any) -> Dataset:
        """The examples at ``indices`` (an int array, a slice or a count ``n`` of the first)."""
        if isinstance(indices, (int, np.integer)) and not isinstance(indices, bool):
            if indices < 0:
                raise ValueError(
                    f"Dataset {self.name!r}: take(n) needs a count n >= 0, got {indices}"
                )
            indices = slice(0, int(indices))
        return dataclasses.replace(self, images=self.images[indices], labels=self.labels[indices])

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, images={self.images.dtype}{list(self.images.shape)}, "
            f"num_classes={self.num_classes})"
        )


def from_arrays(
    images: Any,
    labels: Any,
    *,
    num_classes: int | None = None,
    name: str = "arrays",
    mean: tuple[float, ...] = (),
    std: tuple[float, ...] = (),
) -> Dataset:
    """A :class:`Dataset` from uint8 ``images (n, h, w, c)`` and int ``labels (n,)``.

    ``num_classes`` defaults to ``max(labels) + 1``; ``mean``/``std`` to the statistics of
    ``images`` (pass the training split's statistics for a test split).
    """
    labels = np.asarray(labels)
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if labels.size else 1
    return Dataset(np.asarray(images), labels, int(num_classes), name, mean, std)


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel ``(mean, std)`` of uint8 ``images (n, h, w, c)`` in 0..255 units."""
    images = np.asarray(images)
    if images.ndim != 4 or images.size == 0:
        raise ValueError(f"channel_stats needs a non-empty (n, h, w, c) array, got {images.shape}")
    c = images.shape[-1]
    count = images.size // c
    total = np.zeros(c, np.float64)
    total_sq = np.zeros(c, np.float64)
    for chunk in np.array_split(images.reshape(-1, c), max(1, count // 2**20)):
        x = chunk.astype(np.float64)
        total += x.sum(0)
        total_sq += (x * x).sum(0)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
    std = np.where(std > 0, std, 1.0)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def normalize(
    images: jax.Array,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    dtype: Any = jnp.float32,
) -> jax.Array:
    """``(images - mean) / std`` per channel, computed in float32, returned as ``dtype``.

    Args:
      images: ``(..., c)`` pixels (uint8 0..255 or float).
      mean: ``c`` channel means, same units as ``images``.
      std: ``c`` channel standard deviations.
      dtype: dtype of the result (e.g. ``bfloat16`` for the model's compute).

    Returns:
      ``images``' shape, ``dtype``.

    Raises:
      ValueError: ``mean`` or ``std`` do not have one entry per channel.
    """
    channels = images.shape[-1]
    if len(mean) != channels or len(std) != channels:
        raise ValueError(
            f"normalize: images {tuple(images.shape)} have {channels} channels but mean "
            f"{tuple(mean)} and std {tuple(std)} have {len(mean)} and {len(std)} entries"
        )
    mean_arr = jnp.asarray(mean, jnp.float32)
    scale = 1.0 / jnp.asarray(std, jnp.float32)
    return ((images.astype(jnp.float32) - mean_arr) * scale).astype(dtype)
