"""Unit groups discovered from a module's computation, so any linen module can grow.

:func:`couplings` traces ``model.apply(variables, x, ...)`` to a jaxpr whose inputs are the
flattened variables (each input is a known path) and follows *unit axes* through it:

* ``conv_general_dilated`` and ``dot_general`` with a parameter kernel make a new group (the
  kernel's output features are its *producer* axis) and consume the input's group (the
  kernel's input features are a *consumer* axis, ``flattened`` when the input was a
  channels-last flatten of a feature map);
* elementwise ops with a parameter operand (bias add, BatchNorm scale/bias/mean/var, in eval
  and in train mode, where the running averages are updated) attach that parameter's axis to
  the group as a producer;
* elementwise ops of two activations (a residual add) merge their groups;
* a lookup in a variable (``nn.Embed``'s gather) makes a new group from the table's kept
  axis;
* reshapes, transposes, broadcasts, slices, pools and reductions over other axes carry unit
  axes along; a max over units keeps them exact under any replication; a sum over a unit
  axis (LayerNorm's mean) marks the group ``uniform_only`` and must be normalised by the
  axis size (a mean) before it is used, so a softmax over features is refused (its sum
  counts replicas, which no widening undoes);
* a contraction of two activations (attention) keeps their shared batch axes and fixes
  the contracted ones (see :data:`CONTRACTED`): in ``einsum('nqhd,nkhd->nhqk', q, k)`` the
  heads axis ``h`` merges the query, key and value heads into one group whose units are
  whole heads (a copied head has the same logits, softmax and output; ``out``'s rows of it
  are divided among the copies), while ``d`` (query/key ``head_dim``) cannot grow; the
  value width (``v``'s ``head_dim``, consumed by the out projection only) is an ordinary
  group;
* ``jit``/``closed_call``/``custom_jvp_call``/``custom_vjp_call``/``checkpoint`` (remat)
  are followed into their sub-jaxprs.

Anything else that touches a unit axis raises a ``ValueError`` naming the primitive and the
parameters involved. Units that reach the network's output (the logits), are added to a
non-unit axis (e.g. the raw input) or are contracted between two activations cannot grow:
:func:`couplings` leaves their groups out; :func:`discover` lists them with the reason.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax
import flax.linen as nn
import jax
import numpy as np
from jax.extend import core as jcore

from jnet2net.coupling import Member, Path, UnitGroup
from jnet2net.variables import Variables, flatten, path_str

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


class _Groups:
    """Union-find over group nodes, with their sizes, producers and members."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.origin: list[Path | None] = []
        self.members: list[list[Member]] = []
        self.uniform: set[int] = set()
        self.pinned: dict[int, str] = {}

    def new(self, size: int, origin: Path | None) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        self.origin.append(origin)
        self.members.append([])
        return len(self.parent) - 1

    def find(self, node: int) -> int:
        while self.parent[node] != node:
            self.parent[node] = self.parent[self.parent[node]]
            node = self.parent[node]
        return node

    def union(self, a: int, b: int) -> int:
        a, b = self.find(a), self.find(b)
        if a != b:
            a, b = min(a, b), max(a, b)  # the older node names the group
            self.parent[b] = a
        return a

    def add(self, node: int, member: Member) -> None:
        self.members[node].append(member)

    def name(self, node: int) -> str:
        """The readable name of ``node``'s group: its first producer's layer path."""
        root = self.find(node)
        nodes = [n for n in range(len(self.parent)) if self.find(n) == root]
        for n in nodes:
            if self.origin[n] is not None:
                return _layer_name(self.origin[n])
        return f"group{root}"


def _layer_name(path: Path) -> str:
    """``('params', 'block0', 'conv', 'kernel')`` -> ``'block0/conv'``."""
    inner = path[1:-1] if len(path) > 2 else path
    return "/".join(inner) or path_str(path)


