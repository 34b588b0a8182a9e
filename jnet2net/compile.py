"""Programs that run once (growth, initialisation), compiled without XLA's slow passes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

#: XLA options for programs that run once: skip the expensive optimisation passes.
ONE_SHOT_COMPILER_OPTIONS = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
}


def run_once(fn: Callable[..., Any], static: dict[str, Any], **dynamic: Any) -> Any:
    """``fn(**static, **dynamic)`` as one program compiled without XLA's slow passes.

    Growth runs once: compiled whole it is several times faster than op by op, and
    skipping the optimisation passes cuts the compile time several-fold again.
    """
    lowered = jax.jit(fn, static_argnames=tuple(static)).lower(**static, **dynamic)
    return lowered.compile(compiler_options=ONE_SHOT_COMPILER_OPTIONS)(**dynamic)
