"""Weight reuse between similar, not identical, networks.

::

    dst_variables, report = jnet2net.reuse.transfer(
        src_model, src_variables, dst_model, key=jax.random.key(0)
    )
    print(report)  # one row per destination leaf; totals; function-preserving or not
"""

from jnet2net.reuse.groups import GroupOp, GroupSpec
from jnet2net.reuse.layers import LayerSource
from jnet2net.reuse.layout import check_pair, describe, stage_slots
from jnet2net.reuse.plan import TransferPlan, transfer, transfer_plan
from jnet2net.reuse.report import LeafReport, TransferReport

__all__ = [
    "GroupOp",
    "GroupSpec",
    "LayerSource",
    "LeafReport",
    "TransferPlan",
    "TransferReport",
    "check_pair",
    "describe",
    "stage_slots",
    "transfer",
    "transfer_plan",
]
