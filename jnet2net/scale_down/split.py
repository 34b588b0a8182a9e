"""A network cut into a dropped prefix and a trained suffix: variables, apply, optimizer state.

Every collection of a variables dict (``params``, ``batch_stats``) is keyed by layer name
at its top level, so cutting at ``cut`` sends the subtrees of ``model.layer_names()[:cut]``
to the *frozen* dict and the rest to the *trained* dict. The prefix always runs in eval
mode (running BatchNorm statistics, which stay as they were at the cut): its output is then
a fixed function of the input, which is what lets it run without gradient or be cached.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import optax
from flax.core import FrozenDict, unfreeze

from jnet2net.variables import Variables


def _plain(tree: Any) -> Any:
    return unfreeze(tree) if isinstance(tree, FrozenDict) else tree


def check_cut(model: nn.Module, cut: int) -> None:
    """Raises ValueError unless ``0 <= cut < len(layer_names)`` (the head is never dropped)."""
    names = model.layer_names()
    if isinstance(cut, bool) or not isinstance(cut, int):
        raise TypeError(f"cut must be an int layer index, got {cut!r}")
    if not 0 <= cut < len(names):
        raise ValueError(
            f"cut must be in [0, {len(names) - 1}] for {type(model).__name__} layers "
            f"{names} (the head '{names[-1]}' is never dropped), got {cut}"
        )


def split_variables(model: nn.Module, variables: Variables, cut: int) -> tuple[dict, dict]:
    """Splits every collection at ``cut``.

    Args:
      model: a VGG or ResNet (anything with ``layer_names()``).
      variables: ``{'params': ..., 'batch_stats': ...}`` of the whole network, or of any
        part of it.
      cut: layers ``[0, cut)`` go to the frozen dict.

    Returns:
      ``(frozen, trained)``: plain dicts with the same collections, each holding the
      layers on its side of the cut.
    """
    check_cut(model, cut)
    names = model.layer_names()
    frozen_names = set(names[:cut])
    frozen: dict[str, dict] = {}
    trained: dict[str, dict] = {}
    for collection, tree in _plain(variables).items():
        if not isinstance(tree, Mapping):
            raise TypeError(f"variables[{collection!r}] must be a dict keyed by layer name")
        unknown = [k for k in tree if k not in names]
        if unknown:
            raise ValueError(
                f"{collection}/{unknown[0]} is not a layer of {type(model).__name__} "
                f"(layers: {names})"
            )
        frozen[collection] = {k: v for k, v in tree.items() if k in frozen_names}
        trained[collection] = {k: v for k, v in tree.items() if k not in frozen_names}
    return frozen, trained


def merge_variables(frozen: Variables, trained: Variables) -> dict:
    """Inverse of :func:`split_variables`; raises ValueError if a layer is on both sides."""
    merged: dict[str, dict] = {}
    frozen, trained = _plain(frozen), _plain(trained)
    for collection in (*frozen, *(c for c in trained if c not in frozen)):
        a, b = frozen.get(collection, {}), trained.get(collection, {})
        both = set(a) & set(b)
        if both:
            raise ValueError(f"{collection}/{sorted(both)[0]} is both frozen and trained")
        merged[collection] = {**a, **b}
    return merged


def prefix_apply(model: nn.Module, frozen: Variables, x: jax.Array, cut: int) -> jax.Array:
    """Runs the dropped layers ``[0, cut)`` in eval mode, without gradient.

    Args:
      model: the network.
      frozen: variables of (at least) the layers before ``cut``.
      x: images ``(n, h, w, c)``.
      cut: number of dropped layers; 0 returns ``x``.

    Returns:
      the input of layer ``cut``, e.g. ``(n, h', w', c')``, with ``stop_gradient`` applied.
    """
    check_cut(model, cut)
    if cut == 0:
        return x
    return jax.lax.stop_gradient(model.apply(frozen, x, train=False, stop=cut))


def suffix_apply(
    model: nn.Module,
    params: Any,
    batch_stats: Any,
    h: jax.Array,
    cut: int,
    *,
    train: bool,
) -> tuple[jax.Array, Any]:
    """Runs the trained layers ``[cut, end)``.

    Args:
      model: the network.
      params: ``params`` of (at least) the layers from ``cut`` on.
      batch_stats: their ``batch_stats`` (``{}`` or ``None`` for a network without
        BatchNorm).
      h: the input of layer ``cut`` (images when ``cut == 0``).
      cut: first trained layer.
      train: batch statistics (and their update) instead of running averages.

    Returns:
      ``(logits (n, classes) float32, new batch_stats)``; the batch_stats are the ones
      passed in when ``train`` is False.
    """
    check_cut(model, cut)
    variables = {"params": params}
    if batch_stats:
        variables["batch_stats"] = batch_stats
    if not train:
        return model.apply(variables, h, train=False, start=cut), batch_stats
    logits, updates = model.apply(variables, h, train=True, start=cut, mutable=["batch_stats"])
    return logits, updates.get("batch_stats", batch_stats)


def _by_path(tree: Any) -> tuple[dict[str, Any], Any]:
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): leaf for path, leaf in leaves}, treedef


def shrink_opt_state(tx: optax.GradientTransformation, opt_state: Any, params: Any) -> Any:
    """The optimizer state for ``params``, a subset of the layers ``opt_state`` was made for.

    Every leaf of the new state (moments of the remaining layers, step counts, injected
    hyperparameters) is taken, unchanged, from the leaf at the same path of
    ``opt_state``; the dropped layers' moments are left behind. Nothing is reset.

    Args:
      tx: the optimizer that made ``opt_state``.
      opt_state: its state for a larger params tree.
      params: the remaining params (same paths and shapes as in the larger tree).

    Returns:
      ``tx``'s state for ``params``.
    """
    template = jax.eval_shape(tx.init, params)
    wanted, treedef = _by_path(template)
    old, _ = _by_path(opt_state)
    leaves = []
    for path, spec in wanted.items():
        if path not in old:
            raise ValueError(
                f"optimizer state has no leaf at {path} (shape {spec.shape}); was it made by "
                "this optimizer for a params tree that holds these layers?"
            )
        leaf = old[path]
        if getattr(leaf, "shape", None) != spec.shape:
            raise ValueError(
                f"optimizer state leaf {path} has shape {getattr(leaf, 'shape', None)}, the "
                f"params need {spec.shape}"
            )
        leaves.append(leaf)
    return jax.tree.unflatten(treedef, leaves)
