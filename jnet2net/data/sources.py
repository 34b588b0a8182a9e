"""Where datasets come from: scikit-learn's digits, tensorflow-datasets, npz packs.

``load(name, split)`` is the front door. tensorflow-datasets is imported only when a tfds
dataset is asked for, so training code runs on machines without it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import os
import pathlib
import re
import zipfile
import zlib
from typing import Any

import numpy as np

from jnet2net.data.dataset import Dataset, channel_stats
from jnet2net.data.reduce import shrink

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


def parse_split(split: str) -> tuple[str, slice | None]:
    """``'train[10:-5]'`` -> ``('train', slice(10, -5))``; ``'test'`` -> ``('test', None)``."""
    match = SPLIT_PATTERN.fullmatch(split)
    if match is None:
        raise ValueError(f"split {split!r} is not 'NAME' or 'NAME[start:stop]' with integer bounds")
    base, start, stop = match.group(1), match.group(2), match.group(3)
    if start is None:
        return base, None
    return base, slice(int(start) if start else None, int(stop) if stop else None)


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


def load_npz(
    path: str | os.PathLike,
    split: str,
    *,
    name: str | None = None,
    workers: int | None = None,
) -> Dataset:
    """Loads one split of an ``.npz`` pack, decoding JPEG/PNG bytes with Pillow.

    Two layouts are read:

    * encoded: ``{split}_jpeg`` (uint8, concatenated encoded images), ``{split}_offsets``
      (int64 ``(n + 1,)``, image ``i`` is ``jpeg[offsets[i]:offsets[i + 1]]``),
      ``{split}_labels``; e.g. the offline ``cifar10_jpeg.npz``;
    * raw: ``{split}_images`` (uint8 ``(n, h, w, c)``, or ``(n, h, w)`` for grey) and
      ``{split}_labels``.

    An optional ``class_names`` array gives ``num_classes`` (else the known count for
    :data:`DATASETS`, else the largest label + 1).

    Args:
      path: the ``.npz`` file.
      split: ``'train'`` or ``'test'`` (any prefix present in the file).
      name: dataset name; default: the file name without ``.npz`` and ``_jpeg``.
      workers: decoding threads (default: CPU count).

    Returns:
      The :class:`Dataset`; ``mean``/``std`` are known constants for the datasets in
      :data:`NORMALIZATION`, else the statistics of the file's ``train`` split.

    Raises:
      DatasetNotFoundError: no file at ``path``.
      ValueError, TypeError: one line that names ``path`` and what is wrong: not an
        ``.npz`` archive (random bytes, truncated), an array that cannot be read, offsets
        outside the encoded bytes, an image that does not decode, wrong dtypes or shapes.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"no npz pack at {path}")
    name = name or re.sub(r"_jpeg$", "", path.stem)
    try:
        with _open_npz(path) as pack:
            keys = set(pack.files)
            splits = sorted({k.rsplit("_", 1)[0] for k in keys if k.endswith("_labels")})
            if split not in splits:
                raise ValueError(f"{path} has splits {splits}, got {split!r}")
            labels = _int_labels(_array(pack, f"{split}_labels"), f"{split}_labels")
            images = _npz_images(pack, split, workers)
            class_names = ()
            if "class_names" in keys:
                class_names = tuple(str(c) for c in _array(pack, "class_names"))
            if name in NORMALIZATION:
                mean, std = NORMALIZATION[name]
            elif split != "train" and "train_labels" in keys:
                mean, std = channel_stats(_npz_images(pack, "train", workers))
            else:
                mean, std = channel_stats(images)
            label_max = max(
                int(_int_labels(_array(pack, f"{s}_labels"), f"{s}_labels").max(initial=0))
                for s in splits
            )
        num_classes = len(class_names) or NUM_CLASSES.get(name, label_max + 1)
        return Dataset(images, labels, num_classes, name, mean, std, class_names)
    except (TypeError, ValueError) as err:
        if str(path) in str(err):
            raise
        kind = TypeError if isinstance(err, TypeError) else ValueError
        raise kind(f"{path}: {err}") from None


