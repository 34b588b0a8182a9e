"""Exact growth of a Vision Transformer: MLP units, heads, embedding width and depth.

``jnet2net.widen`` and ``jnet2net.deepen`` call these for a :class:`~jnet2net.models.ViT`;
they are pure ``(model, variables, key) -> (new_model, new_variables)`` functions on the
same unit groups (``ViT.unit_groups``) and the same mapping machinery as the CNNs.

* MLP units (``mlp_dim``) and heads (``num_heads``) grow like any hidden layer: with
  ``noise='none'``/``'split'`` new units replicate random old ones and the consumer
  (``mlp_out``'s rows, ``out``'s head rows) is split among the replicas; with
  ``noise='fresh'`` new units get the wide network's own initial incoming weights (a new
  head: its own ``query``/``key``/``value``) and zero outgoing rows. Heads keep their width
  (``head_dim`` is fixed, so the attention scale ``1 / sqrt(head_dim)`` does not change).
* The embedding width (``embed_dim``, the residual stream) feeds LayerNorms, which reduce
  over the unit axis. Only *uniform* replication keeps them exact: the new width is ``k``
  times the old, every unit is copied ``k`` times, so the mean and variance of every token
  are the old ones and the normalised stream is the old one replicated; LayerNorm scales and
  biases, the patch embedding's outputs, the class token and the position embedding are
  replicated, and every consumer's input rows (``query``/``key``/``value``, ``mlp_in``, the
  head) are divided among the ``k`` copies (with ``noise='split'`` and ``'fresh'``, with
  zero-sum noise; ``'fresh'`` cannot add new stream units, which would shift the LayerNorm
  statistics). The number and width of the heads stay as they were.
* Depth: new blocks are appended after the last one (existing paths never change), before
  the final LayerNorm; their ``out`` and ``mlp_out`` kernels and biases are zero, so each adds
  nothing to the residual stream, and their other weights are drawn from ``key``.

All of it is exact in eval and train mode (a ViT has no train-mode layers).
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp

from jnet2net import surgery
from jnet2net.engine import GrowthPlan, keep_empty_collections
from jnet2net.engine.widening import (
    GroupGrowth,
    GroupMapping,
    Noise,
    fresh_steps,
    grown_groups,
    warn_paper,
    widening_steps,
)
from jnet2net.models.vit import ViT
from jnet2net.variables import (
    FlatVariables,
    Variables,
    check_variables,
    flatten,
    unflatten_like,
)

#: The sizes ``jnet2net.widen`` grows on a ViT, and the one ``jnet2net.deepen`` grows.
WIDEN_SIZES = ("embed_dim", "mlp_dim", "num_heads")
DEEPEN_SIZES = ("depth",)
STREAM = "embed"


def _size(name: str, value: Any, old: int, verb: str) -> int:
    """``value`` as an int ``>= old``; TypeError/ValueError naming the field otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    value = int(value)
    if value < old:
        raise ValueError(
            f"{verb} cannot shrink a ViT's {name} from {old} to {value}; growth only adds "
            "units, blocks or heads"
        )
    return value


def reject_sizes(model: Any, sizes: dict[str, Any], *, allowed: tuple[str, ...]) -> None:
    """Raises ValueError when a size in ``sizes`` is set that ``model``'s family lacks.

    Args:
      model: the module being grown.
      sizes: keyword -> value (``None``: not given).
      allowed: the keywords that apply to ``model``.
    """
    given = [name for name, value in sizes.items() if value is not None]
    if given:
        raise ValueError(
            f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply to a "
            f"{type(model).__name__}; it grows with {', '.join(allowed)}"
        )


def widened_vit(
    model: ViT,
    *,
    embed_dim: int | None = None,
    mlp_dim: int | None = None,
    num_heads: int | None = None,
) -> ViT:
    """The wider ViT: ``model`` with the given sizes; ``head_dim`` keeps its value.

    Raises:
      TypeError: a size is not an int.
      ValueError: a size would shrink, or ``embed_dim`` is not a multiple of the old one.
    """
    changes: dict[str, int] = {}
    for name, value in (("embed_dim", embed_dim), ("mlp_dim", mlp_dim), ("num_heads", num_heads)):
        if value is not None:
            changes[name] = _size(name, value, getattr(model, name), "widen")
    new_embed = changes.get("embed_dim", model.embed_dim)
    if new_embed % model.embed_dim:
        raise ValueError(
            f"widen can grow a ViT's embed_dim only to a multiple of it ({model.embed_dim} -> "
            f"{new_embed} is not): the residual stream feeds LayerNorms, which stay exact only "
            "when every unit is copied the same number of times"
        )
    head_dim = model.resolved_head_dim()
    new_heads = changes.get("num_heads", model.num_heads)
    if new_embed % new_heads or new_embed // new_heads != head_dim:
        changes["head_dim"] = head_dim  # keep each head's width (and attention scale)
    return model.clone(**changes)


