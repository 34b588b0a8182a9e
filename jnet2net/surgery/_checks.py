"""Argument checks shared by the surgery ops."""

from __future__ import annotations

import numbers


def check_positive(name: str, value: object) -> None:
    """Raises TypeError unless ``value`` is an int, ValueError unless it is positive."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")


def kernel_pair(kernel_size: object) -> tuple[int, int]:
    """Returns ``(kh, kw)`` from one positive int or a pair of them."""
    if isinstance(kernel_size, (tuple, list)):
        if len(kernel_size) != 2:
            raise ValueError(f"kernel_size must be an int or (kh, kw), got {kernel_size!r}")
        kh, kw = kernel_size
    else:
        kh = kw = kernel_size
    check_positive("kernel height", kh)
    check_positive("kernel width", kw)
    return kh, kw


def normalize_axis(axis: int, ndim: int, what: str) -> int:
    """Returns ``axis`` as a non-negative index into an array of rank ``ndim``."""
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for {what} of rank {ndim}")
    return axis % ndim
