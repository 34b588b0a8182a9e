"""FLOPs of compiled steps from XLA's cost analysis, and compiled steps cached by signature.

jax 0.10 returns a dict with a ``'flops'`` entry; older versions a list of such dicts (one
per program), some backends ``None``: :func:`flops_from_cost` reads all of them and gives
``nan`` when no count is reported. The analysis of a step compiled for a mesh reports one
device's share, so :func:`compile_step` multiplies it by the mesh size.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax


def flops_from_cost(cost: Any) -> float:
    """The ``'flops'`` of a cost analysis: a dict, a list of dicts (summed), or ``None``.

    Returns:
      the count as a float; ``nan`` when nothing (or a negative, i.e. unknown, count) is
      reported.
    """
    if cost is None:
        return math.nan
    if isinstance(cost, Mapping):
        value = cost.get("flops")
        if value is None:
            return math.nan
        value = float(value)
        return value if value >= 0 else math.nan
    if isinstance(cost, Sequence) and not isinstance(cost, (str, bytes)):
        if not cost:
            return math.nan
        return sum(flops_from_cost(c) for c in cost)
    raise TypeError(f"cost analysis must be a dict, a list of dicts or None, got {type(cost)}")


class CompiledStep(NamedTuple):
    """A step compiled ahead of time for one signature of arguments.

    Attributes:
      call: the executable; call it with arguments of the signature it was compiled for.
      compile_s: seconds spent lowering and compiling it.
      flops: training FLOPs of one call over the whole mesh (``nan`` when unknown).
    """

    call: Callable[..., Any]
    compile_s: float
    flops: float


_CACHE: collections.OrderedDict[Any, CompiledStep] = collections.OrderedDict()
_CACHE_SIZE = 16
_LOCK = threading.Lock()  # one compile at a time per signature, from any thread


def signature(args: Any) -> Any:
    """A hashable signature of a tree of arrays: structure, shapes, dtypes, shardings."""
    leaves, treedef = jax.tree.flatten(args)
    return treedef, tuple(
        (
            tuple(leaf.shape),
            str(leaf.dtype),
            getattr(leaf, "sharding", None),
            bool(getattr(leaf, "weak_type", False)),
        )
        for leaf in leaves
    )


def compile_step(jitted: Any, *args: Any, devices: int = 1) -> CompiledStep:
    """``jitted`` lowered and compiled for ``args`` (cached per function and signature).

    Args:
      jitted: a ``jax.jit``-wrapped function.
      *args: the arguments it will be called with (only their signature is used).
      devices: devices of the mesh it runs on; the per-device FLOPs are multiplied by it.

    Returns:
      The :class:`CompiledStep`; a cached one reports the compile seconds of its first
      build, and callers that count compiles should count only new entries
      (:func:`is_compiled`).
    """
    key = (jitted, signature(args), devices)
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        start = time.perf_counter()
        compiled = jitted.lower(*args).compile()
        compile_s = time.perf_counter() - start
        flops = flops_from_cost(compiled.cost_analysis()) * devices
        entry = CompiledStep(compiled, compile_s, flops)
        _CACHE[key] = entry
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
        return entry


def is_compiled(jitted: Any, *args: Any, devices: int = 1) -> bool:
    """Whether :func:`compile_step` holds an executable for these arguments (waits for a
    compile in progress)."""
    key = (jitted, signature(args), devices)
    with _LOCK:
        return key in _CACHE
