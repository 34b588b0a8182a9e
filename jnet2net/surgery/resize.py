"""Changing a conv kernel's spatial size."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jnet2net.surgery._checks import kernel_pair


def _resize_axis(kernel: jax.Array, axis: int, new: int) -> jax.Array:
    old = kernel.shape[axis]
    if new >= old:
        before = (new - old) // 2
        pad = [(0, 0)] * kernel.ndim
        pad[axis] = (before, new - old - before)
        return jnp.pad(kernel, pad)
    start = (old - new) // 2
    return jax.lax.slice_in_dim(kernel, start, start + new, axis=axis)


def resize_kernel(kernel: jax.Array, kernel_size: int | tuple[int, int]) -> jax.Array:
    """Centre-pads with zeros or centre-crops a conv kernel to a new spatial size.

    Padding an odd kernel to a larger odd size keeps the convolution exact under 'SAME'
    padding; cropping drops the outer taps (approximate).

    Args:
      kernel: ``(kh, kw, c_in, c_out)``.
      kernel_size: the new ``(kh', kw')`` or one int for both.

    Returns:
      ``(kh', kw', c_in, c_out)``.
    """
    if kernel.ndim != 4:
        raise ValueError(f"resize_kernel needs a (kh, kw, c_in, c_out) kernel, got {kernel.shape}")
    kh, kw = kernel_pair(kernel_size)
    return _resize_axis(_resize_axis(kernel, 0, kh), 1, kw)