def decode_images(encoded: list[bytes], *, workers: int | None = None) -> np.ndarray:
    """Decodes JPEG/PNG byte strings of equal-size images to uint8 ``(n, h, w, c)``.

    Grey images keep one channel (1-bit ones scale to 0/255); palette, alpha and other
    colour modes become RGB. Images deeper than 8 bits raise TypeError; bytes that do not
    decode raise ValueError naming the image's index.
    """
    from PIL import Image, UnidentifiedImageError

    def decode(index: int, data: bytes) -> np.ndarray:
        try:
            with Image.open(io.BytesIO(data)) as image:
                array = np.asarray(_grey_or_rgb(image))
        except UnidentifiedImageError:
            raise ValueError(
                f"image {index} ({len(data)} bytes) is in no image format Pillow reads"
            ) from None
        except (OSError, ValueError, SyntaxError, EOFError) as err:  # what Pillow raises
            raise ValueError(f"image {index} ({len(data)} bytes) does not decode: {err}") from None
        return array[..., None] if array.ndim == 2 else array

    workers = workers or os.cpu_count() or 1
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        arrays = list(pool.map(decode, range(len(encoded)), encoded, chunksize=256))
    if not arrays:
        raise ValueError("decode_images got no images")
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"images differ in shape: {sorted(shapes)[:4]}")
    return np.stack(arrays).astype(np.uint8, copy=False)


# --- helpers ------------------------------------------------------------------------------


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


def _uint8_pixels(images: np.ndarray, key: str) -> np.ndarray:
    """``images`` as uint8; raises TypeError for floats or ints outside 0..255."""
    if images.dtype == np.uint8:
        return images
    if np.issubdtype(images.dtype, np.integer) and (
        images.size == 0 or (images.min() >= 0 and images.max() <= 255)
    ):
        return images.astype(np.uint8)
    values = f" in [{images.min()}, {images.max()}]" if images.size else ""
    raise TypeError(
        f"'{key}' must hold pixels 0..255 as uint8 (or ints), got "
        f"{images.dtype}{values}; convert floats in [0, 1] with "
        "np.round(x * 255).astype(np.uint8)"
    )


GREY_MODES = ("1", "L", "LA", "La")
HIGH_BIT_MODES = ("I", "F")


def _grey_or_rgb(image: Any) -> Any:
    """A Pillow image as 8-bit grey (``'L'``) or ``'RGB'``; TypeError for deeper pixels."""
    if image.mode in ("L", "RGB"):
        return image
    if image.mode.startswith(HIGH_BIT_MODES):
        raise TypeError(
            f"decode_images needs 8-bit grey or RGB pixels, got mode {image.mode!r} "
            f"({image.size[0]}x{image.size[1]}); convert the images to 8 bits first"
        )
    return image.convert("L" if image.mode in GREY_MODES else "RGB")


def _int_labels(labels: np.ndarray, key: str) -> np.ndarray:
    """``labels`` if they are ints; TypeError otherwise (casting would change them)."""
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"'{key}' must hold ints, got {labels.dtype}")
    return labels


#: What numpy's and zipfile's readers raise on a damaged or truncated archive.
_UNREADABLE = (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error)


def _open_npz(path: pathlib.Path) -> Any:
    """``np.load(path)`` as an ``NpzFile``; ValueError naming ``path`` if it is none."""
    try:
        pack = np.load(path)
    except _UNREADABLE as err:
        reason = "neither a zip archive nor an .npy array" if "pickle" in str(err) else err
        raise ValueError(
            f"{path} is not a readable .npz pack ({reason}): damaged, truncated, or not "
            "written by np.savez"
        ) from None
    if not isinstance(pack, np.lib.npyio.NpzFile):
        raise ValueError(
            f"{path} holds one .npy array, not an .npz pack of named arrays (np.savez)"
        )
    return pack


def _array(pack: Any, key: str) -> np.ndarray:
    """``pack[key]``; ValueError naming ``key`` when the member cannot be read."""
    try:
        return pack[key]
    except _UNREADABLE as err:
        if "allow_pickle" in str(err):
            raise ValueError(f"'{key}' holds Python objects, which are not loaded") from None
        raise ValueError(
            f"'{key}' cannot be read ({type(err).__name__}: {err}): the file is damaged or "
            "truncated"
        ) from None


