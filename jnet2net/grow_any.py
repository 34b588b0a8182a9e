"""Growth of any linen module to a larger target module, by discovered unit groups.

``widen(model, variables, key=..., target=wider, example_input=x)`` (see
:func:`jnet2net.widen`) lands here: the unit groups come from :func:`jnet2net.couplings`,
each group's new size from comparing ``jax.eval_shape(target.init, ...)`` with the old
variables along the group's axes, and the variables are built by the same plan that grows
the presets (:func:`jnet2net.grow.apply_widening`, :func:`jnet2net.grow.fresh_widening`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jnet2net import grow
from jnet2net.coupling import Path, UnitGroup
from jnet2net.discover import discover
from jnet2net.variables import FlatVariables, Variables, flatten, path_str, unflatten_like

#: A grown network counts as computing the same function below this relative error.
EXACT_RTOL = 1e-5


def init_kwargs(apply_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``apply_kwargs`` without the ones ``init`` does not take (``mutable``)."""
    return {k: v for k, v in apply_kwargs.items() if k != "mutable"}


def abstract_init(
    target: nn.Module, example_input: Any, apply_kwargs: Mapping[str, Any]
) -> FlatVariables:
    """Flat shapes of ``target.init`` on ``example_input``, with no computation.

    Raises:
      ValueError: ``target`` does not initialise on ``example_input``.
    """
    try:
        shapes = jax.eval_shape(
            lambda x: target.init(jax.random.key(0), x, **init_kwargs(apply_kwargs)),
            example_input,
        )
    except Exception as err:  # flax and jax raise many types here; re-raise with context
        raise ValueError(
            f"target {type(target).__name__} does not initialise on example_input "
            f"{jax.tree.map(np.shape, example_input)}: {err}"
        ) from None
    return flatten(shapes)


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


def _outputs(model: nn.Module, variables: Variables, x: Any, apply_kwargs: Mapping) -> Any:
    out = model.apply(variables, x, **apply_kwargs)
    return out[0] if apply_kwargs.get("mutable", False) else out


def relative_error(
    model: nn.Module,
    variables: Variables,
    new_model: nn.Module,
    new_variables: Variables,
    example_input: Any,
    apply_kwargs: Mapping[str, Any],
) -> float:
    """``max|new - old| / max|old|`` of the two networks on random inputs shaped like
    ``example_input`` (float leaves standard normal, others as given)."""
    leaves, treedef = jax.tree.flatten(example_input)
    keys = jax.random.split(jax.random.key(1234), max(len(leaves), 1))
    inputs = [
        jax.random.normal(k, jnp.shape(x), jnp.result_type(x))
        if jnp.issubdtype(jnp.result_type(x), jnp.floating)
        else x
        for k, x in zip(keys, leaves, strict=False)
    ]
    x = jax.tree.unflatten(treedef, inputs)
    old = jax.tree.leaves(_outputs(model, variables, x, apply_kwargs))
    new = jax.tree.leaves(_outputs(new_model, new_variables, x, apply_kwargs))
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(old, new, strict=True))
    scale = max(float(jnp.max(jnp.abs(a))) for a in old)
    return diff / max(scale, float(np.finfo(np.float32).tiny))


def _traced(variables: Variables) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(variables))


