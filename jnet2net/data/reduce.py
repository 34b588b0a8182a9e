"""Smaller versions of a dataset: lower resolution and seeded stratified subsets.

They make reduced protocols that train on a CPU, e.g. CIFAR-10 at 16x16 from a 10k
training subset (see :func:`jnet2net.data.load_protocol`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jnet2net.data.dataset import Dataset, channel_stats


def _check_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what} must be an int, got {value!r}")
    return int(value)


def downsample(images: np.ndarray, resolution: int) -> np.ndarray:
    """Shrinks images by an integer factor, each output pixel the mean of a k x k block.

    The factor is ``k = h // resolution``; the width shrinks by the same factor, so an
    ``(n, h, w, c)`` batch becomes ``(n, resolution, w // k, c)``. Means are rounded half
    up back to uint8 (exact integer arithmetic). CIFAR-10 at ``resolution=16``: 2x2 means.

    Args:
      images: ``(n, h, w, c)`` uint8 pixels.
      resolution: the output height; must divide ``h``, and ``h // resolution`` must
        divide ``w``.

    Returns:
      ``(n, resolution, w // k, c)`` uint8; ``images`` itself when ``resolution == h``.

    Raises:
      TypeError: ``resolution`` is not an int.
      ValueError: ``images`` is not 4-d, or ``resolution`` is below 1, above ``h``, does
        not divide ``h``, or gives a factor that does not divide ``w``.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"downsample needs images (n, h, w, c), got shape {images.shape}")
    resolution = _check_int(resolution, "resolution")
    if resolution < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}")
    n, h, w, c = images.shape
    if resolution > h:
        raise ValueError(
            f"resolution {resolution} is larger than the image height {h} ({h}x{w} images); "
            "downsample only shrinks"
        )
    if h % resolution:
        divisors = [d for d in range(1, h + 1) if h % d == 0]
        raise ValueError(
            f"resolution {resolution} does not divide the image height {h} ({h}x{w} images); "
            f"choose one of {divisors}"
        )
    factor = h // resolution
    if w % factor:
        raise ValueError(
            f"resolution {resolution} of {h}x{w} images: the image width {w} is not divisible "
            f"by the factor {factor}"
        )
    if factor == 1:
        return images
    blocks = images.reshape(n, resolution, factor, w // factor, factor, c)
    total = blocks.sum(axis=(2, 4), dtype=np.uint32)
    area = factor * factor
    return ((total + area // 2) // area).astype(np.uint8)


def stratified_subset(
    labels: np.ndarray,
    size: int,
    *,
    seed: int = 0,
    num_classes: int | None = None,
    what: str = "subset size",
) -> np.ndarray:
    """Indices of a seeded subset with (as far as possible) equally many examples per class.

    Classes are filled in rounds of one example each, so every class gets ``size //
    num_classes`` examples; a class with fewer gives all it has and the others share the
    rest evenly. A remainder goes one each to classes drawn at random. Which examples of a
    class are taken is drawn at random too; both draws depend only on ``seed``.

    Args:
      labels: ``(n,)`` int class of each example.
      size: how many examples to keep, ``num_classes <= size <= n``.
      seed: seed of the draw (same seed, same subset).
      num_classes: number of classes (default: ``max(labels) + 1``).
      what: how errors name ``size`` (e.g. ``'train_subset'``).

    Returns:
      ``(size,)`` int64 indices into ``labels``, sorted ascending (the subset keeps the
      source's order).

    Raises:
      TypeError: ``size`` or ``seed`` is not an int.
      ValueError: ``size`` is larger than ``n`` or smaller than ``num_classes``.
    """
    labels = np.asarray(labels)
    size = _check_int(size, what)
    seed = _check_int(seed, "subset seed")
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if labels.size else 0
    if size > len(labels):
        raise ValueError(f"{what} {size} is larger than the {len(labels)} examples")
    if size < num_classes:
        raise ValueError(
            f"{what} {size} is smaller than the number of classes {num_classes}; a stratified "
            "subset needs at least one example per class"
        )
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(len(labels))
    class_order = rng.permutation(max(num_classes, int(labels.max(initial=-1)) + 1))
    # Rank of each shuffled example within its class: round in which it is taken.
    by_class = np.argsort(labels[shuffled], kind="stable")
    sorted_labels = labels[shuffled][by_class]
    starts = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank = np.empty(len(labels), np.int64)
    rank[by_class] = np.arange(len(labels)) - starts
    order = np.lexsort((class_order[labels[shuffled]], rank))
    return np.sort(shuffled[order[:size]]).astype(np.int64)


def shrink(
    dataset: Dataset,
    *,
    resolution: int | None = None,
    subset: int | None = None,
    seed: int = 0,
) -> Dataset:
    """``dataset`` at a lower resolution and/or as a seeded stratified subset.

    Args:
      dataset: the full dataset.
      resolution: output height for :func:`downsample` (``None``: keep the size).
      subset: keep this many examples (:func:`stratified_subset`; ``None``: all).
      seed: seed of the subset.

    Returns:
      The smaller :class:`Dataset`. With ``subset``, its ``mean``/``std`` are the
      statistics of the returned images (after downsampling); without, they are
      ``dataset``'s (a k x k mean keeps the channel means and lowers the std a little).
    """
    if resolution is None and subset is None:
        return dataset
    images, labels = dataset.images, dataset.labels
    if subset is not None:
        chosen = stratified_subset(
            labels, subset, seed=seed, num_classes=dataset.num_classes, what="train_subset"
        )
        images, labels = images[chosen], labels[chosen]
    if resolution is not None:
        images = downsample(images, resolution)
    mean, std = channel_stats(images) if subset is not None else (dataset.mean, dataset.std)
    return dataclasses.replace(dataset, images=images, labels=labels, mean=mean, std=std)