def _npz_images(pack: Any, split: str, workers: int | None) -> np.ndarray:
    if f"{split}_images" in pack.files:
        images = _uint8_pixels(_array(pack, f"{split}_images"), f"{split}_images")
        if images.ndim not in (3, 4):
            raise ValueError(
                f"'{split}_images' must have shape (n, h, w, c) or (n, h, w), got {images.shape}"
            )
        return images[..., None] if images.ndim == 3 else images  # grey (n, h, w)
    if f"{split}_jpeg" not in pack.files or f"{split}_offsets" not in pack.files:
        raise ValueError(
            f"the pack lacks '{split}_images' or '{split}_jpeg' + '{split}_offsets'; "
            f"it holds {sorted(pack.files)}"
        )
    blob = _array(pack, f"{split}_jpeg")
    offsets = _array(pack, f"{split}_offsets")
    _check_offsets(offsets, blob, split)
    encoded = [blob[offsets[i] : offsets[i + 1]].tobytes() for i in range(len(offsets) - 1)]
    try:
        return decode_images(encoded, workers=workers)
    except ValueError as err:
        raise ValueError(f"'{split}_jpeg': {err} (are '{split}_offsets' right?)") from None


def _check_offsets(offsets: np.ndarray, blob: np.ndarray, split: str) -> None:
    """Raises ValueError unless ``offsets`` rise strictly from >= 0 to at most ``blob``'s
    end, and ``blob`` is a 1-D byte array."""
    key = f"{split}_offsets"
    if blob.ndim != 1 or blob.dtype != np.uint8:
        raise ValueError(
            f"'{split}_jpeg' must be the encoded images' bytes, uint8 of shape (bytes,), got "
            f"{blob.dtype} {blob.shape}"
        )
    if offsets.ndim != 1 or len(offsets) < 2 or not np.issubdtype(offsets.dtype, np.integer):
        raise ValueError(
            f"'{key}' must be ints of shape (n + 1,) with n >= 1, got {offsets.dtype} "
            f"{offsets.shape}"
        )
    steps = np.diff(offsets)
    if offsets[0] < 0 or offsets[-1] > blob.size or np.any(steps <= 0):
        raise ValueError(
            f"'{key}' must rise strictly from >= 0 to at most the {blob.size} bytes of "
            f"'{split}_jpeg'; they run from {offsets[0]} to {offsets[-1]}"
            + (f", image {int(np.argmax(steps <= 0))} has none" if np.any(steps <= 0) else "")
        )


def _npz_path(name: str, data_dir: str | os.PathLike | None) -> pathlib.Path | None:
    """The npz pack that ``data_dir`` points at, if it is one (or holds one and no tfds dir)."""
    if data_dir is None:
        return None
    path = pathlib.Path(data_dir)
    if path.suffix == ".npz":
        return path
    if path.is_dir() and not (path / name).is_dir():
        for candidate in (path / f"{name}_jpeg.npz", path / f"{name}.npz"):
            if candidate.is_file():
                return candidate
    return None


def _not_found_message(name: str, split: str, data_dir: Any, download: bool) -> str:
    where = (
        str(data_dir)
        if data_dir is not None
        else "tfds' default data dir ($TFDS_DATA_DIR, else ~/tensorflow_datasets)"
    )
    lines = [
        f"dataset {name!r} (split {split!r}) is not prepared under {where}.",
        "To use it offline, pass data_dir= one of:",
        f"  * a tensorflow-datasets data dir that holds {name}/<version>/ (prepared elsewhere "
        f"with tfds.data_source('{name}', data_dir=DIR) and copied over);",
        f"  * a folder holding {name}_jpeg.npz or {name}.npz, or the .npz file itself "
        "(see jnet2net.data.load_npz).",
    ]
    if download:
        lines.append(
            "download=True was given, but downloading or preparing failed (it needs internet, "
            "and tensorflow-datasets needs TensorFlow to prepare most datasets)."
        )
    else:
        lines.append("Or pass download=True to let tensorflow-datasets fetch it (needs internet).")
    lines.append("The 'digits' dataset needs no download.")
    return "\n".join(lines)


def _import_tfds() -> Any:
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise ImportError(
            "loading tfds datasets needs tensorflow-datasets: pip install tensorflow-datasets "
            "(or use load('digits', ...) / load_npz(...), which do not)"
        ) from err
    return tfds


class _NotArrayRecord(Exception):
    """A tfds dataset is prepared, but not in array_record format."""


