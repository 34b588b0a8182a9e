"""On-device augmentation: random crop with zero padding and horizontal flip.

Every function is pure and jit-friendly: the same key gives the same images, on any
number of devices (``jax_threefry_partitionable``). All randomness of a batch comes from
one draw of random bits, which keeps compiles short.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _check_images(images: jax.Array, what: str) -> None:
    if images.ndim != 4:
        raise ValueError(f"{what} needs images (n, h, w, c), got shape {images.shape}")


def _check_padding(padding: int) -> None:
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"crop padding must be an int >= 0, got {padding!r}")


def crop_at(images: jax.Array, offsets: jax.Array, *, padding: int) -> jax.Array:
    """Pads ``images (n, h, w, c)`` with ``padding`` zeros per side and crops ``(h, w)``.

    Args:
      images: ``(n, h, w, c)``, any dtype.
      offsets: ``(n, 2)`` int (row, column) of each crop in the padded image, each in
        ``[0, 2 * padding]``; ``(padding, padding)`` gives the image back.
      padding: zero padding on each side.

    Returns:
      ``(n, h, w, c)``, ``images.dtype``.
    """
    _check_images(images, "crop_at")
    _check_padding(padding)
    if padding == 0:
        return images
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    return crop_windows(padded, offsets, images.shape[1:3])


def crop_windows(images: jax.Array, offsets: jax.Array, size: tuple[int, int]) -> jax.Array:
    """The ``size`` window of each of ``images (n, H, W, c)`` at its ``offsets (n, 2)`` (row,
    column of the window's corner): ``(n, h, w, c)``, ``images.dtype``."""
    (h, w), c = size, images.shape[-1]

    def crop(image: jax.Array, offset: jax.Array) -> jax.Array:
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

    return jax.vmap(crop)(images, offsets.astype(jnp.int32))


def flip_where(images: jax.Array, flip: jax.Array) -> jax.Array:
    """``images (n, h, w, c)`` with image ``i`` mirrored left-right where ``flip[i]``."""
    _check_images(images, "flip_where")
    return jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


def _offsets(bits: jax.Array, padding: int) -> jax.Array:
    return (bits % jnp.uint32(2 * padding + 1)).astype(jnp.int32)


def random_crop(key: jax.Array, images: jax.Array, *, padding: int) -> jax.Array:
    """Zero-pads each image by ``padding`` and crops it back at a uniform random offset.

    Args:
      key: PRNG key.
      images: ``(n, h, w, c)``, any dtype.
      padding: pixels of zero padding on each side (``0``: no-op).

    Returns:
      ``(n, h, w, c)``, ``images.dtype``.
    """
    _check_images(images, "random_crop")
    _check_padding(padding)
    bits = jax.random.bits(key, (images.shape[0], 2), jnp.uint32)
    return crop_at(images, _offsets(bits, padding), padding=padding)


def random_flip(key: jax.Array, images: jax.Array) -> jax.Array:
    """Mirrors each image left-right with probability 1/2; ``(n, h, w, c)`` in and out."""
    _check_images(images, "random_flip")
    bits = jax.random.bits(key, (images.shape[0],), jnp.uint32)
    return flip_where(images, (bits & 1).astype(bool))


def augment_choices(
    key: jax.Array, n: int, *, crop_padding: int = 4, flip: bool = True
) -> tuple[jax.Array, jax.Array]:
    """The random choices :func:`augment` makes for ``n`` images with ``key``.

    Args:
      key: PRNG key.
      n: number of images.
      crop_padding: pixels of padding for the crop (``0``: every offset is 0).
      flip: whether to flip (``False``: no image is flipped).

    Returns:
      ``(offsets (n, 2) int32, flips (n,) bool)``: each crop's (row, column) in the padded
      image, in ``[0, 2 * crop_padding]``, and whether the crop is then mirrored.
    """
    _check_padding(crop_padding)
    bits = jax.random.bits(key, (n, 3), jnp.uint32)
    flips = (bits[:, 2] & 1).astype(bool) if flip else jnp.zeros((n,), bool)
    return _offsets(bits[:, :2], crop_padding), flips


def augment(
    key: jax.Array, images: jax.Array, *, crop_padding: int = 4, flip: bool = True
) -> jax.Array:
    """Random crop with ``crop_padding`` zero padding, then a random horizontal flip.

    Args:
      key: PRNG key; the result is a pure function of ``key`` and ``images``.
      images: ``(n, h, w, c)`` (uint8 pixels, before normalisation, so padding is black).
      crop_padding: pixels of padding for the crop (``0``: no crop).
      flip: whether to flip.

    Returns:
      ``(n, h, w, c)``, ``images.dtype``; the choices are :func:`augment_choices`'.
    """
    _check_images(images, "augment")
    offsets, flips = augment_choices(key, images.shape[0], crop_padding=crop_padding, flip=flip)
    images = crop_at(images, offsets, padding=crop_padding)
    if flip:
        images = flip_where(images, flips)
    return images
