"""Datasets in memory (tfds, scikit-learn digits, npz packs) and on-device augmentation.

train = jnet2net.data.load("digits", "train")          # no download needed
test = jnet2net.data.load("cifar10", "test", data_dir="/path/to/tfds")
"""

from jnet2net.data.augment import augment, crop_at, flip_where, random_crop, random_flip
from jnet2net.data.dataset import Dataset, channel_stats, from_arrays, normalize
from jnet2net.data.sources import (
    DATASETS,
    NORMALIZATION,
    DatasetNotFoundError,
    decode_images,
    load,
    load_digits,
    load_npz,
    parse_split,
)

__all__ = [
    "DATASETS",
    "NORMALIZATION",
    "Dataset",
    "DatasetNotFoundError",
    "augment",
    "channel_stats",
    "crop_at",
    "decode_images",
    "flip_where",
    "from_arrays",
    "load",
    "load_digits",
    "load_npz",
    "normalize",
    "parse_split",
    "random_crop",
    "random_flip",
]
