"""Datasets in memory (tfds, scikit-learn digits, npz packs) and on-device augmentation.

train = jnet2net.data.load("digits", "train")          # no download needed
test = jnet2net.data.load("cifar10", "test", data_dir="/path/to/tfds")
train, test = jnet2net.data.load_protocol(data_dir=...)  # CIFAR-10 16x16, 10k subset (CPU)
imagenet = jnet2net.data.stream("imagenet2012", "train", data_dir=..., image_size=224)
"""

from jnet2net.data.augment import (
    augment,
    augment_choices,
    crop_at,
    flip_where,
    random_crop,
    random_flip,
)
from jnet2net.data.dataset import Dataset, channel_stats, from_arrays, normalize
from jnet2net.data.reduce import downsample, shrink, stratified_subset
from jnet2net.data.sources import (
    DATASETS,
    NORMALIZATION,
    DatasetNotFoundError,
    decode_images,
    load,
    load_digits,
    load_npz,
    load_protocol,
    parse_split,
)
from jnet2net.data.streaming import StreamSet, stream, stream_from_dataset, stream_protocol

__all__ = [
    "DATASETS",
    "NORMALIZATION",
    "Dataset",
    "DatasetNotFoundError",
    "augment",
    "augment_choices",
    "channel_stats",
    "crop_at",
    "decode_images",
    "downsample",
    "flip_where",
    "from_arrays",
    "load",
    "load_digits",
    "load_npz",
    "load_protocol",
    "normalize",
    "parse_split",
    "random_crop",
    "random_flip",
    "shrink",
    "stratified_subset",
    "stream",
    "stream_from_dataset",
    "stream_protocol",
    "StreamSet",
]