def widen_to_target(
    model: nn.Module,
    variables: Variables,
    target: nn.Module,
    *,
    key: jax.Array,
    example_input: Any,
    apply_kwargs: Mapping[str, Any] | None = None,
    noise: grow.Noise = "split",
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
            grow.GroupGrowth(g, o, n) for g, (o, n) in zip(groups, sizes, strict=True) if n > o
        )
        fresh: Variables = {}
        if growths:
            fresh = target.init(noise_key, example_input, **init_kwargs(apply_kwargs))
        new_variables = grow.fresh_widening(variables, fresh, growths)
    else:
        plan = grow.plan_for_sizes(groups, sizes, map_key)
        new_variables = grow.replicated_widening(
            variables, plan, key=noise_key, noise=noise, noise_scale=noise_scale, stacklevel=3
        )
    got = flatten(new_variables)
    wrong = [
        f"{path_str(p)}: {np.shape(got.get(p))} instead of {leaf.shape}"
        for p, leaf in new.items()
        if p not in got or np.shape(got[p]) != leaf.shape
    ]
    if wrong:
        raise ValueError("widening did not produce the target's shapes: " + "; ".join(wrong))
    exact = noise in ("none", "fresh") or (
        noise == "split"
        and isinstance(noise_scale, (int, float))
        and noise_scale <= grow.MAX_EXACT_SPLIT_SCALE
    )
    if exact and not _traced(variables):
        error = relative_error(model, variables, target, new_variables, example_input, apply_kwargs)
        if not error < EXACT_RTOL:
            raise ValueError(
                f"the widened {type(model).__name__} does not compute the same function "
                f"(relative error {error:.2e} on random inputs): the module does something to "
                f"its units that unit-group discovery did not see (groups: "
                f"{', '.join(g.name for g in groups)})"
            )
    return target, new_variables


def widened_moments(
    model: nn.Module,
    variables: Variables,
    target: nn.Module,
    *,
    key: jax.Array,
    example_input: Any,
    apply_kwargs: Mapping[str, Any] | None = None,
    noise: grow.Noise = "split",
) -> Callable[[Any], Any]:
    """The params map of :func:`widen_to_target` with the same ``key`` (for optimizer
    moments): linear and noise-free.

    With a replicating ``noise``, the same mapping replayed with ``noise='none'``:
    replicas copy their original's moments, split consumers get ``1 / count`` of them. With
    ``noise='fresh'``: old units keep their moments in place, new units' entries are zero.

    Returns:
      ``f(params_shaped_tree) -> tree shaped like target's params``.
    """
    apply_kwargs = dict(apply_kwargs or {})
    old = flatten(variables)
    new = abstract_init(target, example_input, apply_kwargs)
    groups = discover(model, variables, example_input, **apply_kwargs).groups
    sizes = group_sizes(groups, old, new)
    if noise == "fresh":
        growths = tuple(
            grow.GroupGrowth(g, o, n) for g, (o, n) in zip(groups, sizes, strict=True) if n > o
        )
        return lambda tree: grow.embed_widening({"params": tree}, growths)["params"]
    plan = grow.plan_for_sizes(groups, sizes, jax.random.split(key)[0])
    return lambda tree: grow.apply_widening({"params": tree}, plan, noise="none")["params"]


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

#: A per-leaf initialiser: a name in ``INITIALISERS`` or ``f(path, fresh_leaf) -> array``.
Initialiser = str | Callable[[Path, jax.Array], jax.Array]
#: ``(regex on 'collection/module/.../leaf', initialiser)``; the first match wins.
Rule = tuple[str, Initialiser]
INITIALISERS = ("identity", "zeros", "ones", "fresh")
#: The BatchNorm epsilon an ``'identity'`` norm scale assumes (flax's and jnet2net's).
NORM_EPSILON = 1e-5

#: A plain chain: every new layer computes its input (after a ReLU: identity kernels).
PLAIN_RULES: tuple[Rule, ...] = (
    (r"(^|/)kernel$", "identity"),
    (r"(^|/)bias$", "zeros"),
    (r"^batch_stats/.*/mean$", "zeros"),
    (r"^batch_stats/.*/var$", "ones"),
    (r"(^|/)scale$", "identity"),
)


