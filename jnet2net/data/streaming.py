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
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from jnet2net.data.dataset import Dataset

#: Host augmentations a stream applies before batching.
HOST_AUGMENTATIONS = ("none", "crop_flip", "crop", "flip", "resized_crop_flip")

#: Per-channel mean and std (0..255 units) of ImageNet's training split; used for
#: ImageNet-style tfds datasets without known statistics of their own.
IMAGENET_NORMALIZATION = ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))

#: Seeds host augmentation apart from every other use of the seed.
HOST_AUGMENT_STREAM = 12

#: Images whose pixels estimate a tfds dataset's mean/std when none is known.
STATS_SAMPLE = 256

#: Records per batched read when a whole set is read into memory.
READ_CHUNK = 256


# --- sources ------------------------------------------------------------------------------


class ArraySource:
    """A random-access source over in-memory ``images (n, h, w, c)`` and ``labels (n,)``.

    ``source[i]`` is ``{'image': (h, w, c) uint8, 'label': int}``, as a tfds data source
    gives it. The arrays are not copied; nothing writes to them.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self._images = images
        self._labels = labels

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self._images[index], "label": self._labels[index]}

    def __repr__(self) -> str:
        return f"ArraySource({self._images.dtype}{list(self._images.shape)})"


@dataclasses.dataclass(frozen=True, eq=False)
class StreamSet:
    """A dataset read record by record from a random-access source.

    Attributes:
      source: ``len(source)`` and ``source[i] -> {'image': (h_i, w_i, c) uint8, 'label':
        int}`` (a ``tfds.data_source`` split, or an :class:`ArraySource`).
      num_classes: number of classes.
      name: dataset name.
      mean: per-channel mean of the training split's pixels (0..255 units), ``c`` floats.
      std: per-channel standard deviation of the training split's pixels, ``c`` floats.
      image_shape: ``(h, w, c)`` of the images the stream yields. Records of another shape
        are resized (shorter side to ``h / crop_fraction``) and centre-cropped, or, with
        ``'resized_crop_flip'`` augmentation, random-resized-cropped to it.
      crop_fraction: the centre crop's share of the resized shorter side (0.875: resize to
        ``h / 0.875``, crop ``h``); used where a record's shape differs from ``image_shape``.
      class_names: optional readable class names.
    """

    source: Any
    num_classes: int
    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_shape: tuple[int, int, int]
    crop_fraction: float = 0.875
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not hasattr(self.source, "__len__") or not hasattr(self.source, "__getitem__"):
            raise TypeError(
                f"StreamSet {self.name!r}: source must support len() and [index], got "
                f"{type(self.source).__name__}"
            )
        shape = tuple(int(s) for s in self.image_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(
                f"StreamSet {self.name!r}: image_shape must be (h, w, c) positive, got "
                f"{self.image_shape}"
            )
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int):
            raise TypeError(f"StreamSet {self.name!r}: num_classes must be an int")
        if self.num_classes < 1:
            raise ValueError(f"StreamSet {self.name!r}: num_classes must be >= 1")
        mean = tuple(float(m) for m in self.mean)
        std = tuple(float(s) for s in self.std)
        if len(mean) != shape[2] or len(std) != shape[2] or min(std) <= 0:
            raise ValueError(
                f"StreamSet {self.name!r}: mean {mean} and std {std} need {shape[2]} entries "
                f"(image_shape {shape}), std positive"
            )
        if not 0.0 < float(self.crop_fraction) <= 1.0:
            raise ValueError(
                f"StreamSet {self.name!r}: crop_fraction must lie in (0, 1], got "
                f"{self.crop_fraction}"
            )
        object.__setattr__(self, "image_shape", shape)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "crop_fraction", float(self.crop_fraction))
        object.__setattr__(self, "class_names", tuple(self.class_names))

    def __len__(self) -> int:
        return len(self.source)

    @property
    def nbytes(self) -> int:
        """Bytes of the whole set as uint8 ``(n, *image_shape)`` (its size in memory)."""
        return len(self) * int(np.prod(self.image_shape))

    def replace(self, **changes: Any) -> StreamSet:
        """A copy with ``changes`` (validated)."""
        return dataclasses.replace(self, **changes)

    def example(self, index: int) -> tuple[np.ndarray, np.int32]:
        """Record ``index`` as ``(image image_shape uint8, label)``, resized and
        centre-cropped when its shape differs (no augmentation)."""
        image, label = read_record(self.source, int(index))
        return fit_image(image, self.image_shape, self.crop_fraction), label

    def to_dataset(self, count: int | None = None) -> Dataset:
        """The first ``count`` records (default: all) in memory as a :class:`Dataset` of
        ``image_shape`` images (centre-cropped as :meth:`example`), e.g. an evaluation set."""
        count = len(self) if count is None else min(int(count), len(self))
        if count < 1:
            raise ValueError(f"StreamSet {self.name!r}: to_dataset needs >= 1 record")
        pairs = [
            pair
            for first in range(0, count, READ_CHUNK)
            for pair in read_records(self.source, range(first, min(first + READ_CHUNK, count)))
        ]
        images = np.stack([fit_image(p[0], self.image_shape, self.crop_fraction) for p in pairs])
        labels = np.asarray([p[1] for p in pairs], np.int32)
        return Dataset(
            images, labels, self.num_classes, self.name, self.mean, self.std, self.class_names
        )

    def __repr__(self) -> str:
        return (
            f"StreamSet(name={self.name!r}, records={len(self)}, image_shape={self.image_shape}, "
            f"num_classes={self.num_classes})"
        )


def stream_from_dataset(dataset: Dataset) -> StreamSet:
    """``dataset`` as a :class:`StreamSet` read from host memory (same order, same stats)."""
    if not isinstance(dataset, Dataset):
        raise TypeError(f"dataset must be a jnet2net.data.Dataset, got {type(dataset).__name__}")
    return StreamSet(
        ArraySource(dataset.images, dataset.labels),
        dataset.num_classes,
        dataset.name,
        dataset.mean,
        dataset.std,
        dataset.image_shape,
        class_names=dataset.class_names,
    )


def stream(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    image_size: int | None = None,
    crop_fraction: float = 0.875,
) -> StreamSet:
    """A tensorflow-datasets image dataset as a :class:`StreamSet` (nothing is loaded).

    Args:
      name: any tfds image classification dataset with ``'image'`` and ``'label'``
        features (``'cifar10'``, ``'imagenette'``, ``'imagenet2012'``, ...).
      split: a tfds split, e.g. ``'train'``, ``'validation'``, ``'train[:10%]'``.
      data_dir: a tfds data directory holding ``<name>/<version>/`` prepared in array_record
        format. ``None``: ``$JNET2NET_DATA_DIR`` if set, else tfds' default.
      download: let tensorflow-datasets download and prepare a missing dataset.
      image_size: the stream's image height and width; required when the records differ
        in size. ``None``: the records' own (fixed) shape.
      crop_fraction: see :class:`StreamSet`.

    Returns:
      The :class:`StreamSet`; its ``mean``/``std`` are known constants for the datasets
      of ``jnet2net.data.NORMALIZATION``, ImageNet's for ImageNet-style names, else
      estimated from up to 256 records spread over the ``'train'`` split (this split if
      there is none).

    Raises:
      DatasetNotFoundError: the dataset is not prepared and ``download`` is False.
      ValueError: the records lack ``'image'``/``'label'``, or vary in size without
        ``image_size``.
    """
    from jnet2net.data.sources import (
        DATA_DIR_VARIABLE,
        NORMALIZATION,
        _check_name,
        tfds_data_source,
    )

    name = _check_name(name)
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1
    ):
        raise ValueError(f"image_size must be an int >= 1 or None, got {image_size!r}")
    if data_dir is None:
        data_dir = os.environ.get(DATA_DIR_VARIABLE) or None
    source = tfds_data_source(name, split, data_dir=data_dir, download=download)
    features = source.dataset_info.features
    if "image" not in features or "label" not in features:
        raise ValueError(
            f"tfds dataset {name!r} needs 'image' and 'label' features, it has "
            f"{sorted(features.keys())}"
        )
    stored = tuple(features["image"].shape)
    channels = stored[-1] if stored and stored[-1] is not None else 3
    if image_size is None:
        if len(stored) != 3 or None in stored:
            raise ValueError(
                f"tfds dataset {name!r} has images of varying size {stored}: pass image_size= "
                "(e.g. 160 or 224) to resize and crop them"
            )
        shape = stored
    else:
        shape = (image_size, image_size, channels)
    label = features["label"]
    key = name.lower()
    if key in NORMALIZATION:
        mean, std = NORMALIZATION[key]
    elif "imagenet" in key or "imagenette" in key:
        mean, std = IMAGENET_NORMALIZATION
    else:  # the training split's pixels, where there is one
        try:
            train = tfds_data_source(name, "train", data_dir=data_dir, download=False)
        except Exception:
            train = source
        mean, std = sampled_stats(train, channels)
    return StreamSet(
        source,
        int(label.num_classes),
        key,
        mean,
        std,
        shape,
        crop_fraction,
        tuple(getattr(label, "names", ()) or ()),
    )


#: Splits a dataset's evaluation set is read from, in order of preference.
EVAL_SPLITS = ("test", "validation")


def stream_protocol(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    image_size: int | None = None,
    crop_fraction: float = 0.875,
) -> tuple[StreamSet, StreamSet]:
    """``(train, test)`` :class:`StreamSet` s of a tfds image dataset, nothing loaded.

    ``test`` is the first of :data:`EVAL_SPLITS` the dataset has (``'validation'`` for
    ImageNet) and carries ``train``'s ``mean``/``std``, as
    :func:`~jnet2net.data.load_protocol`'s does. Arguments as for :func:`stream`.
    """
    split_stream = functools.partial(
        stream,
        name,
        data_dir=data_dir,
        download=download,
        image_size=image_size,
        crop_fraction=crop_fraction,
    )
    train = split_stream("train")
    info = getattr(train.source, "dataset_info", None)
    splits = tuple(getattr(info, "splits", {}) or EVAL_SPLITS)
    split = next((s for s in EVAL_SPLITS if s in splits), None)
    if split is None:
        raise ValueError(
            f"tfds dataset {name!r} has no evaluation split: none of {EVAL_SPLITS} in "
            f"{sorted(splits)}"
        )
    return train, split_stream(split).replace(mean=train.mean, std=train.std)


def sampled_stats(
    source: Any, channels: int, count: int = STATS_SAMPLE
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel ``(mean, std)`` over the pixels of up to ``count`` records spread evenly
    over ``source`` (images may differ in size)."""
    n = len(source)
    if n == 0:
        raise ValueError("cannot estimate pixel statistics of an empty source")
    total = np.zeros(channels)
    total_sq = np.zeros(channels)
    pixels = 0
    for index in np.unique(np.linspace(0, n - 1, min(count, n)).astype(int)):
        image, _ = read_record(source, int(index))
        x = image.reshape(-1, image.shape[-1]).astype(np.float64)
        total += x.sum(0)
        total_sq += (x * x).sum(0)
        pixels += x.shape[0]
    mean = total / pixels
    std = np.sqrt(np.maximum(total_sq / pixels - mean * mean, 0.0))
    std = np.where(std > 0, std, 1.0)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def read_record(source: Any, index: int) -> tuple[np.ndarray, np.int32]:
    """``(image (h, w, c) uint8, label int32)`` of record ``index`` of ``source``."""
    return record_pair(source[index], index, source)