class _Tracer:
    """Follows unit axes through one jaxpr (and the jaxprs it calls)."""

    def __init__(self) -> None:
        self.groups = _Groups()

    # -- helpers ---------------------------------------------------------------------

    def fail(self, eqn: Any, states: Sequence[_State], why: str) -> None:
        involved = []
        for state in states:
            if isinstance(state, _Act):
                involved += [
                    f"units of {self.groups.name(lab.node)}" for lab in state.labels if lab
                ]
            else:
                involved += [path_str(path) for path, _ in state.sources]
        where = _where(eqn)
        raise ValueError(
            f"cannot grow through {eqn.primitive.name}{where}: {why} "
            f"(involves {', '.join(dict.fromkeys(involved)) or 'no parameters'})"
        )

    def attach(
        self,
        par: _Par,
        labels: tuple[_Label | None, ...],
        shape: tuple[int, ...],
        out_shape: tuple[int, ...],
    ) -> None:
        """Makes every axis of ``par`` (of ``shape``) that lines up with a unit axis of the
        result (of ``out_shape``, not broadcast) a producer member."""
        for path, axes in par.sources:
            if len(axes) != len(labels):
                continue
            for dim, (axis, label) in enumerate(zip(axes, labels, strict=True)):
                if label is not None and axis is not None and shape[dim] == out_shape[dim]:
                    self.groups.add(label.node, Member(path, axis, "producer", label.flat))

    def merge(self, eqn: Any, states, shapes, out_shape) -> tuple[_Label | None, ...]:
        """Per output dimension, the one label that all full-size activation operands share
        (their groups are merged; a group added to a non-unit axis is pinned)."""
        labels: list[_Label | None] = []
        for dim, size in enumerate(out_shape):
            found: list[_Label | None] = []
            for state, shape in zip(states, shapes, strict=True):
                if isinstance(state, _Act) and len(shape) == len(out_shape):
                    if shape[dim] == size:
                        found.append(state.labels[dim])
                    elif state.labels[dim] is not None:
                        self.groups.pinned[state.labels[dim].node] = "broadcast"
            real = [lab for lab in found if lab is not None]
            if not real:
                labels.append(None if found else self.pending(states, shapes, out_shape, dim))
                continue
            if len({lab.flat for lab in real}) > 1:
                self.fail(eqn, states, "it combines a flattened feature map with plain units")
            node = real[0].node
            for lab in real[1:]:
                node = self.groups.union(node, lab.node)
            if len(real) < len(found) and size > 1:
                self.groups.pinned[node] = (
                    f"{eqn.primitive.name} combines its units with an axis that is not a unit "
                    "axis (e.g. the input)"
                )
            labels.append(_Label(node, real[0].flat))
        return tuple(labels)

    def pending(self, states, shapes, out_shape, dim: int) -> _Label | None:
        """A label for a dimension that every activation operand broadcasts along but a
        variable spans (LayerNorm's ``rsqrt(var) * scale``): a group with no producer yet,
        which joins the units it later meets."""
        for state, shape in zip(states, shapes, strict=True):
            if (
                isinstance(state, _Par)
                and len(shape) == len(out_shape)
                and shape[dim] == out_shape[dim]
                and any(axes[dim] is not None for _, axes in state.sources)
            ):
                return _Label(self.groups.new(out_shape[dim], None))
        return None

    # -- evaluation ------------------------------------------------------------------

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

    # -- shape ops (activations and parameters alike) --------------------------------

    def structural(self, eqn, state, shape, out_shape):
        """For a parameter value: its sources' axes after a shape op (``None`` when the op
        is not a shape op)."""
        name = eqn.primitive.name
        if name == "transpose":
            perm = eqn.params["permutation"]
            return [(p, tuple(axes[i] for i in perm)) for p, axes in state.sources]
        if name == "broadcast_in_dim":
            dims = eqn.params["broadcast_dimensions"]
            out = []
            for p, axes in state.sources:
                new: list[int | None] = [None] * len(out_shape)
                for i, d in enumerate(dims):
                    if shape[i] == out_shape[d]:
                        new[d] = axes[i]
                out.append((p, tuple(new)))
            return out
        if name == "squeeze":
            dims = {d % len(shape) for d in eqn.params["dimensions"]}
            return [
                (p, tuple(a for i, a in enumerate(axes) if i not in dims))
                for p, axes in state.sources
            ]
        if name == "reshape":
            blocks = _reshape_blocks(shape, out_shape)
            out = []
            for p, axes in state.sources:
                new = [None] * len(out_shape)
                for old_dims, new_dims in blocks:
                    big_old = [i for i in old_dims if shape[i] != 1]
                    big_new = [j for j in new_dims if out_shape[j] != 1]
                    if len(old_dims) == 1 and new_dims and len(big_new) <= 1:
                        new[big_new[0] if big_new else new_dims[-1]] = axes[old_dims[0]]
                    elif len(big_old) == 1 and len(big_new) == 1:
                        new[big_new[0]] = axes[big_old[0]]
                out.append((p, tuple(new)))
            return out
        if name in _REDUCTIONS or name in ("argmax", "argmin", "reduce_prod"):
            reduced = set(eqn.params["axes"])
            return [
                (p, tuple(a for i, a in enumerate(axes) if i not in reduced))
                for p, axes in state.sources
            ]
        return None

    def op_transpose(self, eqn, states, shapes, out_shapes):
        (state,) = states
        perm = eqn.params["permutation"]
        return [_Act(tuple(state.labels[i] for i in perm), state.summed)]

    def op_broadcast_in_dim(self, eqn, states, shapes, out_shapes):
        state, shape, out_shape = states[0], shapes[0], out_shapes[0]
        labels: list[_Label | None] = [None] * len(out_shape)
        for i, d in enumerate(eqn.params["broadcast_dimensions"]):
            if shape[i] == out_shape[d]:
                labels[d] = state.labels[i]
            elif state.labels[i] is not None:
                self.groups.pinned[state.labels[i].node] = "a one-unit group is broadcast"
        return [_Act(tuple(labels), state.summed)]

    def op_squeeze(self, eqn, states, shapes, out_shapes):
        state, shape = states[0], shapes[0]
        dims = {d % len(shape) for d in eqn.params["dimensions"]}
        for d in dims:
            if state.labels[d] is not None:
                self.groups.pinned[state.labels[d].node] = "a one-unit axis is squeezed away"
        return [
            _Act(tuple(lab for i, lab in enumerate(state.labels) if i not in dims), state.summed)
        ]

    def op_reshape(self, eqn, states, shapes, out_shapes):
        state, shape, out_shape = states[0], shapes[0], out_shapes[0]
        labels: list[_Label | None] = [None] * len(out_shape)
        for old_dims, new_dims in _reshape_blocks(shape, out_shape):
            labelled = [i for i in old_dims if state.labels[i] is not None]
            if not labelled:
                continue
            if len(labelled) > 1:
                self.fail(eqn, states, f"reshape {shape} -> {out_shape} merges two unit axes")
            i = labelled[0]
            label = state.labels[i]
            if not new_dims:
                self.groups.pinned[label.node] = "a one-unit axis is reshaped away"
                continue
            others = [d for d in old_dims if d != i and shape[d] != 1]
            big_new = [d for d in new_dims if out_shape[d] != 1]
            if not others and len(big_new) <= 1:  # the unit axis, with size-1 axes around it
                labels[big_new[0] if big_new else new_dims[-1]] = label
            elif (
                not others
                and label.flat
                and out_shape[big_new[-1]] == self.groups.size[label.node]
                and all(out_shape[d] == 1 for d in new_dims if d > big_new[-1])
            ):
                labels[big_new[-1]] = _Label(label.node)  # unflatten: units innermost
            elif others and len(big_new) == 1 and all(shape[d] == 1 for d in old_dims if d > i):
                labels[big_new[0]] = _Label(label.node, True)  # channels-last flatten
            else:
                self.fail(
                    eqn,
                    states,
                    f"reshape {shape} -> {out_shape} mixes the unit axis {i} with other axes "
                    "(only a channels-last flatten, units innermost, can grow)",
                )
        return [_Act(tuple(labels), state.summed)]

    def op_pad(self, eqn, states, shapes, out_shapes):
        state = states[0]
        for dim, (lo, hi, interior) in enumerate(eqn.params["padding_config"]):
            if state.labels[dim] is not None and (lo, hi, interior) != (0, 0, 0):
                self.fail(eqn, states, f"it pads the unit axis {dim}")
        return [_Act(state.labels, state.summed)]

    def op_concatenate(self, eqn, states, shapes, out_shapes):
        dim = eqn.params["dimension"]
        labels = list(self.merge(eqn, states, shapes, out_shapes[0]))
        for state in states:
            if isinstance(state, _Act) and state.labels[dim] is not None:
                self.fail(eqn, states, f"it concatenates along the unit axis {dim}")
        for state, shape in zip(states, shapes, strict=True):
            if isinstance(state, _Par):
                self.attach(state, tuple(labels), shape, out_shapes[0])
        return [_Act(tuple(labels))]

    def op_slice(self, eqn, states, shapes, out_shapes):
        """``x[..., a:b]``: units pass on axes taken whole."""
        return self.sliced(eqn, states, shapes[0], out_shapes[0])

    def op_dynamic_slice(self, eqn, states, shapes, out_shapes):
        return self.sliced(eqn, states, shapes[0], out_shapes[0])

    def sliced(self, eqn, states, shape, out_shape) -> list[_State]:
        state = states[0]
        if not isinstance(state, _Act):
            self.fail(eqn, states, "it slices a variable by an activation")
        for dim, label in enumerate(state.labels):
            if label is not None and shape[dim] != out_shape[dim]:
                self.fail(eqn, states, f"it takes part of the unit axis {dim}")
        return [_Act(state.labels, state.summed)]

    def op_gather(self, eqn, states, shapes, out_shapes):
        """A lookup in a variable (``nn.Embed``): the table's kept axes make new groups."""
        operand, _ = states
        numbers = eqn.params["dimension_numbers"]
        sizes = eqn.params["slice_sizes"]
        out_shape = out_shapes[0]
        dropped = (*numbers.collapsed_slice_dims, *getattr(numbers, "operand_batching_dims", ()))
        kept = [d for d in range(len(shapes[0])) if d not in dropped]
        if isinstance(operand, _Act):
            for d in kept:
                label = operand.labels[d]
                if label is not None and sizes[d] != shapes[0][d]:
                    self.fail(eqn, states, f"it takes part of the unit axis {d}")
            if any(operand.labels[d] is not None for d in dropped):
                self.fail(eqn, states, "it picks single units")
            labels: list[_Label | None] = [None] * len(out_shape)
            for d, out_dim in zip(kept, numbers.offset_dims, strict=True):
                labels[out_dim] = operand.labels[d]
            return [_Act(tuple(labels))]
        labels = [None] * len(out_shape)
        for d, out_dim in zip(kept, numbers.offset_dims, strict=True):
            if sizes[d] == shapes[0][d] and any(a[d] is not None for _, a in operand.sources):
                labels[out_dim] = self._produce(eqn, states, operand, d, shapes[0])
        return [_Act(tuple(labels))]

    def along_axis(self, eqn, states, axis: int) -> list[_State]:
        state = states[0]
        if state.labels[axis] is not None:
            self.fail(eqn, states, f"it runs along the unit axis {axis}")
        return [_Act(state.labels)]

    # -- arithmetic --------------------------------------------------------------------

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

    def op_conv_general_dilated(self, eqn, states, shapes, out_shapes):
        lhs, rhs = states
        if not isinstance(lhs, _Act) or not isinstance(rhs, _Par):
            self.fail(eqn, states, "only convolutions of an activation by a parameter kernel grow")
        numbers = eqn.params["dimension_numbers"]
        lhs_spec, rhs_spec, out_spec = numbers.lhs_spec, numbers.rhs_spec, numbers.out_spec
        for dim in (lhs_spec[0], *lhs_spec[2:]):
            if lhs.labels[dim] is not None:
                self.fail(eqn, states, f"units on the batch/spatial axis {dim} of its input")
        label = lhs.labels[lhs_spec[1]]
        if label is not None:
            if eqn.params["feature_group_count"] != 1 or eqn.params["batch_group_count"] != 1:
                self.fail(eqn, states, "a grouped (e.g. depthwise) convolution mixes units")
            if label.flat:
                self.fail(eqn, states, "its input channels are a flattened feature map")
            self._consume(eqn, states, rhs, rhs_spec[1], label)
        out_labels: list[_Label | None] = [None] * len(out_shapes[0])
        out_labels[out_spec[1]] = self._produce(eqn, states, rhs, rhs_spec[0], shapes[1])
        return [_Act(tuple(out_labels))]

    def _consume(self, eqn, states, kernel: _Par, dim: int, label: _Label) -> None:
        found = False
        for path, axes in kernel.sources:
            if axes[dim] is not None:
                self.groups.add(label.node, Member(path, axes[dim], "consumer", label.flat))
                found = True
        if not found:
            self.fail(eqn, states, "its kernel's input axis is not an axis of one variable")

    def _produce(self, eqn, states, kernel: _Par, dim: int, shape) -> _Label:
        owners = [(path, axes[dim]) for path, axes in kernel.sources if axes[dim] is not None]
        node = self.groups.new(shape[dim], owners[0][0] if owners else None)
        if not owners:
            self.groups.pinned[node] = "its producer is not a variable"
        for path, axis in owners:
            self.groups.add(node, Member(path, axis, "producer"))
        return _Label(node)

    def contracted(self, a: _Label | None, b: _Label | None) -> None:
        """Two activations summed against each other over these unit axes (attention's
        ``q·k`` over ``head_dim``): one group, which cannot grow (:data:`CONTRACTED`)."""
        real = [label for label in (a, b) if label is not None]
        if real:
            node = real[0].node
            for label in real[1:]:
                node = self.groups.union(node, label.node)
            self.groups.pinned[node] = CONTRACTED

    def op_dot_general(self, eqn, states, shapes, out_shapes):
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        lhs, rhs = states
        lhs_free = [d for d in range(len(shapes[0])) if d not in lc and d not in lb]
        rhs_free = [d for d in range(len(shapes[1])) if d not in rc and d not in rb]
        out: list[_Label | None] = []
        if isinstance(lhs, _Act) and isinstance(rhs, _Act):
            for a, b in zip(lc, rc, strict=True):
                self.contracted(lhs.labels[a], rhs.labels[b])
            for a, b in zip(lb, rb, strict=True):
                la, lb_ = lhs.labels[a], rhs.labels[b]
                if la is not None and lb_ is not None:
                    out.append(_Label(self.groups.union(la.node, lb_.node), la.flat))
                else:
                    out.append(la or lb_)
            out += [lhs.labels[d] for d in lhs_free]
            out += [rhs.labels[d] for d in rhs_free]
            return [_Act(tuple(out))]
        act_is_lhs = isinstance(lhs, _Act)
        act, kernel = (lhs, rhs) if act_is_lhs else (rhs, lhs)
        act_c, ker_c = (lc, rc) if act_is_lhs else (rc, lc)
        act_b, ker_b = (lb, rb) if act_is_lhs else (rb, lb)
        if act.summed:
            self.fail(eqn, states, "it consumes a sum over a unit axis")
        for a, k in zip(act_c, ker_c, strict=True):
            label = act.labels[a]
            if label is not None:
                self._consume(eqn, states, kernel, k, label)
        for a, k in zip(act_b, ker_b, strict=True):
            label = act.labels[a]
            if label is not None:
                for path, axes in kernel.sources:
                    if axes[k] is not None:
                        self.groups.add(label.node, Member(path, axes[k], "producer"))
            out.append(label)
        ker_shape = shapes[1] if act_is_lhs else shapes[0]
        free_act = [act.labels[d] for d in (lhs_free if act_is_lhs else rhs_free)]
        free_ker = [
            self._produce(eqn, states, kernel, d, ker_shape)
            for d in (rhs_free if act_is_lhs else lhs_free)
        ]
        out += free_act + free_ker if act_is_lhs else free_ker + free_act
        return [_Act(tuple(out))]


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


