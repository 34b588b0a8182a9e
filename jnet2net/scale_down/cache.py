"""Stored outputs of the frozen prefix, one row per training example, sharded over devices.

A cache holds the input of layer ``cut`` for every training example, for one or two
*views*: the image as it is and, with flips, its mirror image, as one array
``(n_pad, views, h', w', c')`` so that a batch is a single gather. Rows are sharded over
the mesh's ``'data'`` axis (each device computes and keeps its own examples, nothing is
replicated); ``n_pad`` is the number of examples rounded up to a multiple of the devices,
and the padding rows (of black images) are never read. When the cut moves from ``a`` to
``b`` only the newly frozen layers ``[a, b)`` run, on the stored activations.

So that random crops survive caching, a cache may instead hold ``K`` *augmented views*:
the prefix's output on ``K`` random crops and flips of each image, drawn once
(:func:`augmented_views`); each step then picks one view per example at random. Or it holds
the prefix's output on each image zero-padded as the random crop pads it (``pad``; and on
its mirror image), and each step crops the map where the no-grad step would crop the image
(:func:`cached_crops`): exact wherever the prefix's receptive field stays inside the crop,
for a prefix of stride 1; with stride ``s`` (which must divide ``pad``, or the two maps'
grids do not meet) the offsets are rounded down to multiples of ``s``. It takes
``((h + 2 pad) / h)^2`` times the memory.

:func:`cache_fn` gives the jitted function of one such move, so that it can be compiled
ahead of time; :func:`build_cache` and :func:`extend_cache` call it once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from jnet2net.data.augment import augment, augment_choices, crop_windows
from jnet2net.data.dataset import normalize
from jnet2net.models.common import compute_dtype
from jnet2net.scale_down.split import check_cut
from jnet2net.train.sharding import DATA_AXIS, batch_sharding, data_mesh, replicated
from jnet2net.variables import Variables


class ActivationCache(NamedTuple):
    """Inputs of layer ``cut`` for every training example.

    Attributes:
      cut: the layer these activations feed.
      activations: ``(n_pad, views, h', w', c')`` sharded by row over ``'data'``; view 0
        is the image as it is, view 1 (if any) its mirror image; rows from the number of
        examples on are padding. With augmented views, view ``v`` is the ``v``-th
        augmented copy (:func:`augmented_views`).
    """

    cut: int
    activations: jax.Array

    @property
    def num_views(self) -> int:
        """1 (plain), 2 (plain and mirrored) or the number of augmented views."""
        return self.activations.shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes held over all devices."""
        return int(self.activations.size) * self.activations.dtype.itemsize


class AugmentedViews(NamedTuple):
    """What a cache of augmented views holds (see :func:`augmented_views`).

    Attributes:
      key: the views' randomness.
      count: views per example.
      crop_padding: the random crop's padding (0: no crop).
      flip: whether views are flipped at random.
    """

    key: jax.Array
    count: int
    crop_padding: int
    flip: bool


def cache_nbytes(shape: tuple[int, ...], dtype: Any, num_views: int) -> int:
    """Bytes of a cache of ``num_views`` views of ``shape`` and ``dtype`` each."""
    return num_views * math.prod(shape) * np.dtype(dtype).itemsize


def padded_rows(num_examples: int, mesh: Mesh) -> int:
    """``num_examples`` rounded up to a multiple of the mesh's devices."""
    return -(-num_examples // mesh.size) * mesh.size


def device_cache_budget(device: jax.Device | None = None) -> int | None:
    """Half the free memory the device reports, or ``None`` if it reports none (e.g. CPU)."""
    device = device or jax.devices()[0]
    try:
        stats = device.memory_stats()
    except (AttributeError, NotImplementedError, RuntimeError):
        return None
    if not stats or "bytes_limit" not in stats:
        return None
    return max(0, int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))) // 2


def mirrored(images: jax.Array) -> jax.Array:
    """Left-right mirror images ``(n, h, w, c)``."""
    return images[:, :, ::-1, :]


