"""On-device augmentation: random crop with zero padding and horizontal flip.

Every function is pure and jit-friendly: the same key gives the same images, on any
number of devices (``jax_threefry_partitionable``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _check_images(images: jax.Array, what: str) -> None:
    if images.ndim != 4:
        raise ValueError(f"{what} needs images (n, h, w, c), got shape {images.shape}")


def random_crop(key: jax.Array, images: jax.Array, *, padding: int) -> jax.Array:
    """Pads each image with ``padding`` zeros per side and crops it back at a random offset.

    Args:
      key: PRNG key.
      images: ``(n, h, w, c)``, any dtype.
      padding: pixels of zero padding on each side (``0``: no-op).

    Returns:
      ``(n, h, w, c)``, ``images.dtype``.
    """
    _check_images(images, "random_crop")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"random_crop padding must be an int >= 0, got {padding!r}")
    if padding == 0:
        return images
    n, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(key, (n, 2), 0, 2 * padding + 1)

    def crop(image: jax.Array, offset: jax.Array) -> jax.Array:
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

    return jax.vmap(crop)(padded, offsets)


def random_flip(key: jax.Array, images: jax.Array) -> jax.Array:
    """Mirrors each image left-right with probability 1/2; ``(n, h, w, c)`` in and out."""
    _check_images(images, "random_flip")
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0],))
    return jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


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
      ``(n, h, w, c)``, ``images.dtype``.
    """
    _check_images(images, "augment")
    key_crop, key_flip = jax.random.split(key)
    images = random_crop(key_crop, images, padding=crop_padding)
    if flip:
        images = random_flip(key_flip, images)
    return images