def read_records(source: Any, keys: Any) -> list[tuple[np.ndarray, np.int32]]:
    """:func:`read_record` of each of ``keys``, in one batched read where the source has
    one (``__getitems__``: a tfds array_record source reads about three times faster)."""
    keys = [int(k) for k in keys]
    records = None
    if hasattr(source, "__getitems__"):
        try:
            records = list(source.__getitems__(keys))
        except TypeError:  # sources without a working batched read
            records = None
    if records is None:
        records = [source[k] for k in keys]
    return [record_pair(r, k, source) for r, k in zip(records, keys, strict=True)]


def record_pair(record: Any, index: int, source: Any) -> tuple[np.ndarray, np.int32]:
    """``(image (h, w, c) uint8, label int32)`` of a record dict read from ``source``."""
    try:
        image, label = record["image"], record["label"]
    except (KeyError, TypeError, IndexError):
        raise ValueError(
            f"record {index} of {source!r} is not a dict with 'image' and 'label'"
        ) from None
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.dtype != np.uint8 or image.ndim != 3:
        raise TypeError(
            f"record {index}: the image must be uint8 (h, w, c), got {image.dtype} {image.shape}"
        )
    return image, np.int32(label)


# --- host transforms (numpy, one image at a time) -----------------------------------------


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``image (h, w, c)`` uint8 resized to ``(height, width, c)`` (Pillow, bilinear with
    antialiasing)."""
    from PIL import Image

    if image.shape[:2] == (height, width):
        return image
    channels = image.shape[-1]
    pil = Image.fromarray(image[..., 0] if channels == 1 else image)
    out = np.asarray(pil.resize((width, height), Image.BILINEAR))
    return out[..., None] if out.ndim == 2 else out


def center_crop(image: np.ndarray, shape: tuple[int, int, int], crop_fraction: float) -> np.ndarray:
    """Resizes ``image (h, w, c)`` so its shorter side is ``shape[0] / crop_fraction`` and
    crops the centre ``shape[:2]``: the standard evaluation view. Returns ``shape`` uint8."""
    height, width = shape[:2]
    h, w = image.shape[:2]
    scale = max(height, width) / crop_fraction / min(h, w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    image = resize(image, new_h, new_w)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return image[top : top + height, left : left + width]


def fit_image(image: np.ndarray, shape: tuple[int, int, int], crop_fraction: float) -> np.ndarray:
    """``image`` itself when it has ``shape``, else its :func:`center_crop`."""
    if image.shape == tuple(shape):
        return image
    if image.shape[-1] != shape[-1]:
        raise ValueError(f"an image of shape {image.shape} has not the {shape[-1]} channels wanted")
    return center_crop(image, shape, crop_fraction)


def random_resized_crop(
    image: np.ndarray,
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    *,
    min_area: float = 0.08,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> np.ndarray:
    """Inception-style crop: a random box of ``[min_area, 1]`` of the image's area and
    aspect ratio in ``ratio`` (log-uniform), resized to ``shape``. After ``attempts``
    boxes that do not fit, the centre square. Returns ``shape`` uint8."""
    h, w = image.shape[:2]
    area = h * w
    for _ in range(attempts):
        target = area * rng.uniform(min_area, 1.0)
        aspect = float(np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]))))
        cw = round(np.sqrt(target * aspect))
        ch = round(np.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(rng.integers(0, h - ch + 1))
            left = int(rng.integers(0, w - cw + 1))
            return resize(image[top : top + ch, left : left + cw], shape[0], shape[1])
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return resize(image[top : top + side, left : left + side], shape[0], shape[1])


def random_crop_flip(
    image: np.ndarray, rng: np.random.Generator, *, padding: int, flip: bool = True
) -> np.ndarray:
    """CIFAR-style host augmentation of ``image (h, w, c)``: zero-pad by ``padding``, crop
    ``(h, w)`` at a uniform offset, mirror left-right with probability 1/2 (``flip``)."""
    h, w = image.shape[:2]
    if padding:
        padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
        top, left = rng.integers(0, 2 * padding + 1, size=2)
        image = padded[top : top + h, left : left + w]
    if flip and rng.integers(0, 2):
        image = image[:, ::-1]
    return image


def host_augmented(
    image: np.ndarray,
    rng: np.random.Generator | None,
    shape: tuple[int, int, int],
    *,
    augment: str,
    crop_padding: int,
    crop_fraction: float,
    min_crop_area: float,
) -> np.ndarray:
    """One record's image as the stream yields it: ``shape`` uint8, augmented as
    ``augment`` (one of :data:`HOST_AUGMENTATIONS`) says."""
    if augment == "resized_crop_flip":
        image = random_resized_crop(image, rng, shape, min_area=min_crop_area)
        return image[:, ::-1] if rng.integers(0, 2) else image
    image = fit_image(image, shape, crop_fraction)
    if augment == "none":
        return image
    padding = crop_padding if augment in ("crop_flip", "crop") else 0
    return random_crop_flip(image, rng, padding=padding, flip=augment != "crop")


def example_rng(seed: int, step: int, row: int) -> np.random.Generator:
    """The host augmentation generator of row ``row`` of global step ``step``'s batch."""
    return np.random.default_rng([int(seed), HOST_AUGMENT_STREAM, int(step), int(row)])


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