def _where(eqn: Any) -> str:
    try:
        from jax._src import source_info_util

        return f" at {source_info_util.summarize(eqn.source_info)}"
    except Exception:  # the location is only a hint in a message
        return ""


def _reshape_blocks(old: tuple[int, ...], new: tuple[int, ...]) -> list[tuple[list, list]]:
    """Splits a reshape into blocks of old and new dimensions with equal products."""
    blocks: list[tuple[list, list]] = []
    i = j = 0
    while i < len(old) or j < len(new):
        if i < len(old) and j < len(new) and old[i] == new[j]:
            blocks.append(([i], [j]))
            i, j = i + 1, j + 1
            continue
        old_dims, new_dims = [], []
        p_old = p_new = 1
        if i < len(old):
            old_dims.append(i)
            p_old = old[i]
            i += 1
        if j < len(new):
            new_dims.append(j)
            p_new = new[j]
            j += 1
        while p_old != p_new:
            if p_old < p_new and i < len(old):
                old_dims.append(i)
                p_old *= old[i]
                i += 1
            elif j < len(new):
                new_dims.append(j)
                p_new *= new[j]
                j += 1
            elif i < len(old):
                old_dims.append(i)
                p_old *= old[i]
                i += 1
            else:
                break
        blocks.append((old_dims, new_dims))
    merged: list[tuple[list, list]] = []
    for old_dims, new_dims in blocks:  # lone size-1 axes join the block before them
        if merged and (not old_dims or not new_dims):
            merged[-1] = (merged[-1][0] + old_dims, merged[-1][1] + new_dims)
        else:
            merged.append((old_dims, new_dims))
    return merged