def gather_views(activations: jax.Array, indices: jax.Array, view: jax.Array | None) -> jax.Array:
    """Rows ``indices (b,)`` of a cache's ``activations (n, views, ...)``, one view each.

    Args:
      activations: :attr:`ActivationCache.activations`.
      indices: ``(b,)`` example indices.
      view: ``(b,)`` int view of each (0 plain, 1 mirrored), or ``None`` for the plain one.

    Returns:
      ``(b, ...)`` activations.
    """
    if view is None:
        view = jnp.zeros_like(indices)
    return activations[indices, view]


def crop_map(
    maps: jax.Array, offsets: jax.Array, *, window: tuple[int, int], padding: int
) -> jax.Array:
    """Crops ``window`` from maps of zero-padded images at the images' crop offsets.

    Args:
      maps: ``(b, H, W, c)``: a prefix's output on images zero-padded by ``padding``.
      offsets: ``(b, 2)`` int (row, column) of each crop in the padded image, in
        ``[0, 2 * padding]`` (:func:`~jnet2net.data.augment_choices`).
      window: ``(h, w)``, the prefix's output size on an unpadded image.
      padding: the images' padding (0: ``maps`` are returned as they are).

    Returns:
      ``(b, h, w, c)``; an offset ``o`` becomes ``o * (H - h) // (2 * padding)`` (``o``
      itself for a prefix of stride 1).
    """
    if padding == 0:
        return maps
    h, w = window
    margin = jnp.array([maps.shape[1] - h, maps.shape[2] - w], jnp.int32)
    return crop_windows(maps, offsets.astype(jnp.int32) * margin // (2 * padding), window)


def cached_crops(
    activations: jax.Array,
    indices: jax.Array,
    key: jax.Array,
    *,
    window: tuple[int, int],
    padding: int,
    flip: bool,
) -> jax.Array:
    """Rows ``indices (b,)`` of a padded cache, cropped and flipped as
    :func:`~jnet2net.data.augment` with ``key`` crops and flips their images.

    The mirrored view (view 1) is taken where the augmentation flips, and its crop column
    mirrored (``2 * padding - column``): flipping a crop of the padded image is cropping the
    mirrored padded image there.

    Args:
      activations: ``(n_pad, views, H, W, c)``, the prefix of images padded by ``padding``.
      indices: ``(b,)`` example indices.
      key: the augmentation's key for this batch.
      window: ``(h, w)``, the prefix's output size on an unpadded image.
      padding: the crop's padding.
      flip: whether the augmentation flips (and view 1 is the mirror images').

    Returns:
      ``(b, h, w, c)``.
    """
    offsets, flips = augment_choices(key, indices.shape[0], crop_padding=padding, flip=flip)
    column = jnp.where(flips, 2 * padding - offsets[:, 1], offsets[:, 1])
    offsets = jnp.stack([offsets[:, 0], column], axis=1)
    rows = gather_views(activations, indices, flips.astype(jnp.int32) if flip else None)
    return crop_map(rows, offsets, window=window, padding=padding)


def augmented_views(
    key: jax.Array, images: jax.Array, num_views: int, *, crop_padding: int, flip: bool
) -> jax.Array:
    """``num_views`` augmented copies of ``images (n, h, w, c)``: ``(n, num_views, h, w, c)``.

    Copy ``v`` is :func:`~jnet2net.data.augment` with ``fold_in(key, v)`` (random crop with
    ``crop_padding``, then flips when ``flip``), so every copy is a crop and flip the
    training augmentation itself could have made.
    """
    copies = [
        augment(jax.random.fold_in(key, v), images, crop_padding=crop_padding, flip=flip)
        for v in range(num_views)
    ]
    return jnp.stack(copies, axis=1)


def _in_chunks(fn: Callable[[jax.Array], jax.Array], x: jax.Array, chunk: int) -> jax.Array:
    """``fn`` over the rows of ``x``, ``chunk`` at a time, written in place into the result.

    The last chunk ends at the last row (it overlaps the one before when ``chunk`` does not
    divide the rows, and those rows are computed twice), so neither ``x`` nor the result is
    padded and copied: a cache build holds one cache, not two.
    """
    rows = x.shape[0]
    chunk = max(1, min(chunk, rows))
    count = -(-rows // chunk)
    if count == 1:
        return fn(x)
    shape = jax.eval_shape(fn, jax.ShapeDtypeStruct((chunk, *x.shape[1:]), x.dtype))

    def write(i: jax.Array, out: jax.Array) -> jax.Array:
        start = jnp.minimum(i * chunk, rows - chunk)
        part = fn(jax.lax.dynamic_slice_in_dim(x, start, chunk))
        return jax.lax.dynamic_update_slice_in_dim(out, part, start, axis=0)

    out = jnp.zeros_like(x, shape=(rows, *shape.shape[1:]), dtype=shape.dtype)  # varying like x
    return jax.lax.fori_loop(0, count, write, out)


def cache_fn(
    model: nn.Module,
    start: int,
    stop: int,
    *,
    mean: tuple[float, ...] = (),
    std: tuple[float, ...] = (),
    flips: bool = False,
    views: AugmentedViews | None = None,
    pad: int = 0,
    chunk: int = 512,
    mesh: Mesh,
) -> Callable[[Variables, jax.Array], jax.Array]:
    """The jitted move of a cache from cut ``start`` to cut ``stop`` (eval mode).

    ``start == 0``: ``(frozen, images (n, h, w, c) uint8) -> (n_pad, views, ...)``, the
    images (zero-padded by ``pad`` pixels per side first) normalised with ``mean``/``std``
    (and mirrored for view 1 when ``flips``; or, with ``views``, :func:`augmented_views` of
    them).
    ``start > 0``: ``(frozen, activations (n_pad, views, ...)) -> (n_pad, views, ...)``.
    Each device runs its own rows (``shard_map`` over ``'data'``, no communication),
    ``chunk // devices`` at a time; the result is sharded by row.

    Args:
      model: the network in its compute dtype.
      start: the cut the input feeds (0: images).
      stop: the new cut, ``> start``.
      mean, std: normalisation of the images (``start == 0`` only).
      flips: store the mirror images' activations too (``start == 0`` only).
      views: store augmented views instead (``start == 0`` only).
      pad: zero padding of the images, for :func:`cached_crops` (``start == 0`` only).
      chunk: examples per call over the whole mesh.
      mesh: the devices.

    Returns:
      the jitted function (the frozen variables of at least layers ``[start, stop)``,
      replicated, then the input).
    """
    check_cut(model, stop)
    if not 0 <= start < stop:
        raise ValueError(f"a cache moves forward by at least one layer: {start} -> {stop}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk <= 0:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    if views is not None and (start or flips):
        raise ValueError("augmented views are made from the images (start == 0, no flips)")
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ValueError(f"pad must be an int >= 0, got {pad!r}")
    if pad and (start or views is not None):
        raise ValueError(
            f"pad={pad} pads the images: it needs start == 0 (got {start}) and no augmented views"
        )
    dtype = compute_dtype(model)
    local_chunk = max(1, chunk // mesh.size)

    def layers(frozen: Variables, h: jax.Array) -> jax.Array:
        return model.apply(frozen, h, train=False, start=start, stop=stop)

    def from_images(frozen: Variables, x: jax.Array) -> jax.Array:
        def prefix(images: jax.Array) -> jax.Array:
            return layers(frozen, normalize(images, mean, std, dtype))

        def views(images: jax.Array) -> jax.Array:
            if not flips:
                return prefix(images)[:, None]
            return jnp.stack([prefix(images), prefix(mirrored(images))], axis=1)

        return _in_chunks(views, x, local_chunk)

    def over_views(frozen: Variables, h: jax.Array, first: Callable[[jax.Array], jax.Array]):
        def run(rows: jax.Array) -> jax.Array:
            n, v = rows.shape[:2]
            out = layers(frozen, first(rows.reshape(n * v, *rows.shape[2:])))
            return out.reshape(n, v, *out.shape[1:])

        return _in_chunks(run, h, max(1, local_chunk // h.shape[1]))

    def from_cache(frozen: Variables, h: jax.Array) -> jax.Array:
        return over_views(frozen, h, lambda rows: rows)

    def from_views(frozen: Variables, x: jax.Array) -> jax.Array:
        return over_views(frozen, x, lambda rows: normalize(rows, mean, std, dtype))

    local = from_cache if start else (from_images if views is None else from_views)
    sharded = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(PartitionSpec(), PartitionSpec(DATA_AXIS)),
        out_specs=PartitionSpec(DATA_AXIS),
    )

    def scale_down_cache(frozen: Variables, x: jax.Array) -> jax.Array:
        if start == 0:
            rows = padded_rows(x.shape[0], mesh) - x.shape[0]
            x = jnp.pad(x, [(0, rows), (pad, pad), (pad, pad)] + [(0, 0)] * (x.ndim - 3))
            if views is not None:
                x = augmented_views(
                    views.key, x, views.count, crop_padding=views.crop_padding, flip=views.flip
                )
        return sharded(frozen, x)

    return jax.jit(
        scale_down_cache, in_shardings=(replicated(mesh), None), out_shardings=batch_sharding(mesh)
    )


def build_cache(
    model: nn.Module,
    frozen: Variables,
    images: jax.Array | np.ndarray,
    cut: int,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    flips: bool,
    views: AugmentedViews | None = None,
    pad: int = 0,
    chunk: int = 512,
    mesh: Mesh | None = None,
) -> ActivationCache:
    """The prefix ``[0, cut)`` (eval mode) of every training image, and of its mirror image.

    Args:
      model: the network in its compute dtype (the cache keeps the prefix's output dtype).
      frozen: variables of (at least) the layers before ``cut``.
      images: ``(n, h, w, c)`` uint8 training images, unaugmented.
      cut: the first trained layer (> 0).
      mean, std: per-channel normalisation (:func:`jnet2net.data.normalize`).
      flips: also store the mirror images' activations (second view).
      views: store these augmented views of each image instead (``flips`` must be False).
      pad: zero-pad the images by this many pixels per side first (:func:`cached_crops`).
      chunk: examples per call over the whole mesh.
      mesh: the devices the rows are sharded over (default: all, axis ``'data'``).

    Returns:
      the cache at ``cut``.
    """
    if cut <= 0:
        raise ValueError(f"a cache holds the output of at least one layer, got cut={cut}")
    mesh = data_mesh() if mesh is None else mesh
    fn = cache_fn(
        model, 0, cut, mean=mean, std=std, flips=flips, views=views, pad=pad, chunk=chunk, mesh=mesh
    )
    return ActivationCache(cut, fn(frozen, images))


def extend_cache(
    model: nn.Module,
    frozen: Variables,
    cache: ActivationCache,
    cut: int,
    *,
    chunk: int = 512,
    mesh: Mesh | None = None,
) -> ActivationCache:
    """``cache`` moved on to ``cut``: only the newly frozen layers ``[cache.cut, cut)`` run.

    Args:
      model: the network in its compute dtype.
      frozen: variables of (at least) the layers ``[cache.cut, cut)``.
      cache: the cache so far.
      cut: the new cut (>= ``cache.cut``).
      chunk: examples per call over the whole mesh.
      mesh: as in :func:`build_cache`.

    Returns:
      the cache at ``cut`` (the old one is left to be freed).
    """
    check_cut(model, cut)
    if cut < cache.cut:
        raise ValueError(f"a cache only moves forward: cut {cut} < cache.cut {cache.cut}")
    if cut == cache.cut:
        return cache
    mesh = data_mesh() if mesh is None else mesh
    fn = cache_fn(model, cache.cut, cut, chunk=chunk, mesh=mesh)
    return ActivationCache(cut, fn(frozen, cache.activations))