def _identity_leaf(path: Path, fresh: jax.Array) -> jax.Array:
    """The identity value of a new kernel (dense or odd conv, square) or norm scale."""
    shape = np.shape(fresh)
    if path[-1] == "scale":
        return jnp.full(shape, np.sqrt(1.0 + NORM_EPSILON), fresh.dtype)
    if len(shape) == 2 and shape[0] == shape[1]:
        return jnp.eye(shape[0], dtype=fresh.dtype)
    if len(shape) >= 3 and shape[-1] == shape[-2] and all(s % 2 for s in shape[:-2]):
        kernel = jnp.zeros(shape, fresh.dtype)
        centre = tuple(s // 2 for s in shape[:-2])
        return kernel.at[centre].set(jnp.eye(shape[-1], dtype=fresh.dtype))
    raise ValueError(
        f"no identity for {path_str(path)} of shape {shape}: 'identity' needs a square dense "
        "kernel (n, n), an odd conv kernel (..., c, c) or a norm scale; give it another rule"
    )


def _initialise(path: Path, fresh: jax.Array, initialiser: Initialiser) -> jax.Array:
    if callable(initialiser):
        value = jnp.asarray(initialiser(path, fresh))
        if value.shape != np.shape(fresh):
            raise ValueError(
                f"the rule for {path_str(path)} returned shape {value.shape}, the target needs "
                f"{np.shape(fresh)}"
            )
        return value.astype(fresh.dtype)
    if initialiser == "identity":
        return _identity_leaf(path, fresh)
    if initialiser == "zeros":
        return jnp.zeros_like(fresh)
    if initialiser == "ones":
        return jnp.ones_like(fresh)
    if initialiser == "fresh":
        return fresh
    raise ValueError(
        f"unknown initialiser {initialiser!r} for {path_str(path)}: use one of {INITIALISERS} "
        "or a callable (path, fresh_leaf) -> array"
    )


def check_rules(rules: Sequence[Rule]) -> list[tuple[re.Pattern[str], Initialiser]]:
    """``rules`` compiled; TypeError/ValueError naming a malformed rule."""
    compiled = []
    for rule in rules:
        if not isinstance(rule, (tuple, list)) or len(rule) != 2:
            raise TypeError(f"a rule is (regex, initialiser), got {rule!r}")
        pattern, initialiser = rule
        if not callable(initialiser) and initialiser not in INITIALISERS:
            raise ValueError(
                f"unknown initialiser {initialiser!r} in rule {pattern!r}: use one of "
                f"{INITIALISERS} or a callable (path, fresh_leaf) -> array"
            )
        try:
            compiled.append((re.compile(pattern), initialiser))
        except re.error as err:
            raise ValueError(f"rule {pattern!r} is not a regular expression: {err}") from None
    return compiled


def by_rules(
    new_paths: Sequence[Path], fresh: FlatVariables, rules: Sequence[Rule]
) -> FlatVariables:
    """Each new leaf by the first rule whose regex matches its ``'/'``-joined path
    (``re.search``); leaves no rule matches keep ``fresh``'s value."""
    compiled = check_rules(rules)
    out = {}
    for path in new_paths:
        name = path_str(path)
        initialiser: Initialiser = next(
            (init for pattern, init in compiled if pattern.search(name)), "fresh"
        )
        out[path] = _initialise(path, fresh[path], initialiser)
    return out


def zero_last_rules(new_paths: Sequence[Path], order: Sequence[Path]) -> tuple[Rule, ...]:
    """A residual branch per new top-level layer: the last norm scale it uses (or, without
    one, its last kernel and that kernel's bias) zero, everything else fresh."""
    rank = {path: i for i, path in enumerate(order)}
    layers: dict[tuple[str, str], list[Path]] = {}
    for path in new_paths:
        if path[0] == "params" and len(path) > 2:
            layers.setdefault(path[:2], []).append(path)
    rules: list[Rule] = []
    for paths in layers.values():
        used = sorted((p for p in paths if p in rank), key=rank.__getitem__)
        scales = [p for p in used if p[-1] == "scale"]
        kernels = [p for p in used if p[-1] == "kernel"]
        if scales:
            rules.append((f"^{re.escape(path_str(scales[-1]))}$", "zeros"))
        elif kernels:
            rules.append((f"^{re.escape(path_str(kernels[-1]))}$", "zeros"))
            bias = (*kernels[-1][:-1], "bias")
            rules.append((f"^{re.escape(path_str(bias))}$", "zeros"))
    return tuple(rules)


def branch_output_rules(
    target: nn.Module,
    fresh: Variables,
    example_input: Any,
    apply_kwargs: Mapping[str, Any],
    new_paths: Sequence[Path],
    old: FlatVariables,
) -> tuple[Rule, ...]:
    """Residual branches found by discovery on ``target``: every new kernel that writes the
    units of a group the old layers also have (a residual stream), and its bias, zero.

    A transformer block has two branches (attention's ``out`` and the MLP's second layer)
    and LayerNorms whose zero scale would not silence them; zeroing the kernels that write
    back to the stream does, and leaves every other new leaf (``query``, ``mlp_in``, norms)
    as ``target.init`` made it.
    """
    found = discover(target, fresh, example_input, **apply_kwargs)
    new = set(new_paths)
    rules: list[Rule] = []
    for group in (*found.groups, *(g for g, _ in found.fixed)):
        if not any(m.path in old for m in group.members):
            continue
        for member in group.members:
            if member.role == "producer" and member.path in new and member.path[-1] == "kernel":
                for leaf in (member.path, (*member.path[:-1], "bias")):
                    if leaf in new:
                        rules.append((f"^{re.escape(path_str(leaf))}$", "zeros"))
    return tuple(dict.fromkeys(rules))


def _stand_in(variables: Variables, key: jax.Array) -> Variables:
    """``variables`` with every float leaf perturbed (``x * exp(0.1 n) + 0.1 n'``): values
    that no zero bias or unit scale of an ``init`` makes look exact by chance; positive
    leaves (variances) stay positive in practice."""
    leaves, treedef = jax.tree.flatten(variables)
    keys = jax.random.split(key, max(2 * len(leaves), 2))
    out = []
    for i, leaf in enumerate(leaves):
        if jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            shape, dtype = jnp.shape(leaf), jnp.result_type(leaf)
            scale = jnp.exp(0.1 * jax.random.normal(keys[2 * i], shape, dtype))
            leaf = leaf * scale + 0.1 * jax.random.normal(keys[2 * i + 1], shape, dtype)
        out.append(leaf)
    return jax.tree.unflatten(treedef, out)


def _first_exact(
    model: nn.Module,
    variables: Variables,
    target: nn.Module,
    fresh_tree: Variables,
    new_paths: list[Path],
    rules: Sequence[Rule] | None,
    example_input: Any,
    apply_kwargs: Mapping[str, Any],
    *,
    eager: bool = False,
) -> tuple[tuple[Rule, ...], Variables]:
    """The first rule set (``rules``, else the identity, zero-last and branch-output
    defaults) whose deeper network computes ``model``'s function, with its variables.

    ``eager``: the candidates are checked under ``jax.ensure_compile_time_eval`` (concrete
    stand-ins inside a trace); finding them (a shape-only trace) stays outside it, where
    constants of the traced module remain literals.

    Raises:
      ValueError: none does (naming the new leaves and each candidate's error).
    """
    from jnet2net.discover import first_use_order

    old, fresh = flatten(variables), flatten(fresh_tree)

    def zero_last() -> tuple[Rule, ...]:
        order = first_use_order(target, fresh_tree, example_input, **apply_kwargs)
        return zero_last_rules(new_paths, order)

    def branches() -> tuple[Rule, ...]:
        return branch_output_rules(target, fresh_tree, example_input, apply_kwargs, new_paths, old)

    candidates = (
        [lambda: tuple(rules)]
        if rules is not None
        else [
            lambda: PLAIN_RULES,
            zero_last,
            branches,
        ]
    )
    errors = []
    for candidate in candidates:
        try:
            chosen = candidate()
            with jax.ensure_compile_time_eval() if eager else contextlib.nullcontext():
                new_leaves = by_rules(new_paths, fresh, chosen)
        except ValueError as err:
            if rules is not None:
                raise
            errors.append(str(err))
            continue
        grown = grow._keep_empty_collections(
            unflatten_like({**old, **new_leaves}, variables), variables
        )
        with jax.ensure_compile_time_eval() if eager else contextlib.nullcontext():
            error = relative_error(model, variables, target, grown, example_input, apply_kwargs)
        if error < EXACT_RTOL:
            return chosen, grown
        errors.append(f"relative error {error:.2e}")
    how = (
        "by the rules given"
        if rules is not None
        else "as identity layers or as residual branches with a zero output"
    )
    raise ValueError(
        f"the deeper {type(target).__name__} does not compute the same function with its new "
        f"leaves {', '.join(path_str(p) for p in new_paths)} initialised {how} "
        f"({'; '.join(errors)}): pass rules=[(regex, 'zeros' | 'identity' | ...), ...]"
    )


def deepen_to_target(
    model: nn.Module,
    variables: Variables,
    target: nn.Module,
    *,
    key: jax.Array,
    example_input: Any,
    rules: Sequence[Rule] | None = None,
    apply_kwargs: Mapping[str, Any] | None = None,
) -> tuple[nn.Module, Variables]:
    """Net2DeeperNet for any linen module: ``target`` (more layers) computing ``model``'s
    function. See :func:`jnet2net.deepen` (``target=``).

    Without ``rules`` the new leaves are tried as identity layers (:data:`PLAIN_RULES`), as
    residual branches whose last norm scale (or last kernel) is zero
    (:func:`zero_last_rules`), then as branches whose kernels writing back to a residual
    stream are zero (:func:`branch_output_rules`, e.g. a transformer block); the first that
    computes the same function on random inputs wins. Under ``jax.jit`` (traced variables)
    the choice is made on perturbed stand-in variables of ``model`` and then applied.

    Returns:
      ``(target, new_variables)``: every old leaf kept, new leaves by ``rules``.

    Raises:
      ValueError: ``example_input`` is missing; ``target`` is another class, lacks an old
        path or changes an old leaf's shape; a rule is malformed; or the result does not
        compute the same function (naming the new paths).
    """
    apply_kwargs = dict(apply_kwargs or {})
    if example_input is None:
        raise ValueError(
            f"deepen(target=...) builds and checks {type(model).__name__}'s deeper version: "
            "pass example_input= (an input the module takes, e.g. a batch of one)"
        )
    if type(target) is not type(model):
        raise ValueError(
            f"target must be a {type(model).__name__} like the model (with more layers), got "
            f"a {type(target).__name__}"
        )
    old = flatten(variables)
    shapes = abstract_init(target, example_input, apply_kwargs)
    problems = [f"{path_str(p)} missing in target" for p in old if p not in shapes]
    problems += [
        f"{path_str(p)} has shape {np.shape(old[p])} but {shapes[p].shape} in target"
        for p in old
        if p in shapes and np.shape(old[p]) != shapes[p].shape
    ]
    if problems:
        raise ValueError(
            "deepen keeps every old layer as it is, but the target differs there (name new "
            "layers explicitly so old names do not shift): " + "; ".join(problems)
        )
    new_paths = [p for p in shapes if p not in old]
    if not new_paths:
        return target, variables
    fresh_tree = target.init(key, example_input, **init_kwargs(apply_kwargs))
    if not _traced((variables, fresh_tree)):
        _, grown = _first_exact(
            model, variables, target, fresh_tree, new_paths, rules, example_input, apply_kwargs
        )
        return target, grown
    with jax.ensure_compile_time_eval():  # concrete stand-ins inside a trace
        stand_key, fresh_key = jax.random.split(jax.random.key(0))
        stand_in = _stand_in(
            model.init(jax.random.key(1), example_input, **init_kwargs(apply_kwargs)), stand_key
        )
        stand_fresh = target.init(fresh_key, example_input, **init_kwargs(apply_kwargs))
    chosen, _ = _first_exact(
        model,
        stand_in,
        target,
        stand_fresh,
        new_paths,
        rules,
        example_input,
        apply_kwargs,
        eager=True,
    )
    new_leaves = by_rules(new_paths, flatten(fresh_tree), chosen)
    grown = unflatten_like({**old, **new_leaves}, variables)
    return target, grow._keep_empty_collections(grown, variables)