# --- public API ---------------------------------------------------------------------


def couplings(
    model: nn.Module, variables: Variables, example_input: Any, **apply_kwargs: Any
) -> tuple[UnitGroup, ...]:
    """Unit groups of ``model`` discovered from its computation on ``example_input``.

    Args:
      model: any flax linen module.
      variables: its variables, e.g. ``{'params': ..., 'batch_stats': ...}``; only shapes
        and dtypes are read.
      example_input: an input ``model.apply`` takes (any pytree of arrays, e.g. a batch
        ``(n, h, w, c)`` or ``(n, features)``); only its shapes and dtypes are read.
      **apply_kwargs: passed to ``model.apply`` (e.g. ``train=True,
        mutable=['batch_stats']``: then running statistics are found through their update).

    Returns:
      One :class:`UnitGroup` per set of units that can grow (``field=None``; sizes come
      from the variables), in the order their producers run. Groups whose units reach the
      output, meet a non-unit axis or are contracted between two activations (attention's
      query/key width) are left out: they cannot grow (:func:`discover` says why).

    Raises:
      ValueError: ``model.apply`` fails on these arguments, or an op mixes units in a way
        that cannot be grown (naming the op and the parameters involved).
    """
    return discover(model, variables, example_input, **apply_kwargs).groups


