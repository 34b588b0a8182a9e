"""The tracer's shared state and helpers: the groups, error messages, merging operands."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jnet2net.coupling import Member
from jnet2net.discover.groups import _Groups
from jnet2net.discover.values import _Act, _Label, _Par, _State
from jnet2net.variables import path_str


class _TracerBase:
    """The groups found so far and the helpers every rule uses."""

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


def _where(eqn: Any) -> str:
    try:
        from jax._src import source_info_util

        return f" at {source_info_util.summarize(eqn.source_info)}"
    except Exception:  # the location is only a hint in a message
        return ""