def check_host_augment(augment: str) -> None:
    """Raises ValueError unless ``augment`` is one of :data:`HOST_AUGMENTATIONS`."""
    if augment not in HOST_AUGMENTATIONS:
        raise ValueError(f"host augment must be one of {HOST_AUGMENTATIONS}, got {augment!r}")


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


def process_rows(mesh: Any, batch_size: int) -> tuple[int, int]:
    """``(lo, hi)``: the rows of a global batch sharded on ``mesh``'s ``'data'`` axis that
    this process's devices hold; ValueError unless they are one contiguous block."""
    from jnet2net.train.sharding import batch_sharding

    spans = batch_sharding(mesh).addressable_devices_indices_map((batch_size,)).values()
    starts_stops = sorted(
        {(s[0].start or 0, batch_size if s[0].stop is None else s[0].stop) for s in spans}
    )
    lo, hi = starts_stops[0][0], starts_stops[-1][1]
    covered = sum(b - a for a, b in starts_stops)
    if covered != hi - lo:
        raise ValueError(
            f"this process's devices hold rows {starts_stops} of the {batch_size}-row batch, "
            "not one contiguous block; order the mesh's devices by process"
        )
    return lo, hi


class DeviceBatches:
    """An iterator of global ``(images, labels)`` device arrays sharded on ``'data'``.

    Each process contributes its rows (``jax.make_array_from_process_local_data``); the next
    ``device_prefetch`` batches are transferred while the current step runs. Call
    :meth:`close` (or use it as a context manager) to stop the reading threads.
    """

    def __init__(self, host: Any, mesh: Any, device_prefetch: int = 2) -> None:
        from jnet2net.train.sharding import batch_sharding

        self._iter = iter(host)
        self._sharding = batch_sharding(mesh)
        self._queue: collections.deque[tuple[Any, Any]] = collections.deque()
        self._depth = max(1, int(device_prefetch))

    def _put(self, batch: tuple[np.ndarray, np.ndarray]) -> tuple[Any, Any]:
        import jax

        images, labels = batch
        return (
            jax.make_array_from_process_local_data(self._sharding, images),
            jax.make_array_from_process_local_data(self._sharding, labels),
        )

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        return self

    def __next__(self) -> tuple[Any, Any]:
        while len(self._queue) < self._depth:
            try:
                self._queue.append(self._put(next(self._iter)))
            except StopIteration:
                break
        if not self._queue:
            raise StopIteration
        return self._queue.popleft()

    def close(self) -> None:
        """Drops the queued batches and stops grain's reading threads."""
        self._queue.clear()
        close = getattr(self._iter, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> DeviceBatches:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


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
