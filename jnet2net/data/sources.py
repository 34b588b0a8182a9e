"""Where datasets come from: scikit-learn's digits, tensorflow-datasets, npz packs.

``load(name, split)`` is the front door. tensorflow-datasets is imported only when a tfds
dataset is asked for, so training code runs on machines without it.

Modules: :mod:`~jnet2net.data.catalog` (the known datasets and their statistics),
:mod:`~jnet2net.data.npz` (npz packs) and :mod:`~jnet2net.data.tfds_sources`
(tensorflow-datasets); this module holds :func:`load` and re-exports the others' names.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from jnet2net.data.catalog import (
    DATA_DIR_VARIABLE,
    DATASETS,
    DIGITS_SEED,
    DIGITS_TEST_SIZE,
    NORMALIZATION,
    NUM_CLASSES,
    SPLIT_PATTERN,
    SPLITS,
    TFDS_DATASETS,
    DatasetNotFoundError,
    _check_name,
    parse_split,
)
from jnet2net.data.dataset import Dataset, channel_stats
from jnet2net.data.npz import (
    GREY_MODES,
    HIGH_BIT_MODES,
    _npz_path,
    decode_images,
    load_npz,
)
from jnet2net.data.reduce import shrink
from jnet2net.data.tfds_sources import _load_tfds, tfds_data_source

__all__ = [
    "DATASETS",
    "DATA_DIR_VARIABLE",
    "DIGITS_SEED",
    "DIGITS_TEST_SIZE",
    "GREY_MODES",
    "HIGH_BIT_MODES",
    "NORMALIZATION",
    "NUM_CLASSES",
    "SPLITS",
    "SPLIT_PATTERN",
    "TFDS_DATASETS",
    "DatasetNotFoundError",
    "decode_images",
    "load",
    "load_digits",
    "load_npz",
    "load_protocol",
    "parse_split",
    "tfds_data_source",
]


def load(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    resolution: int | None = None,
    train_subset: int | None = None,
    subset_seed: int = 0,
    image_size: int | None = None,
    crop_fraction: float = 0.875,
) -> Dataset:
    """Loads a whole split into memory as uint8 NHWC images and int32 labels.

    Args:
      name: one of :data:`DATASETS` (``'digits'``, ``'cifar10'``, ``'cifar100'``,
        ``'mnist'``, ``'fashion_mnist'``), or any tensorflow-datasets image dataset with
        ``'image'`` and ``'label'`` features (``'imagenette'``, ``'imagenet2012'``, ...;
        too large for memory? stream it: :func:`jnet2net.data.stream`).
      split: ``'train'`` or ``'test'``, optionally sliced: ``'train[:1000]'``,
        ``'test[-500:]'`` (tfds datasets also take tfds' percent slices).
      data_dir: a tensorflow-datasets data directory (holding ``<name>/<version>/``), a
        folder holding ``<name>_jpeg.npz`` / ``<name>.npz``, or an ``.npz`` file (see
        :func:`load_npz`). ``None``: ``$JNET2NET_DATA_DIR`` if set, else tfds' default
        (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``). Ignored by ``digits``.
      download: let tensorflow-datasets download and prepare a missing dataset (needs
        internet and TensorFlow).
      resolution: downsample the images to this height by an integer factor, each pixel
        the mean of a k x k block (:func:`downsample`; CIFAR-10 at 16: 2x2 means).
        ``None``: full size.
      train_subset: keep a seeded stratified subset of this many examples (equally many
        per class as far as possible; :func:`stratified_subset`), in the source's order.
        ``'train'`` split only (taken from the slice, if sliced).
      subset_seed: seed of the subset.
      image_size: tfds datasets only: resize each image (shorter side to
        ``image_size / crop_fraction``) and crop its centre ``image_size`` square; needed
        for datasets whose images differ in size. ``None``: as stored.
      crop_fraction: the centre crop's share of the resized shorter side.

    Returns:
      The :class:`Dataset`. Its ``mean``/``std`` are the full-resolution training split's
      statistics (known constants for the tfds datasets of :data:`DATASETS`; other tfds
      datasets as :func:`jnet2net.data.stream` gives them), except with ``train_subset``: then
      they are the statistics of the returned, downsampled subset. ``jnet2net.train.fit``
      normalises both sets with the training set's ``mean``/``std``; to evaluate a test
      set on its own like that, use :func:`load_protocol`, which gives it the training
      subset's statistics.

    Raises:
      ValueError: an unknown name or split, ``train_subset`` with a split other than
        ``'train'`` or of a bad size, or a ``resolution`` that does not divide the images.
      DatasetNotFoundError: the dataset is not prepared and ``download`` is False.
    """
    name = _check_name(name)
    if not isinstance(split, str):
        raise TypeError(f"split must be a string like 'train' or 'test', got {split!r}")
    if train_subset is not None and split.split("[", 1)[0] != "train":
        raise ValueError(
            f"train_subset is for the 'train' split, got {split!r}; load other splits without "
            "it (jnet2net.data.load_protocol gives them the subset's statistics)"
        )
    if data_dir is None:
        data_dir = os.environ.get(DATA_DIR_VARIABLE) or None
    if name != "digits" and _npz_path(name, data_dir) is None:
        dataset = _load_tfds(
            name,
            split,
            data_dir=data_dir,
            download=download,
            image_size=image_size,
            crop_fraction=crop_fraction,
        )
    else:
        if image_size is not None:
            raise ValueError(f"image_size is for tfds datasets; {name!r} is read from {data_dir}")
        base, rows = parse_split(split)
        if name == "digits":
            dataset = load_digits(base)
        else:
            dataset = load_npz(_npz_path(name, data_dir), base, name=name)
        dataset = dataset if rows is None else dataset.take(rows)
    return shrink(dataset, resolution=resolution, subset=train_subset, seed=subset_seed)


def load_protocol(
    name: str = "cifar10",
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    resolution: int | None = 16,
    train_subset: int | None = 10000,
    seed: int = 0,
) -> tuple[Dataset, Dataset]:
    """``(train, test)`` of the reduced CPU protocol.

    With the defaults: CIFAR-10 downsampled (2x2 mean) to 16x16, a seeded stratified 10k
    train subset (1,000 per class), the full 10k test set, normalised with the subset's
    statistics. Both sets carry the training set's ``mean``/``std``, so
    ``jnet2net.train.evaluate`` of the test set alone normalises it as ``fit`` does.

    Args:
      name: a dataset :func:`load` knows.
      data_dir: as for :func:`load` (e.g. a folder holding ``cifar10_jpeg.npz``).
      download: as for :func:`load`.
      resolution: image height of both sets (``None``: full size).
      train_subset: training examples kept (``None``: the whole training split).
      seed: seed of the subset.

    Returns:
      ``(train, test)`` :class:`Dataset` s.
    """
    train = load(
        name,
        "train",
        data_dir=data_dir,
        download=download,
        resolution=resolution,
        train_subset=train_subset,
        subset_seed=seed,
    )
    test = load(name, "test", data_dir=data_dir, download=download, resolution=resolution)
    return train, dataclasses.replace(test, mean=train.mean, std=train.std)


def load_digits(split: str) -> Dataset:
    """scikit-learn's 1,797 handwritten 8x8 digits, no download needed.

    Pixels 0..16 are scaled to uint8 0..255; images ``(n, 8, 8, 1)``. The split is
    stratified and fixed (seed 0): 1,437 train and 360 test images.
    """
    if split not in SPLITS:
        raise ValueError(f"digits has splits {SPLITS}, got {split!r}")
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = bunch.target.astype(np.int32)
    indices = np.arange(len(labels))
    train_idx, test_idx = train_test_split(
        indices, test_size=DIGITS_TEST_SIZE, stratify=labels, random_state=DIGITS_SEED
    )
    mean, std = channel_stats(images[train_idx])
    chosen = train_idx if split == "train" else test_idx
    return Dataset(
        images[chosen],
        labels[chosen],
        10,
        "digits",
        mean,
        std,
        tuple(str(c) for c in range(10)),
    )
