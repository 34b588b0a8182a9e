"""Pieces shared by the model families."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jnet2net.models.lowering import conv_general_dilated

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def compute_dtype(model: nn.Module) -> jnp.dtype:
    """The dtype ``model`` computes in: its ``dtype`` field, float32 without one (or ``None``)."""
    dtype = getattr(model, "dtype", None)
    return jnp.dtype(jnp.float32 if dtype is None else dtype)


def batch_norm(train: bool, dtype: Any, name: str, **kwargs: Any) -> nn.BatchNorm:
    """Returns the BatchNorm layer every model uses (momentum 0.9, epsilon 1e-5)."""
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
        **kwargs,
    )


def conv(features: int, kernel_size: int, dtype: Any, name: str, **kwargs: Any) -> nn.Conv:
    """Returns a bias-free 'SAME' conv with He (fan-out) initialisation.

    It lowers through :func:`~jnet2net.models.lowering.conv_general_dilated` (tiny maps
    as matrix products on CPU, the same function).
    """
    kwargs.setdefault("use_bias", False)
    return nn.Conv(
        features,
        (kernel_size, kernel_size),
        padding="SAME",
        kernel_init=conv_init,
        dtype=dtype,
        param_dtype=jnp.float32,
        conv_general_dilated=conv_general_dilated,
        name=name,
        **kwargs,
    )


def check_sizes(name: str, values: tuple[int, ...], length: int | None = None) -> None:
    """Raises a clear error unless ``values`` is a tuple of positive ints (of ``length``)."""
    if not isinstance(values, tuple):
        raise TypeError(f"{name} must be a tuple of ints, got {values!r}")
    if length is not None and len(values) != length:
        raise ValueError(f"{name} must have {length} entries, got {len(values)}: {values}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must hold ints, got {values!r}")
        if v <= 0:
            raise ValueError(f"{name} must be positive, got {values}")


@functools.cache
def dtype_name(dtype: Any) -> str:
    """Returns a serialisable name for a dtype (``'float32'``, ``'bfloat16'``)."""
    return jnp.dtype(dtype).name
