"""Growth of any linen module to a larger target module, by discovered unit groups.

``widen(model, variables, key=..., target=wider, example_input=x)`` (see
:func:`jnet2net.widen`) lands here: the unit groups come from :func:`jnet2net.couplings`,
each group's new size from comparing ``jax.eval_shape(target.init, ...)`` with the old
variables along the group's axes, and the variables are built by the same kind of plan that
grows the presets (a :class:`~jnet2net.engine.GrowthPlan` of replica or fresh steps).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from jnet2net.coupling import Path, UnitGroup
from jnet2net.deepen_any import branch_output_rules, deepen_to_target
from jnet2net.discover import discover
from jnet2net.engine import GrowthPlan, widening
from jnet2net.engine.exactness import (  # re-exported: their home before the engine
    EXACT_RTOL,
    abstract_init,
    init_kwargs,
    relative_error,
    traced,
)
from jnet2net.engine.layers import (  # re-exported: their home before the engine
    INITIALISERS,
    NORM_EPSILON,
    PLAIN_RULES,
    Initialiser,
    Rule,
    by_rules,
    check_rules,
    zero_last_rules,
)
from jnet2net.variables import FlatVariables, Variables, flatten, path_str

__all__ = [
    "EXACT_RTOL",
    "INITIALISERS",
    "NORM_EPSILON",
    "PLAIN_RULES",
    "Initialiser",
    "Rule",
    "abstract_init",
    "branch_output_rules",
    "by_rules",
    "check_covered",
    "check_rules",
    "check_same_architecture",
    "deepen_to_target",
    "group_sizes",
    "init_kwargs",
    "relative_error",
    "target_kind",
    "widen_to_target",
    "widen_to_target_plan",
    "widened_moments",
    "zero_last_rules",
]


def check_same_architecture(
    model: nn.Module, target: nn.Module, old: FlatVariables, new: FlatVariables
) -> None:
    """Raises unless ``target`` is ``model``'s class with the same variable paths and ranks.

    Raises:
      ValueError: listing the differing paths (missing, extra, other rank) or classes.
    """
    if type(target) is not type(model):
        raise ValueError(
            f"target must be a {type(model).__name__} like the model (with other sizes), got "
            f"a {type(target).__name__}"
        )
    problems = [f"{path_str(p)} missing in target" for p in old if p not in new]
    problems += [f"{path_str(p)} only in target" for p in new if p not in old]
    problems += [
        f"{path_str(p)} has shape {np.shape(old[p])} but {new[p].shape} in target"
        for p in old
        if p in new and len(np.shape(old[p])) != len(new[p].shape)
    ]
    if problems:
        raise ValueError(
            "target differs from the model in more than unit counts: " + "; ".join(problems)
        )


def group_sizes(
    groups: tuple[UnitGroup, ...], old: FlatVariables, new: FlatVariables
) -> list[tuple[int, int]]:
    """``(old, new)`` unit count of every group, read along its members' axes.

    Raises:
      ValueError: the members of a group disagree about its sizes (the target is not a
        widening of that group), or a group would shrink.
    """
    sizes = []
    for group in groups:
        seen: dict[tuple[int, int], list[str]] = {}
        for member in group.members:
            if member.flattened or member.path not in old:
                continue
            axis = member.axis % len(np.shape(old[member.path]))
            pair = (np.shape(old[member.path])[axis], new[member.path].shape[axis])
            seen.setdefault(pair, []).append(f"{path_str(member.path)} axis {axis}")
        if len(seen) != 1:
            described = "; ".join(f"{o} -> {n}: {', '.join(w)}" for (o, n), w in seen.items())
            raise ValueError(
                f"the target sizes the units of {group.name} unevenly ({described}): every "
                "axis of one unit group must grow to the same size"
            )
        ((old_size, new_size),) = seen
        if new_size < old_size:
            raise ValueError(
                f"widen cannot shrink {group.name} from {old_size} to {new_size} units; use "
                "jnet2net.transfer to make a network narrower"
            )
        for member in group.members:
            if member.flattened and member.path in old:
                axis = member.axis % len(np.shape(old[member.path]))
                before, after = np.shape(old[member.path])[axis], new[member.path].shape[axis]
                if before % old_size or before // old_size * new_size != after:
                    raise ValueError(
                        f"{path_str(member.path)} axis {axis} flattens {old_size} units of "
                        f"{group.name} ({before} entries); growing them to {new_size} needs "
                        f"{before // max(old_size, 1) * new_size} entries, the target has {after}"
                    )
        sizes.append((old_size, new_size))
    return sizes


def check_covered(
    groups: tuple[UnitGroup, ...],
    sizes: list[tuple[int, int]],
    old: FlatVariables,
    new: FlatVariables,
    fixed: Sequence[tuple[UnitGroup, str]] = (),
) -> None:
    """Raises unless every axis whose size changes belongs to a growing group.

    Args:
      groups: the growable groups; ``sizes``: their ``(old, new)`` sizes.
      old: the model's flat variables; ``new``: the target's flat shapes.
      fixed: :func:`jnet2net.discover.discover`'s groups that cannot grow, with the
        reason, which the error gives for their axes.

    Raises:
      ValueError: listing the paths and axes no unit group explains.
    """
    grown: set[tuple[Path, int]] = set()
    for group, (before, after) in zip(groups, sizes, strict=True):
        if after > before:
            for member in group.members:
                if member.path in old:
                    grown.add((member.path, member.axis % len(np.shape(old[member.path]))))
    why: dict[tuple[Path, int], str] = {}
    for group, reason in fixed:
        for member in group.members:
            if member.path in old:
                why[(member.path, member.axis % len(np.shape(old[member.path])))] = reason
    unexplained, reasons = [], []
    for path, leaf in old.items():
        shape, wanted = np.shape(leaf), new[path].shape
        for axis, (a, b) in enumerate(zip(shape, wanted, strict=True)):
            if a != b and (path, axis) not in grown:
                unexplained.append(f"{path_str(path)} axis {axis}: {a} -> {b}")
                if (path, axis) in why and why[(path, axis)] not in reasons:
                    reasons.append(why[(path, axis)])
    if unexplained:
        because = f" ({'; '.join(reasons)})" if reasons else ""
        raise ValueError(
            "the target changes sizes that no growable unit group owns (an input, output or "
            "non-unit axis, or units that meet one): " + "; ".join(unexplained) + because
        )


def widen_to_target(
    model: nn.Module,
    variables: Variables,
    target: nn.Module,
    *,
    key: jax.Array,
    example_input: Any,
    apply_kwargs: Mapping[str, Any] | None = None,
    noise: widening.Noise = "split",
    noise_scale: float = 0.1,
) -> tuple[nn.Module, Variables]:
    """Net2WiderNet for any linen module: ``target``'s variables computing ``model``'s function.

    See :func:`jnet2net.widen` (``target=``) for the arguments and noises.

    Returns:
      ``(target, new_variables)``.

    Raises:
      ValueError: ``example_input`` is missing; ``target`` is another class, has other
        variable paths or ranks, shrinks a group, changes an axis no growable group owns, or
        grows a ``uniform_only`` group by a size that is not a multiple (or with
        ``noise='fresh'``); or the result is not exact where it should be.
    """
    plan = widen_to_target_plan(
        model,
        variables,
        target,
        key=key,
        example_input=example_input,
        apply_kwargs=apply_kwargs,
        noise=noise,
        noise_scale=noise_scale,
    )
    widening.warn_paper(noise, plan, stacklevel=2)
    return target, plan.apply(variables)


def widen_to_target_plan(
    model: nn.Module,
    variables: Variables,
    target: nn.Module,
    *,
    key: jax.Array,
    example_input: Any,
    apply_kwargs: Mapping[str, Any] | None = None,
    noise: widening.Noise = "split",
    noise_scale: float = 0.1,
) -> GrowthPlan:
    """The :class:`~jnet2net.engine.GrowthPlan` of :func:`widen_to_target` (same arguments);
    its ``apply`` checks the target's shapes and, where the noise is exact, the function."""
    apply_kwargs = dict(apply_kwargs or {})
    if example_input is None:
        raise ValueError(
            f"widen(target=...) traces {type(model).__name__} to find its unit groups: pass "
            "example_input= (an input the module takes, e.g. a batch of one)"
        )
    old = flatten(variables)
    new = abstract_init(target, example_input, apply_kwargs)
    check_same_architecture(model, target, old, new)
    groups, fixed = discover(model, variables, example_input, **apply_kwargs)
    sizes = group_sizes(groups, old, new)
    check_covered(groups, sizes, old, new, fixed)
    map_key, noise_key = jax.random.split(key)
    exact = noise in ("none", "fresh") or (
        noise == "split"
        and isinstance(noise_scale, (int, float))
        and noise_scale <= widening.MAX_EXACT_SPLIT_SCALE
    )

    def check(variables: Variables, new_variables: Variables) -> None:
        got = flatten(new_variables)
        wrong = [
            f"{path_str(p)}: {np.shape(got.get(p))} instead of {leaf.shape}"
            for p, leaf in new.items()
            if p not in got or np.shape(got[p]) != leaf.shape
        ]
        if wrong:
            raise ValueError("widening did not produce the target's shapes: " + "; ".join(wrong))
        if exact and not traced(variables):
            error = relative_error(
                model, variables, target, new_variables, example_input, apply_kwargs
            )
            if not error < EXACT_RTOL:
                raise ValueError(
                    f"the widened {type(model).__name__} does not compute the same function "
                    f"(relative error {error:.2e} on random inputs): the module does something "
                    f"to its units that unit-group discovery did not see (groups: "
                    f"{', '.join(g.name for g in groups)})"
                )

    if noise == "fresh":
        uniform = [
            g.name for g, (o, n) in zip(groups, sizes, strict=True) if g.uniform_only and n > o
        ]
        if uniform:
            raise ValueError(
                f"noise='fresh' cannot grow {', '.join(uniform)}: their units are averaged "
                "over (e.g. by a LayerNorm), so new units would change the mean; use "
                "noise='split' or 'none' (uniform replication)"
            )
        growths = tuple(
            widening.GroupGrowth(g, o, n) for g, (o, n) in zip(groups, sizes, strict=True) if n > o
        )
        kwargs = init_kwargs(apply_kwargs)
        return dataclasses.replace(
            widening.fresh_plan(
                model,
                target,
                growths,
                key=noise_key,
                init=lambda k: target.init(k, example_input, **kwargs),
            ),
            check=check,
        )
    plan = widening.plan_for_sizes(groups, sizes, map_key)
    replicas = widening.replica_plan(
        model, target, plan, key=noise_key, noise=noise, noise_scale=noise_scale
    )
    return dataclasses.replace(replicas, check=check)


