"""The datasets jnet2net knows by name: statistics, class counts, splits and name checks."""

from __future__ import annotations

import re

#: Per-channel mean and std (0..255 units) of each training split.
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((125.31, 122.95, 113.87), (62.99, 62.09, 66.70)),
    "cifar100": ((129.30, 124.07, 112.43), (68.17, 65.39, 70.42)),
    "mnist": ((33.32,), (78.57,)),
    "fashion_mnist": ((72.94,), (90.02,)),
}
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "mnist": 10, "fashion_mnist": 10}
TFDS_DATASETS = ("cifar10", "cifar100", "mnist", "fashion_mnist")
#: Every name :func:`load` knows; ``digits`` needs no download.
DATASETS = ("digits", *TFDS_DATASETS)
SPLITS = ("train", "test")

SPLIT_PATTERN = re.compile(r"(\w+)(?:\[(-?\d*):(-?\d*)\])?")
#: Environment variable naming a default ``data_dir`` for :func:`load`.
DATA_DIR_VARIABLE = "JNET2NET_DATA_DIR"

DIGITS_TEST_SIZE = 360
DIGITS_SEED = 0


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is neither prepared under ``data_dir`` nor allowed to be downloaded."""


def parse_split(split: str) -> tuple[str, slice | None]:
    """``'train[10:-5]'`` -> ``('train', slice(10, -5))``; ``'test'`` -> ``('test', None)``."""
    match = SPLIT_PATTERN.fullmatch(split)
    if match is None:
        raise ValueError(f"split {split!r} is not 'NAME' or 'NAME[start:stop]' with integer bounds")
    base, start, stop = match.group(1), match.group(2), match.group(3)
    if start is None:
        return base, None
    return base, slice(int(start) if start else None, int(stop) if stop else None)


def _check_name(name: str) -> str:
    """One of :data:`DATASETS` (any case, ``-`` for ``_``), or ``name`` as a tfds name
    (``'imagenette/320px-v2'``, ``'imagenet2012:5.1.0'``; checked when tfds is asked for
    it); ValueError for what can be neither."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z][\w/-]*(:[\w.]+)?", name):
        raise ValueError(f"unknown dataset {name!r}; {_KNOWN}")
    known = name.lower().replace("-", "_")
    return known if known in DATASETS else name


_KNOWN = (
    f"known datasets: {', '.join(DATASETS)}, or any tensorflow-datasets image dataset "
    "(imagenette, imagenet2012, ...) prepared under data_dir or downloaded"
)
