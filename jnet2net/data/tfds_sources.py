"""Datasets from tensorflow-datasets: random-access sources, whole splits read into memory,
and the message that says how to prepare a dataset offline.

tensorflow-datasets is imported only when a tfds dataset is asked for.
"""

from __future__ import annotations

import concurrent.futures
import os
from typing import Any

import numpy as np

from jnet2net.data.catalog import _KNOWN, DATASETS, NORMALIZATION, DatasetNotFoundError
from jnet2net.data.dataset import Dataset, channel_stats


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
        from jnet2net.data.stream_set import stream

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