def stream_mapping(old: int, new: int) -> tuple[jax.Array, jax.Array]:
    """The uniform replication of ``old`` units into ``new = k * old``.

    Returns:
      ``(mapping, counts)``: ``(new,)`` int32 ``[0..old-1]`` repeated ``k`` times (new unit
      ``j`` copies old unit ``j % old``) and ``(old,)`` int32 counts, all ``k``.
    """
    if new % old:
        raise ValueError(f"uniform replication needs a multiple of {old} units, got {new}")
    mapping = jnp.tile(jnp.arange(old, dtype=jnp.int32), new // old)
    return mapping, jnp.full((old,), new // old, jnp.int32)


def vit_widening_plan(model: ViT, new_model: ViT, key: jax.Array) -> tuple[GroupMapping, ...]:
    """One mapping per unit group that grows: the stream uniform, heads and MLPs random.

    Group ``i`` of ``model.unit_groups()`` draws from the ``i``-th of ``len(groups)`` keys
    split from ``key`` (so the same key gives the same mapping, whatever else grows).
    """
    groups = model.unit_groups()
    keys = jax.random.split(key, len(groups))
    plan = []
    for growth in grown_groups(model, new_model):
        if growth.group.name == STREAM:
            mapping, counts = stream_mapping(growth.old, growth.new)
        else:
            index = groups.index(growth.group)
            mapping = surgery.random_mapping(keys[index], growth.old, growth.new)
            counts = surgery.replication_counts(mapping, growth.old)
        plan.append(GroupMapping(growth.group, mapping, counts))
    return tuple(plan)


def _stream_plan(model: ViT, new_model: ViT) -> tuple[GroupMapping, ...]:
    """The stream's uniform mapping alone (no key: it draws nothing); ``()`` if it keeps
    its width."""
    return tuple(
        GroupMapping(growth.group, *stream_mapping(growth.old, growth.new))
        for growth in grown_groups(model, new_model)
        if growth.group.name == STREAM
    )


def _unit_growths(model: ViT, new_model: ViT) -> tuple[GroupGrowth, ...]:
    """The heads and MLP groups that grow (every grown group but the stream)."""
    return tuple(g for g in grown_groups(model, new_model) if g.group.name != STREAM)


def widen_vit(
    model: ViT,
    variables: Variables,
    *,
    key: jax.Array,
    embed_dim: int | None = None,
    mlp_dim: int | None = None,
    num_heads: int | None = None,
    noise: Noise = "split",
    noise_scale: float = 0.1,
) -> tuple[ViT, Variables]:
    """A wider ViT computing the same function; ``jnet2net.widen`` of a ViT.

    Args:
      model: the ViT.
      variables: ``{'params': ...}`` of ``model``.
      key: randomness for the mappings, the noise and (``'fresh'``) the new units.
      embed_dim: new embedding width, a multiple of the old one (uniform replication).
      mlp_dim: new MLP width of every block.
      num_heads: new number of heads of every block (each keeps ``head_dim``).
      noise: ``widen``'s: ``'split'``, ``'none'``, ``'paper'`` (not exact) replicate MLP
        units and heads; ``'fresh'`` adds fresh ones with zero outgoing rows (the stream is
        replicated with split noise then).
      noise_scale: ``widen``'s.

    Returns:
      ``(new_model, new_variables)``.

    Raises:
      TypeError: ``model`` is not a ViT, or a size is not an int.
      ValueError: a size would shrink, ``embed_dim`` is not a multiple of the old one, or
        ``variables`` do not fit ``model``.
    """
    plan = vit_widen_plan(
        model,
        variables,
        key=key,
        embed_dim=embed_dim,
        mlp_dim=mlp_dim,
        num_heads=num_heads,
        noise=noise,
        noise_scale=noise_scale,
    )
    warn_paper(noise, plan, stacklevel=2)
    return plan.new_model, plan.apply(variables)


def vit_widen_plan(
    model: ViT,
    variables: Variables,
    *,
    key: jax.Array,
    embed_dim: int | None = None,
    mlp_dim: int | None = None,
    num_heads: int | None = None,
    noise: Noise = "split",
    noise_scale: float = 0.1,
) -> GrowthPlan:
    """The :class:`~jnet2net.engine.GrowthPlan` of :func:`widen_vit` (same arguments)."""
    if not isinstance(model, ViT):
        raise TypeError(f"widen_vit grows ViT modules, got {type(model).__name__}")
    new_model = widened_vit(model, embed_dim=embed_dim, mlp_dim=mlp_dim, num_heads=num_heads)
    check_variables(model, variables)
    map_key, noise_key = jax.random.split(key)  # as jnet2net.widen splits it
    if noise != "fresh":
        steps = widening_steps(vit_widening_plan(model, new_model, map_key), noise, noise_scale)
        return GrowthPlan(model, new_model, steps, key=noise_key)
    # the stream replicated with split noise, heads and MLP units fresh
    stream_key, init_key = jax.random.split(noise_key)
    steps = widening_steps(_stream_plan(model, new_model), "split", noise_scale)
    steps += fresh_steps(_unit_growths(model, new_model))
    example = model.example_input(variables)
    return GrowthPlan(
        model,
        new_model,
        steps,
        key=stream_key,
        init=lambda k: new_model.init(k, example, train=False),
        init_key=init_key,
    )


def embed_vit_widening(variables: Variables, model: ViT, new_model: ViT) -> Variables:
    """``grow.embed_widening`` for a ViT widened with ``noise='fresh'``: linear and key-free.

    The stream is replicated uniformly (consumers' rows divided by the copies), heads' and
    MLP units' entries are zero-padded. With ``variables={'params': moments}`` it maps
    optimizer moments: replicas of a stream unit get its moments (``1/k`` of them on
    consumer rows), new heads and MLP units get zeros.
    """
    steps = widening_steps(_stream_plan(model, new_model))
    steps += fresh_steps(_unit_growths(model, new_model))
    return GrowthPlan(model, new_model, steps).apply(variables)


def deepen_vit(
    model: ViT,
    variables: Variables,
    *,
    depth: int | None = None,
    key: jax.Array | None = None,
) -> tuple[ViT, Variables]:
    """A deeper ViT computing the same function; ``jnet2net.deepen`` of a ViT.

    Blocks ``block{model.depth}`` .. ``block{depth - 1}`` are appended after the last block
    (before the final LayerNorm); their ``out`` and ``mlp_out`` kernels and biases are zero,
    so each block passes its input through unchanged, and their other weights come from
    ``new_model.init(key)``.

    Args:
      model: the ViT.
      variables: ``{'params': ...}`` of ``model``.
      depth: the new number of blocks (``>= model.depth``).
      key: randomness for the new blocks' weights (required when blocks are added).

    Returns:
      ``(new_model, new_variables)``.

    Raises:
      TypeError: ``model`` is not a ViT, or ``depth`` is not an int.
      ValueError: ``depth`` would remove blocks, ``key`` is missing, or ``variables`` do not
        fit ``model``.
    """
    if not isinstance(model, ViT):
        raise TypeError(f"deepen_vit grows ViT modules, got {type(model).__name__}")
    new_depth = model.depth if depth is None else _size("depth", depth, model.depth, "deepen")
    check_variables(model, variables)
    if key is None and new_depth > model.depth:
        raise ValueError(
            "deepen draws the weights of new ViT blocks at random: pass key=jax.random.key(...)"
        )
    new_model = model.clone(depth=new_depth)
    old = flatten(variables)
    init_key = jax.random.key(0) if key is None else key  # None: no new block draws from it
    fresh = flatten(new_model.init(init_key, model.example_input(variables), train=False))
    new_flat: FlatVariables = {}
    for path, leaf in fresh.items():
        if path in old:
            new_flat[path] = old[path]
        elif path[-2] in ("out", "mlp_out"):
            new_flat[path] = jnp.zeros_like(leaf)  # the block writes nothing to the stream
        else:
            new_flat[path] = leaf
    for path, leaf in old.items():  # other collections pass through unchanged
        if path[0] != "params":
            new_flat[path] = leaf
    return new_model, keep_empty_collections(unflatten_like(new_flat, variables), variables)
