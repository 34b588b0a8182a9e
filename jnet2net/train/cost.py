"""FLOPs of compiled steps from XLA's cost analysis, and compiled steps cached by signature.

jax 0.10 returns a dict with a ``'flops'`` entry; older versions a list of such dicts (one
per program), some backends ``None``: :func:`flops_from_cost` reads all of them and gives
``nan`` when no count is reported. The analysis of a step compiled for a mesh reports one
device's share, so :func:`compile_step` multiplies it by the mesh size. On GPUs XLA's
analysis leaves out the convolutions and matrix products that run as cuDNN/cuBLAS calls
(a ResNet-50 step measured at ~5% of its arithmetic), so there the count is taken on the
traced program instead (:func:`jaxpr_flops`).
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

#: Backends whose compiled-program analysis counts convolutions and matrix products.
XLA_COUNTING_PLATFORMS = frozenset({"cpu", "tpu"})


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


#: Primitives whose every output element costs one FLOP, as in XLA's count (which keeps
#: transcendentals such as exp, log, tanh and rsqrt apart, not in its FLOPs).
_ELEMENTWISE = frozenset((
    "add", "add_any", "sub", "mul", "div", "rem", "max", "min", "neg", "abs", "sign", "square",
    "integer_pow", "floor", "ceil", "round", "is_finite", "select_n", "clamp", "nextafter",
    "eq", "ne", "lt", "le", "gt", "ge", "and", "or", "not", "xor",
))  # fmt: skip
#: Pooling windows.
_WINDOW_REDUCTIONS = frozenset(("reduce_window_max", "reduce_window_min", "reduce_window_sum"))
#: Reductions: one FLOP per input element.
_REDUCTIONS = frozenset(
    ("reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax", "argmin")
)


def _size(aval: Any) -> int:
    return math.prod(getattr(aval, "shape", ()))


def _sub_jaxprs(params: dict[str, Any]) -> Iterator[Any]:
    """The jaxprs an equation's params hold (a call's body, a loop's, a cond's branches)."""
    for value in params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, jax.extend.core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jax.extend.core.Jaxpr):
                yield item


def _valid_taps(
    size: int, out: int, taps: int, stride: int, dilation: int, low: int, lhs_dilation: int
) -> int:
    """(output, kernel tap) pairs of one spatial dim that read an input element (not the
    padding, nor the holes of an input dilated by ``lhs_dilation``)."""
    positions = np.arange(out)[:, None] * stride + np.arange(taps)[None, :] * dilation - low
    inside = (positions >= 0) & (positions <= (size - 1) * lhs_dilation)
    return int((inside & (positions % lhs_dilation == 0)).sum())


def _conv_flops(eqn: Any) -> float:
    """Two FLOPs per multiply-add of taps that read the input, not its padding (as XLA)."""
    params = eqn.params
    lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
    out = eqn.outvars[0].aval.shape
    numbers = params["dimension_numbers"]
    macs = _size(eqn.outvars[0].aval) // math.prod(out[d] for d in numbers.out_spec[2:])
    macs *= rhs[numbers.rhs_spec[1]]  # input features per group
    for i, (low, _) in enumerate(params["padding"]):
        macs *= _valid_taps(
            lhs[numbers.lhs_spec[2 + i]],
            out[numbers.out_spec[2 + i]],
            rhs[numbers.rhs_spec[2 + i]],
            params["window_strides"][i],
            params["rhs_dilation"][i],
            low,
            params["lhs_dilation"][i],
        )
    return 2.0 * macs


def _eqn_flops(eqn: Any) -> float:
    name, params = eqn.primitive.name, eqn.params
    out = sum(_size(v.aval) for v in eqn.outvars)
    if name == "dot_general":
        (contract, _), _ = params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        return 2.0 * out * math.prod(lhs[d] for d in contract)
    if name == "conv_general_dilated":
        return _conv_flops(eqn)
    if name in _ELEMENTWISE:
        return float(out)
    if name in _REDUCTIONS:
        return float(sum(_size(v.aval) for v in eqn.invars))
    if name in _WINDOW_REDUCTIONS:  # pooling: one FLOP per window element of each output
        return float(out * math.prod(params["window_dimensions"]))
    inner = [_jaxpr_flops(j) for j in _sub_jaxprs(params)]
    if not inner:
        return 0.0
    if name == "cond":
        return max(inner)
    if name == "shard_map":  # the body runs on every device of the mesh
        return float(params["mesh"].size) * sum(inner)
    return float(params.get("length", 1)) * sum(inner)  # scan: the body once per iteration


def _jaxpr_flops(jaxpr: Any) -> float:
    return sum(_eqn_flops(eqn) for eqn in jaxpr.eqns)


def jaxpr_flops(fn: Callable[..., Any], *args: Any) -> float:
    """FLOPs of one call ``fn(*args)`` counted on its traced program (no backend needed).

    Matrix products and convolutions count two FLOPs per multiply-add (as XLA does; a
    convolution's taps on zero padding or on the holes of a dilated input do not count),
    arithmetic and comparisons one per output element (transcendentals none, as in XLA),
    reductions one per input element, pooling one per window element. Nested programs
    count once: a scan's body once per iteration, a cond's dearest branch, a while loop's
    body once, a ``shard_map`` body once per device. Data movement counts nothing.

    On CPU this is within 2% of XLA's analysis of ResNet and VGG training steps (ResNet
    forward passes agree exactly). On GPUs XLA's analysis of a compiled program leaves out
    the convolutions and matrix products that run as cuDNN/cuBLAS calls, so
    :func:`compile_step` counts this instead there.

    Args:
      fn: a jax-traceable function of arrays.
      *args: arrays or ``jax.ShapeDtypeStruct`` trees (only shapes and dtypes are used).
    """
    return _jaxpr_flops(jax.make_jaxpr(fn)(*abstract_args(args)).jaxpr)


def platform_of(args: Any) -> str:
    """The platform of the first array in ``args`` with a sharding (else the default)."""
    for leaf in jax.tree.leaves(args):
        sharding = getattr(leaf, "sharding", None)
        if sharding is not None:
            return next(iter(sharding.device_set)).platform
    return jax.default_backend()


def abstract_args(tree: Any) -> Any:
    """``tree`` with every array replaced by an unsharded ``jax.ShapeDtypeStruct``."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)


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
      devices: devices of the mesh it runs on; the per-device FLOPs of XLA's analysis are
        multiplied by it (on GPUs the traced program is counted whole, see
        :func:`jaxpr_flops`).

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
        if platform_of(args) in XLA_COUNTING_PLATFORMS:
            flops = flops_from_cost(compiled.cost_analysis()) * devices
        else:  # cuDNN/cuBLAS calls are invisible to XLA's analysis: count the program
            flops = jaxpr_flops(jitted, *args)
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
