"""Identity-initialised layers for Net2DeeperNet."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jnet2net.surgery._checks import check_positive, kernel_pair

DType = Any


def identity_dense_kernel(features: int, dtype: DType = jnp.float32) -> jax.Array:
    """Returns the ``(features, features)`` identity matrix, a Dense kernel computing ``x``."""
    check_positive("features", features)
    return jnp.eye(features, dtype=dtype)


def identity_conv_kernel(
    kernel_size: int | tuple[int, int], channels: int, dtype: DType = jnp.float32
) -> jax.Array:
    """Returns a delta conv kernel ``(kh, kw, channels, channels)`` computing ``x``.

    The kernel is zero except ``k[kh // 2, kw // 2, c, c] = 1``; with 'SAME' padding and
    stride 1 the convolution is the identity. Only odd sizes have a centre.

    Raises:
      ValueError: a kernel side is even or non-positive.
    """
    kh, kw = kernel_pair(kernel_size)
    check_positive("channels", channels)
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(
            f"identity_conv_kernel needs odd kernel sizes to have a centre tap, got ({kh}, {kw})"
        )
    kernel = jnp.zeros((kh, kw, channels, channels), dtype)
    return kernel.at[kh // 2, kw // 2].set(jnp.eye(channels, dtype=dtype))


def identity_batch_norm(mean: jax.Array, var: jax.Array, epsilon: float) -> dict[str, jax.Array]:
    """Returns BatchNorm variables that compute the identity in eval mode.

    ``(x - mean) / sqrt(var + eps) * scale + bias == x`` with ``scale = sqrt(var + eps)``
    and ``bias = mean``. In train mode the layer is the identity when the batch statistics
    equal ``mean`` and ``var``.

    Args:
      mean: ``(c,)`` running mean to store.
      var: ``(c,)`` running variance to store, ``>= 0``.
      epsilon: the BatchNorm layer's epsilon.

    Returns:
      ``{'scale', 'bias', 'mean', 'var'}``, each ``(c,)``.
    """
    mean, var = jnp.asarray(mean), jnp.asarray(var)
    if mean.shape != var.shape or mean.ndim != 1:
        raise ValueError(
            f"identity_batch_norm needs mean and var of one shape (c,), got {mean.shape} "
            f"and {var.shape}"
        )
    return {"scale": jnp.sqrt(var + epsilon), "bias": mean, "mean": mean, "var": var}
