"""How the library's convolutions lower: pixel-wise matrix products for tiny maps on CPU.

XLA's CPU convolution runs 10-50x below its usual speed when the output map has a few
pixels (a 3x3 'SAME' convolution of a ``(128, 2, 2, 128)`` batch: ~15 GFLOP/s against
~190 at 4x4, the same FLOPs). A ResNet-18 on 16x16 images runs its last stage on 2x2 maps,
which then takes two thirds of a training step's time. :func:`conv_general_dilated` (what
every library model's convolution calls) computes such convolutions instead as one matrix
product per output pixel over its valid taps: the same sums, the same FLOPs (taps on the
zero padding are skipped, as XLA's cost analysis skips them), 8-18x faster for a forward
and backward pass. Everywhere else, and on other backends, it is
:func:`jax.lax.conv_general_dilated`.

Code that reads the traced program (unit discovery) runs under :func:`plain_convs`, where
every convolution traces as the ``conv_general_dilated`` primitive.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

#: Largest output map (in pixels) computed pixel-wise on CPU.
MAX_PIXELS = 4

_PLAIN = contextvars.ContextVar("jnet2net_plain_convs", default=False)
_NHWC = ("NHWC", "HWIO", "NHWC")


@contextlib.contextmanager
def plain_convs() -> Iterator[None]:
    """Within the block, :func:`conv_general_dilated` always traces as the lax primitive."""
    token = _PLAIN.set(True)
    try:
        yield
    finally:
        _PLAIN.reset(token)


def _explicit_pads(
    padding: str | Sequence[tuple[int, int]], spatial: Sequence[int], kernel: Sequence[int]
) -> tuple[tuple[int, int], ...]:
    if isinstance(padding, str):
        ones = (1,) * len(kernel)
        return tuple(lax.padtype_to_pads(tuple(spatial), tuple(kernel), ones, padding))
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def _is_nhwc(dimension_numbers: Any, lhs_shape: Sequence[int], rhs_shape: Sequence[int]) -> bool:
    if dimension_numbers is None:
        return False
    try:
        numbers = lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers)
    except (TypeError, ValueError):
        return False
    return numbers == lax.conv_dimension_numbers(lhs_shape, rhs_shape, _NHWC)


def pixelwise(
    lhs_shape: Sequence[int],
    rhs_shape: Sequence[int],
    window_strides: Sequence[int],
    pads: Sequence[tuple[int, int]],
    *,
    dimension_numbers: Any,
    dilated: bool = False,
    grouped: bool = False,
) -> bool:
    """Whether a convolution of these shapes is computed pixel-wise (see the module doc).

    Args:
      lhs_shape: ``(n, h, w, c_in)``.
      rhs_shape: ``(kh, kw, c_in, c_out)``.
      window_strides: ``(sh, sw)``.
      pads: ``((top, bottom), (left, right))``.
      dimension_numbers: as :func:`jax.lax.conv_general_dilated` takes them.
      dilated: an input or kernel dilation other than 1.
      grouped: a feature or batch group count other than 1.
    """
    if _PLAIN.get() or jax.default_backend() != "cpu" or dilated or grouped:
        return False
    if len(lhs_shape) != 4 or not _is_nhwc(dimension_numbers, lhs_shape, rhs_shape):
        return False
    if tuple(window_strides) != (1, 1) or math.prod(rhs_shape[:2]) == 1:
        return False
    out = [lhs_shape[1 + d] + sum(pads[d]) - rhs_shape[d] + 1 for d in range(2)]
    return min(out) >= 1 and math.prod(out) <= MAX_PIXELS


def pixelwise_conv(
    lhs: jax.Array,
    rhs: jax.Array,
    pads: Sequence[tuple[int, int]],
    *,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """A stride-1 NHWC/HWIO convolution as one matrix product per output pixel.

    Output pixel ``(y, x)`` is ``concat(lhs[:, r, c] over its valid taps) @ concat(rhs[i,
    j] over the same taps)`` with ``r = y - top + i``, ``c = x - left + j``; taps on the
    zero padding are left out (a pixel with none is zero).

    Args:
      lhs: ``(n, h, w, c_in)``.
      rhs: ``(kh, kw, c_in, c_out)``.
      pads: ``((top, bottom), (left, right))``.
      precision, preferred_element_type: passed to each matrix product.

    Returns:
      ``(n, h + top + bottom - kh + 1, w + left + right - kw + 1, c_out)``.
    """
    n, h, w, _ = lhs.shape
    kh, kw, _, c_out = rhs.shape
    (top, bottom), (left, right) = pads
    out_h, out_w = h + top + bottom - kh + 1, w + left + right - kw + 1
    dtype = preferred_element_type or jnp.result_type(lhs, rhs)
    rows = []
    for y in range(out_h):
        pixels = []
        for x in range(out_w):
            taps = [
                (i, j)
                for i in range(kh)
                for j in range(kw)
                if 0 <= y - top + i < h and 0 <= x - left + j < w
            ]
            if not taps:
                pixels.append(jnp.zeros((n, c_out), dtype))
                continue
            patch = jnp.concatenate([lhs[:, y - top + i, x - left + j] for i, j in taps], -1)
            kernel = jnp.concatenate([rhs[i, j] for i, j in taps], 0)
            pixels.append(
                jnp.matmul(patch, kernel, precision=precision, preferred_element_type=dtype)
            )
        rows.append(jnp.stack(pixels, 1))
    return jnp.stack(rows, 1)


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """:func:`jax.lax.conv_general_dilated`, computed pixel-wise where :func:`pixelwise` says."""
    dilated = any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
    grouped = feature_group_count != 1 or batch_group_count != 1
    if len(lhs.shape) == 4 and len(rhs.shape) == 4:
        pads = _explicit_pads(padding, lhs.shape[1:3], rhs.shape[:2])
        if pixelwise(
            lhs.shape,
            rhs.shape,
            window_strides,
            pads,
            dimension_numbers=dimension_numbers,
            dilated=dilated,
            grouped=grouped,
        ):
            return pixelwise_conv(
                lhs, rhs, pads, precision=precision, preferred_element_type=preferred_element_type
            )
    return lax.conv_general_dilated(
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