def tfds_data_source(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    tfrecord_error: bool = True,
) -> Any:
    """``tfds.data_source(name, split=split, ...)``: random access to a prepared split.

    Raises:
      ValueError: ``name`` is neither one of :data:`DATASETS` nor a dataset that
        tensorflow-datasets knows or finds under ``data_dir``; or (``tfrecord_error``) it
        is prepared in tfrecord format, which has no random access.
      DatasetNotFoundError: the dataset is not prepared and ``download`` is False (or the
        download failed; the message says why).
    """
    tfds = _import_tfds()
    data_dir = None if data_dir is None else os.fspath(data_dir)
    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=download)
    except Exception as err:
        builder = _builder_or_none(tfds, name, data_dir)
        if builder is None and name not in DATASETS:
            raise ValueError(f"unknown dataset {name!r}; {_KNOWN}") from err
        if builder is None or not builder.is_prepared():
            message = _not_found_message(name, split, data_dir, download)
            if download:
                cause = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
                message += f"\ntensorflow-datasets said: {type(err).__name__}: {cause}"
            raise DatasetNotFoundError(message) from err
        if "array_record" not in str(builder.info.file_format).lower():
            if not tfrecord_error:
                raise _NotArrayRecord(name) from err
            raise ValueError(
                f"{name} is prepared in tfrecord format under {data_dir}, which has no random "
                "access: prepare it with file_format='array_record'"
            ) from err
        raise


def _load_tfds(
    name: str,
    split: str,
    *,
    data_dir: Any,
    download: bool,
    image_size: int | None = None,
    crop_fraction: float = 0.875,
) -> Dataset:
    data_dir = None if data_dir is None else os.fspath(data_dir)
    try:
        source = tfds_data_source(
            name, split, data_dir=data_dir, download=download, tfrecord_error=False
        )
    except _NotArrayRecord:
        return _load_tfds_with_tensorflow(_import_tfds(), name, split, data_dir)
    shape = tuple(source.dataset_info.features["image"].shape)
    if image_size is not None or None in shape or name not in NORMALIZATION:
        from jnet2net.data.streaming import stream

        streamed = stream(
            name,
            split,
            data_dir=data_dir,
            download=download,
            image_size=image_size,
            crop_fraction=crop_fraction,
        )
        return streamed.to_dataset()
    label = source.dataset_info.features["label"]
    rows = _read_rows(source)
    images = np.stack([np.asarray(r["image"]) for r in rows]).astype(np.uint8, copy=False)
    labels = np.asarray([r["label"] for r in rows], np.int32)
    mean, std = NORMALIZATION[name]
    return Dataset(images, labels, label.num_classes, name, mean, std, tuple(label.names))


def _read_rows(source: Any, chunk: int = 2048) -> list[dict[str, Any]]:
    """Every row of a random-access tfds source, decoded in parallel chunks."""
    n = len(source)
    ranges = [range(i, min(i + chunk, n)) for i in range(0, n, chunk)]
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        parts = list(pool.map(lambda keys: _read_chunk(source, keys), ranges))
    return [row for part in parts for row in part]


def _read_chunk(source: Any, keys: range) -> list[dict[str, Any]]:
    try:
        return list(source.__getitems__(keys))  # batched reads: about twice as fast
    except TypeError:  # sources without a working batched read (e.g. tfds.testing.mock_data)
        return [source[i] for i in keys]


def _builder_or_none(tfds: Any, name: str, data_dir: Any) -> Any:
    try:
        return tfds.builder(name, data_dir=data_dir)
    except Exception:
        return None


def _load_tfds_with_tensorflow(tfds: Any, name: str, split: str, data_dir: Any) -> Dataset:
    """Reads tfrecord-prepared data with ``tfds.load`` (which needs TensorFlow)."""
    try:
        images, labels = tfds.as_numpy(
            tfds.load(
                name,
                split=split,
                data_dir=data_dir,
                download=False,
                batch_size=-1,
                as_supervised=True,
            )
        )
    except ImportError as err:
        raise ImportError(
            f"{name} is prepared in tfrecord format, which needs TensorFlow to read; install "
            "tensorflow, or prepare it with file_format='array_record'"
        ) from err
    info = tfds.builder(name, data_dir=data_dir).info.features["label"]
    images = np.asarray(images, np.uint8)
    mean, std = NORMALIZATION[name] if name in NORMALIZATION else channel_stats(images)
    return Dataset(
        images,
        np.asarray(labels, np.int32),
        info.num_classes,
        name,
        mean,
        std,
        tuple(info.names),
    )
