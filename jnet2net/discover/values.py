"""The abstract values a jaxpr is traced with, and the tables of primitives by kind.

An activation (:class:`_Act`) carries one unit label per dimension; a value of variables and
constants only (:class:`_Par`) carries, per variable it depends on, that variable's axis per
dimension.
"""

from __future__ import annotations

import dataclasses

from jnet2net.coupling import Path

# --- abstract values ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Label:
    """A unit axis of an activation: group ``node``; ``flat``: a channels-last flatten
    ``(positions * units,)`` with the units innermost."""

    node: int
    flat: bool = False


@dataclasses.dataclass(frozen=True)
class _Act:
    """A value computed from the input: one label (or ``None``) per dimension.

    ``summed``: the product of the reduced axes' sizes when the value is a sum over a unit
    axis not yet divided by that size (0 otherwise).
    """

    labels: tuple[_Label | None, ...]
    summed: int = 0


@dataclasses.dataclass(frozen=True)
class _Par:
    """A value computed from variables and constants only.

    ``sources``: per variable it depends on, its path and, per dimension of the value, the
    variable's axis there (``None`` where no single axis of it lines up).
    """

    sources: tuple[tuple[Path, tuple[int | None, ...]], ...] = ()


_State = _Act | _Par
_CONSTANT = _Par()

#: Why units contracted between two activations do not grow. A query/key unit ``d`` copied
#: ``c`` times adds ``q_d k_d`` to every logit ``c`` times; dividing the query's copies by
#: ``c`` would restore the sum, but the module recomputes its logit scale from the target's
#: size (``1 / sqrt(head_dim)``), an ordinary constant in the trace, so the logits would be
#: off by ``sqrt(new / old)``. Growing whole heads keeps ``head_dim`` and the scale.
CONTRACTED = (
    "its units are contracted between two activations (attention's q·k over head_dim): the "
    "logits sum over them and the module's logit scale depends on their number, so they do "
    "not grow (add whole heads instead)"
)

#: Ops applied entry by entry (operands broadcast only along size-1 axes).
ELEMENTWISE = frozenset(
    {
        "abs",
        "acos",
        "acosh",
        "add",
        "and",
        "asin",
        "asinh",
        "atan",
        "atan2",
        "atanh",
        "cbrt",
        "ceil",
        "clamp",
        "convert_element_type",
        "copy",
        "copy_p",
        "cos",
        "cosh",
        "digamma",
        "div",
        "eq",
        "erf",
        "erf_inv",
        "erfc",
        "exp",
        "exp2",
        "expm1",
        "floor",
        "ge",
        "gt",
        "imag",
        "integer_pow",
        "is_finite",
        "le",
        "lgamma",
        "log",
        "log1p",
        "logistic",
        "lt",
        "max",
        "min",
        "mul",
        "ne",
        "neg",
        "nextafter",
        "not",
        "or",
        "pow",
        "real",
        "reduce_precision",
        "rem",
        "round",
        "rsqrt",
        "select_n",
        "sign",
        "sin",
        "sinh",
        "sqrt",
        "square",
        "stop_gradient",
        "sub",
        "tan",
        "tanh",
        "xor",
    }
)
#: Ops that keep a not-yet-normalised unit sum what it is (a cast, a shape change).
_KEEPS_SUM = frozenset({"convert_element_type", "copy", "copy_p", "reduce_precision"})
_CALLS = frozenset(
    {
        "jit",
        "pjit",
        "closed_call",
        "core_call",
        "custom_jvp_call",
        "custom_vjp_call",
        "custom_vjp_call_jaxpr",
        "checkpoint",
        "remat",
        "remat2",
    }
)
_REDUCTIONS = frozenset({"reduce_sum", "reduce_max", "reduce_min", "reduce_and", "reduce_or"})
_WINDOWS = frozenset(
    {"reduce_window_max", "reduce_window_min", "reduce_window_sum", "reduce_window"}
)
