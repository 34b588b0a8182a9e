"""Rules for arithmetic: elementwise ops (bias, norms, residual adds), reductions, windows."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from jax.extend import core as jcore

from jnet2net.discover.base import _TracerBase
from jnet2net.discover.values import _KEEPS_SUM, _Act, _Par, _State


class _ArithmeticRules(_TracerBase):
    """Elementwise ops, reductions and pooling windows."""

    def elementwise(self, eqn, states, shapes, out_shape) -> _Act:
        name = eqn.primitive.name
        summed = [s.summed for s in states if isinstance(s, _Act) and s.summed]
        result_summed = 0
        if summed:
            first = states[0]
            if name in _KEEPS_SUM:
                result_summed = summed[0]
            elif (
                name in ("div", "mul")
                and len(states) == 2
                and isinstance(first, _Act)
                and first.summed
                and _is_normaliser(eqn.invars[1], first.summed, name)
            ):
                result_summed = 0  # a mean over the unit axis: replicas keep it
            else:
                self.fail(
                    eqn,
                    states,
                    "it uses a sum over a unit axis that is not divided by the axis size (e.g. "
                    "softmax over features): the sum counts replicas, so no widening keeps it",
                )
        labels = self.merge(eqn, states, shapes, out_shape)
        for state, shape in zip(states, shapes, strict=True):
            if isinstance(state, _Par) and len(shape) == len(out_shape):
                self.attach(state, labels, shape, out_shape)
        return _Act(labels, result_summed)

    def reduction(self, eqn, state: _State, shape, out_shape) -> _Act:
        axes = tuple(a % max(len(shape), 1) for a in eqn.params["axes"])
        unit_axes = [a for a in axes if state.labels[a] is not None]
        name = eqn.primitive.name
        summed = state.summed
        if unit_axes:
            if name in ("argmax", "argmin", "reduce_prod"):
                self.fail(eqn, [state], f"it reduces over the unit axis {unit_axes[0]}")
            if name == "reduce_sum":
                for a in unit_axes:
                    self.groups.uniform.add(state.labels[a].node)
                summed = math.prod(shape[a] for a in axes)
        labels = tuple(lab for i, lab in enumerate(state.labels) if i not in axes)
        return _Act(labels, summed)

    def window(self, eqn, states, shapes, out_shapes) -> list[_State]:
        state = states[0]
        params = eqn.params
        for dim, label in enumerate(state.labels):
            if label is None:
                continue
            if (
                params["window_dimensions"][dim] != 1
                or params["window_strides"][dim] != 1
                or tuple(params["padding"][dim]) != (0, 0)
            ):
                self.fail(eqn, states, f"its window spans the unit axis {dim}")
        return [_Act(state.labels)] + [_Act(state.labels) for _ in out_shapes[1:]]


def _is_normaliser(atom: Any, size: int, op: str) -> bool:
    """Whether ``atom`` is a constant scalar that turns a sum over ``size`` terms into a mean."""
    if not isinstance(atom, jcore.Literal):
        return False
    value = np.asarray(atom.val)
    if value.size != 1:
        return False
    value = float(value.reshape(()))
    want = size if op == "div" else 1.0 / size
    return math.isclose(value, want, rel_tol=1e-6)
