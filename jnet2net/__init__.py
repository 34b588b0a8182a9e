"""jnet2net: grow, reuse and scale down convolutional networks in JAX/Flax.

The public API::

    new_model, new_vars = jnet2net.widen(model, variables, widths=(32, 64, 128), key=key)
    new_model, new_vars = jnet2net.deepen(model, variables, depths=(3, 3, 3), key=key)
    jnet2net.assert_function_preserved(model, variables, new_model, new_vars, xs)
    dst_vars, report = jnet2net.transfer(src_model, src_vars, dst_model, key=key)

Training (``jnet2net.train``), Learn&Drop scale-down (``jnet2net.scale_down``), Orbax
checkpoints (``jnet2net.checkpoint``) and data (``jnet2net.data``) are subpackages.

Names are imported on first use, so ``import jnet2net.cli`` starts without loading JAX (the
command line installs its signal handlers before the seconds that importing JAX takes).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_EXPORTS = {
    "couplings": "jnet2net.discover",
    "GroupMapping": "jnet2net.grow",
    "apply_widening": "jnet2net.grow",
    "deepen": "jnet2net.grow",
    "widen": "jnet2net.grow",
    "widening_plan": "jnet2net.grow",
    "VGG": "jnet2net.models",
    "ResNet": "jnet2net.models",
    "ViT": "jnet2net.models",
    "model_config": "jnet2net.models",
    "model_from_config": "jnet2net.models",
    "preset": "jnet2net.models",
    "TransferReport": "jnet2net.reuse",
    "transfer": "jnet2net.reuse",
    "transfer_plan": "jnet2net.reuse",
    "check_variables": "jnet2net.variables",
    "assert_function_preserved": "jnet2net.verify",
    "output_error": "jnet2net.verify",
}
_SUBMODULES = ("models", "reuse", "surgery")

__all__ = [
    "GroupMapping",
    "ResNet",
    "TransferReport",
    "VGG",
    "ViT",
    "apply_widening",
    "assert_function_preserved",
    "check_variables",
    "couplings",
    "deepen",
    "model_config",
    "model_from_config",
    "models",
    "output_error",
    "preset",
    "reuse",
    "surgery",
    "transfer",
    "transfer_plan",
    "widen",
    "widening_plan",
]

if TYPE_CHECKING:
    from jnet2net import models, reuse, surgery
    from jnet2net.discover import couplings
    from jnet2net.grow import GroupMapping, apply_widening, deepen, widen, widening_plan
    from jnet2net.models import VGG, ResNet, ViT, model_config, model_from_config, preset
    from jnet2net.reuse import TransferReport, transfer, transfer_plan
    from jnet2net.variables import check_variables
    from jnet2net.verify import assert_function_preserved, output_error


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
