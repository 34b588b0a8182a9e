"""The tracer: evaluates a jaxpr on abstract values, dispatching each equation to its rule."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from jax.extend import core as jcore

from jnet2net.discover.arithmetic import _ArithmeticRules
from jnet2net.discover.contractions import _ContractionRules
from jnet2net.discover.shapes import _ShapeRules
from jnet2net.discover.values import (
    _CALLS,
    _CONSTANT,
    _REDUCTIONS,
    _WINDOWS,
    ELEMENTWISE,
    _Act,
    _Par,
    _State,
)


class _Tracer(_ShapeRules, _ArithmeticRules, _ContractionRules):
    """Follows unit axes through one jaxpr (and the jaxprs it calls)."""

    def run(self, jaxpr: Any, consts: Sequence[_State], args: Sequence[_State]) -> list[_State]:
        env: dict[Any, _State] = {}
        for var, state in zip(jaxpr.constvars, consts, strict=True):
            env[var] = state
        for var, state in zip(jaxpr.invars, args, strict=True):
            env[var] = state

        def read(atom: Any) -> _State:
            if isinstance(atom, jcore.Literal):
                return _CONSTANT
            return env[atom]

        for eqn in jaxpr.eqns:
            states = [read(v) for v in eqn.invars]
            outs = self.eqn(eqn, states)
            for var, state in zip(eqn.outvars, outs, strict=True):
                env[var] = state
        return [read(v) for v in jaxpr.outvars]

    def eqn(self, eqn: Any, states: list[_State]) -> list[_State]:
        name = eqn.primitive.name
        shapes = [tuple(getattr(v.aval, "shape", ())) for v in eqn.invars]
        out_shapes = [tuple(getattr(v.aval, "shape", ())) for v in eqn.outvars]
        if name in _CALLS:
            return self.call(eqn, states)
        if all(isinstance(s, _Par) for s in states):
            return self.params_only(eqn, states, shapes, out_shapes)
        if name in ELEMENTWISE:
            return [self.elementwise(eqn, states, shapes, out_shapes[0])]
        handler: Callable[..., list[_State]] | None = getattr(self, f"op_{name}", None)
        if handler is not None:
            return handler(eqn, states, shapes, out_shapes)
        if name in _REDUCTIONS or name in ("argmax", "argmin", "reduce_prod"):
            return [self.reduction(eqn, states[0], shapes[0], out_shapes[0])]
        if name in _WINDOWS:
            return self.window(eqn, states, shapes, out_shapes)
        if name in ("cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp"):
            return self.along_axis(eqn, states, eqn.params["axis"])
        acts = [s for s in states if isinstance(s, _Act)]
        if any(lab is not None for s in acts for lab in s.labels) or any(s.summed for s in acts):
            self.fail(eqn, states, "jnet2net does not know how this op treats units")
        return [_Act((None,) * len(shape)) for shape in out_shapes]

    def call(self, eqn: Any, states: list[_State]) -> list[_State]:
        sub = None
        for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
            if key in eqn.params:
                sub = eqn.params[key]
                break
        if sub is None:
            self.fail(eqn, states, "its sub-computation was not found")
        if isinstance(sub, jcore.ClosedJaxpr):
            consts = [_CONSTANT] * len(sub.jaxpr.constvars)
            sub = sub.jaxpr
        else:
            consts = [_CONSTANT] * len(sub.constvars)
        if len(sub.invars) != len(states):
            self.fail(eqn, states, "its sub-computation takes other arguments")
        return self.run(sub, consts, states)

    def params_only(self, eqn, states, shapes, out_shapes) -> list[_State]:
        """A value of variables and constants only: track which variable axes line up."""
        name = eqn.primitive.name
        if name in ELEMENTWISE:
            out_shape = out_shapes[0]
            sources = []
            for state, shape in zip(states, shapes, strict=True):
                if len(shape) != len(out_shape):
                    continue
                for path, axes in state.sources:
                    aligned = tuple(
                        a if s == o else None
                        for a, s, o in zip(axes, shape, out_shape, strict=True)
                    )
                    sources.append((path, aligned))
            return [_Par(tuple(dict.fromkeys(sources)))]
        if len(states) == 1 and len(out_shapes) == 1:
            mapped = self.structural(eqn, states[0], shapes[0], out_shapes[0])
            if mapped is not None:
                return [_Par(tuple((path, axes) for path, axes in mapped))]
        if name == "dot_general" and len(states) == 2:
            (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
            lhs_free = [d for d in range(len(shapes[0])) if d not in lc and d not in lb]
            rhs_free = [d for d in range(len(shapes[1])) if d not in rc and d not in rb]
            # output dimensions: batch, then the lhs's free ones, then the rhs's
            lhs_order = (*lb, *lhs_free)
            rhs_order = (*rb, *([None] * len(lhs_free)), *rhs_free)
            sources = []
            for state, order in ((states[0], lhs_order), (states[1], rhs_order)):
                for path, axes in state.sources:
                    out_axes = [None if d is None else axes[d] for d in order]
                    out_axes += [None] * (len(out_shapes[0]) - len(out_axes))
                    sources.append((path, tuple(out_axes)))
            return [_Par(tuple(sources))]
        return [_CONSTANT for _ in out_shapes]