def widened_moments(
    model: nn.Module,
    variables: Variables,
    target: nn.Module,
    *,
    key: jax.Array,
    example_input: Any,
    apply_kwargs: Mapping[str, Any] | None = None,
    noise: widening.Noise = "split",
) -> Callable[[Any], Any]:
    """The params map of :func:`widen_to_target` with the same ``key`` (for optimizer
    moments): ``widen_to_target_plan(...).map``, linear and noise-free.

    With a replicating ``noise``: replicas copy their original's moments, split consumers
    get ``1 / count`` of them. With ``noise='fresh'``: old units keep their moments in
    place, new units' entries are zero.

    Returns:
      ``f(params_shaped_tree) -> tree shaped like target's params``.
    """
    plan = widen_to_target_plan(
        model,
        variables,
        target,
        key=key,
        example_input=example_input,
        apply_kwargs=apply_kwargs,
        noise=noise,
    )
    return plan.map


def target_kind(
    model: nn.Module,
    variables: Variables,
    target: nn.Module,
    example_input: Any,
    apply_kwargs: Mapping[str, Any] | None = None,
) -> str:
    """``'widen'`` (``target`` has ``model``'s variable paths, some larger) or ``'deepen'``
    (it keeps every old leaf as it is and adds new ones), from shapes only.

    Raises:
      ValueError: ``target`` is another class, or both adds leaves and changes old ones.
    """
    if type(target) is not type(model):
        raise ValueError(
            f"target must be a {type(model).__name__} like the model (wider or deeper), got a "
            f"{type(target).__name__}"
        )
    old = flatten(variables)
    new = abstract_init(target, example_input, dict(apply_kwargs or {}))
    added = [p for p in new if p not in old]
    changed = [p for p in old if p in new and np.shape(old[p]) != new[p].shape]
    if added and changed:
        raise ValueError(
            f"target {type(target).__name__} adds layers ({path_str(added[0])}, ...) and changes "
            f"old ones ({path_str(changed[0])}: {np.shape(old[changed[0]])} -> "
            f"{new[changed[0]].shape}); a growth to a target widens or deepens: split it into "
            "two events (or calls), the wider one first"
        )
    return "deepen" if added else "widen"


# --- deepen: new layers of a deeper target, identity by rule ---------------------------