class Discovery(NamedTuple):
    """What :func:`discover` found.

    Attributes:
      groups: the groups that can grow (:func:`couplings`'s result).
      fixed: ``(group, reason)`` per group of units that cannot grow (they reach the
        output, meet a non-unit axis, or are contracted between two activations), with the
        first reason found.
    """

    groups: tuple[UnitGroup, ...]
    fixed: tuple[tuple[UnitGroup, str], ...]


def discover(
    model: nn.Module, variables: Variables, example_input: Any, **apply_kwargs: Any
) -> Discovery:
    """:func:`couplings` (same arguments and errors), with the fixed groups and why."""
    closed, paths, n_out = _trace(model, variables, example_input, apply_kwargs)
    tracer = _Tracer()
    n_leaves = len(paths)
    args: list[_State] = [
        _Par(((path, tuple(range(len(var.aval.shape)))),))
        for path, var in zip(paths, closed.jaxpr.invars, strict=False)
    ]
    args += [_Act((None,) * len(v.aval.shape)) for v in closed.jaxpr.invars[n_leaves:]]
    consts = [_CONSTANT] * len(closed.jaxpr.constvars)
    outs = tracer.run(closed.jaxpr, consts, args)
    groups = tracer.groups
    for state in outs[:n_out]:
        if isinstance(state, _Act):
            for label in state.labels:
                if label is not None:
                    groups.pinned[label.node] = "its units are outputs of the network"
    return _collect(groups)


