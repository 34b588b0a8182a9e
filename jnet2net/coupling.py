"""Unit groups: every (variable path, axis, role) that indexes the same channels.

A *unit group* is the set of array axes that must change together when a layer's units are
replicated or dropped. Producers (a kernel's output axis, a bias, BatchNorm scale/bias/mean/var)
are gathered; consumers (the next kernels' input axes) are gathered and split among replicas.
A residual stream is one group spanning the stem, every block output, every shortcut and the
head's input.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

Path = tuple[str, ...]
Role = Literal["producer", "consumer"]


@dataclasses.dataclass(frozen=True)
class Member:
    """One axis of one variable that indexes a group's units.

    Attributes:
      path: full path in the variables dict, e.g. ``('params', 'stem', 'conv', 'kernel')``.
      axis: the unit axis of that array.
      role: ``'producer'`` (gathered) or ``'consumer'`` (gathered and split among replicas).
      flattened: the axis is a channels-last flatten ``(positions * units,)`` of a conv
        feature map (a Dense kernel after ``reshape``): units are at stride ``units``.
    """

    path: Path
    axis: int
    role: Role
    flattened: bool = False


@dataclasses.dataclass(frozen=True)
class UnitGroup:
    """Axes that share one set of units, and the architecture field that sizes them.

    Attributes:
      name: readable name, e.g. ``'stage1_stream'``.
      field: the module field and index holding the size, e.g. ``('stage_widths', 1)``,
        ``('stem_width', None)``; ``None`` for groups discovered from the computation
        (:func:`jnet2net.couplings`), whose sizes come from the variables.
      members: every axis indexed by the group's units.
      uniform_only: the computation averages over the units (e.g. LayerNorm): only uniform
        replication (every unit copied ``k`` times) keeps the function.
    """

    name: str
    field: tuple[str, int | None] | None
    members: tuple[Member, ...]
    uniform_only: bool = False


def layer_producers(
    layer: Path, *, kernel: str, norm: str | None, bias: bool = False
) -> tuple[Member, ...]:
    """Members of a layer that produce units: its kernel's last axis, bias and norm.

    Args:
      layer: path of the layer module inside ``params``, e.g. ``('stage0_block1',)``.
      kernel: name of the conv/dense sub-module whose kernel's last axis are the units
        (``''`` when ``layer`` itself is that module).
      norm: name of the BatchNorm sub-module after it, or ``None``.
      bias: whether the conv/dense has a bias.
    """
    owner = (*layer, kernel) if kernel else layer
    members = [Member(("params", *owner, "kernel"), -1, "producer")]
    if bias:
        members.append(Member(("params", *owner, "bias"), 0, "producer"))
    if norm is not None:
        members += [
            Member(("params", *layer, norm, "scale"), 0, "producer"),
            Member(("params", *layer, norm, "bias"), 0, "producer"),
            Member(("batch_stats", *layer, norm, "mean"), 0, "producer"),
            Member(("batch_stats", *layer, norm, "var"), 0, "producer"),
        ]
    return tuple(members)


def conv_consumer(layer: Path, kernel: str) -> Member:
    """The input-channel axis of a conv kernel ``(kh, kw, c_in, c_out)``."""
    return Member(("params", *layer, kernel, "kernel"), 2, "consumer")
