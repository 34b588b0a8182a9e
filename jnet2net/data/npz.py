"""Datasets from ``.npz`` packs: raw pixel arrays, or JPEG/PNG bytes decoded with Pillow."""

from __future__ import annotations

import concurrent.futures
import io
import os
import pathlib
import re
import zipfile
import zlib
from typing import Any

import numpy as np

from jnet2net.data.catalog import NORMALIZATION, NUM_CLASSES, DatasetNotFoundError
from jnet2net.data.dataset import Dataset, channel_stats


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
