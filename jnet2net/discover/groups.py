"""Union-find over group nodes and its resolution into :class:`~jnet2net.coupling.UnitGroup`s."""

from __future__ import annotations

from typing import NamedTuple

from jnet2net.coupling import Member, Path, UnitGroup
from jnet2net.variables import path_str


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
