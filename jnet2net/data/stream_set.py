"""A dataset read record by record: :class:`StreamSet` over a random-access source.

A :class:`StreamSet` wraps ``tfds.data_source(name, split=..., data_dir=...)`` over
array_record files (:func:`stream`, :func:`stream_protocol`) or an in-memory
:class:`~jnet2net.data.Dataset` (:func:`stream_from_dataset`, for tests and comparisons);
nothing is loaded until a record is read (:func:`read_record`, :func:`read_records`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import numpy as np

from jnet2net.data.catalog import DATA_DIR_VARIABLE, NORMALIZATION, _check_name
from jnet2net.data.dataset import Dataset
from jnet2net.data.host_transforms import fit_image
from jnet2net.data.tfds_sources import tfds_data_source

#: Per-channel mean and std (0..255 units) of ImageNet's training split; used for
#: ImageNet-style tfds datasets without known statistics of their own.
IMAGENET_NORMALIZATION = ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))

#: Images whose pixels estimate a tfds dataset's mean/std when none is known.
STATS_SAMPLE = 256

#: Records per batched read when a whole set is read into memory.
READ_CHUNK = 256


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
