"""Rules for ops whose parameters make and consume groups: convolutions, ``dot_general``
(dense layers, and attention's contractions of two activations) and lookups (``nn.Embed``)."""

from __future__ import annotations

from jnet2net.coupling import Member
from jnet2net.discover.base import _TracerBase
from jnet2net.discover.values import CONTRACTED, _Act, _Label, _Par


class _ContractionRules(_TracerBase):
    """Producers and consumers of unit groups."""

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
