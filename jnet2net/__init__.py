"""jnet2net: grow, reuse and scale down convolutional networks in JAX/Flax.

The public API::

    new_model, new_vars = jnet2net.widen(model, variables, widths=(32, 64, 128), key=key)
    new_model, new_vars = jnet2net.deepen(model, variables, depths=(3, 3, 3), key=key)
    jnet2net.assert_function_preserved(model, variables, new_model, new_vars, xs)
    dst_vars, report = jnet2net.transfer(src_model, src_vars, dst_model, key=key)

Training (``jnet2net.train``), Learn&Drop scale-down (``jnet2net.scale_down``), Orbax
checkpoints (``jnet2net.checkpoint``) and data (``jnet2net.data``) are subpackages.
"""

from jnet2net import models, reuse, surgery
from jnet2net.grow import GroupMapping, apply_widening, deepen, widen, widening_plan
from jnet2net.models import VGG, ResNet, model_config, model_from_config, preset
from jnet2net.reuse import TransferReport, transfer, transfer_plan
from jnet2net.variables import check_variables
from jnet2net.verify import assert_function_preserved, output_error

__version__ = "0.1.0"

__all__ = [
    "GroupMapping",
    "ResNet",
    "TransferReport",
    "VGG",
    "apply_widening",
    "assert_function_preserved",
    "check_variables",
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