def _trace(model: nn.Module, variables: Variables, example_input: Any, apply_kwargs: dict):
    """``(closed jaxpr, variable paths, number of model outputs)`` of ``model.apply``."""
    flat = flatten(variables)
    paths = list(flat)
    specs = [jax.ShapeDtypeStruct(np.shape(leaf), _dtype(leaf)) for leaf in flat.values()]
    input_specs = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(np.shape(a), _dtype(a)), example_input
    )
    n_out: list[int] = []
    mutable = apply_kwargs.get("mutable", False)

    def forward(leaves, inputs):
        tree = _unflatten(dict(zip(paths, leaves, strict=True)), variables)
        out = model.apply(tree, inputs, **apply_kwargs)
        main = out[0] if mutable else out
        n_out.append(len(jax.tree.leaves(main)))
        return out

    try:
        closed = jax.make_jaxpr(forward)(specs, input_specs)
    except (flax.errors.FlaxError, TypeError, ValueError, IndexError, KeyError) as err:
        shapes = jax.tree.map(np.shape, example_input)
        raise ValueError(
            f"{type(model).__name__}.apply does not run on example_input {shapes} with these "
            f"variables and {apply_kwargs}: {err}"
        ) from None
    return closed, paths, n_out[-1]


def first_use_order(
    model: nn.Module, variables: Variables, example_input: Any, **apply_kwargs: Any
) -> list[Path]:
    """Variable paths in the order ``model.apply`` first reads them (unread ones left out)."""
    closed, paths, _ = _trace(model, variables, example_input, apply_kwargs)
    index = {var: i for i, var in enumerate(closed.jaxpr.invars[: len(paths)])}
    order: dict[Path, None] = {}
    for eqn in closed.jaxpr.eqns:
        for atom in eqn.invars:
            if not isinstance(atom, jcore.Literal) and atom in index:
                order.setdefault(paths[index[atom]], None)
    return list(order)


