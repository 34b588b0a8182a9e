"""Rules for shape ops: transposes, broadcasts, reshapes (channels-last flattens), pads,
concatenations, slices and scans carry unit axes along or refuse."""

from __future__ import annotations

from jnet2net.discover.base import _TracerBase
from jnet2net.discover.values import _REDUCTIONS, _Act, _Label, _Par, _State


class _ShapeRules(_TracerBase):
    """Shape ops, for activations and (:meth:`structural`) parameter values alike."""

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

    def along_axis(self, eqn, states, axis: int) -> list[_State]:
        state = states[0]
        if state.labels[axis] is not None:
            self.fail(eqn, states, f"it runs along the unit axis {axis}")
        return [_Act(state.labels)]


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
