"""Argument checks shared by the surgery ops."""

from __future__ import annotations

import numbers


def check_positive(name: str, value: object) -> None:
    """Raises TypeError unless ``value`` is an int, ValueError unless it is positive."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")


def normalize_axis(axis: int, ndim: int, what: str) -> int:
    """Returns ``axis`` as a non-negative index into an array of rank ``ndim``."""
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for {what} of rank {ndim}")
    return axis % ndim