def _dtype(leaf: Any) -> Any:
    dtype = getattr(leaf, "dtype", None)
    return np.result_type(leaf) if dtype is None else dtype


def _unflatten(flat: dict, like: Variables) -> Variables:
    from jnet2net.variables import unflatten_like

    return unflatten_like(flat, like)


def _collect(groups: _Groups) -> Discovery:
    """Resolves the union-find into unit groups (shared variable axes merge groups)."""
    owner: dict[tuple[Path, int], int] = {}
    for node, members in enumerate(groups.members):
        for member in members:
            key = (member.path, member.axis)
            if key in owner:
                groups.union(owner[key], node)
            else:
                owner[key] = node
    by_root: dict[int, list[Member]] = {}
    for node in range(len(groups.parent)):
        by_root.setdefault(groups.find(node), []).extend(groups.members[node])
    pinned: dict[int, str] = {}
    for node, reason in sorted(groups.pinned.items()):
        pinned.setdefault(groups.find(node), reason)
    uniform = {groups.find(n) for n in groups.uniform}
    result, fixed = [], []
    names: set[str] = set()
    producing = {groups.find(n) for n, origin in enumerate(groups.origin) if origin is not None}
    for root, members in by_root.items():
        if root not in producing or not members:
            continue  # no layer makes these units
        unique = list(dict.fromkeys(members))
        if root in pinned:
            fixed.append((root, unique))
            continue
        roles: dict[tuple[Path, int], Member] = {}
        for member in unique:
            other = roles.setdefault((member.path, member.axis), member)
            if other.role != member.role or other.flattened != member.flattened:
                raise ValueError(
                    f"{path_str(member.path)} axis {member.axis} is both a {other.role} and a "
                    f"{member.role} of the units of {groups.name(root)} (a tied weight?): "
                    "these units cannot grow"
                )
        name = _unique_name(groups.name(root), names)
        result.append(UnitGroup(name, None, tuple(unique), uniform_only=root in uniform))
    named_fixed = tuple(  # named after the growable groups, whose names stay as they were
        (UnitGroup(_unique_name(groups.name(root), names), None, tuple(unique)), pinned[root])
        for root, unique in fixed
    )
    return Discovery(tuple(result), named_fixed)


def _unique_name(base: str, names: set[str]) -> str:
    """``base``, or ``base_2``, ``base_3``, ... when taken; added to ``names``."""
    name, suffix = base, 1
    while name in names:
        suffix += 1
        name = f"{base}_{suffix}"
    names.add(name)
    return name
