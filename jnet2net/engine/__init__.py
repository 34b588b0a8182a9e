"""One growth engine: unit operations on arrays and the plan that widen, deepen and transfer
build (:class:`GrowthPlan`, with ``apply(variables)`` and a linear ``map(tree)``)."""

from jnet2net.engine.ops import (
    UnitOp,
    chain,
    fold,
    identity,
    narrow,
    on_units,
    pad,
    replicate,
    split,
)
from jnet2net.engine.plan import (
    GroupStep,
    GrowthPlan,
    Source,
    deepening_plan,
    keep_empty_collections,
    run_groups,
)

__all__ = [
    "GroupStep",
    "GrowthPlan",
    "Source",
    "UnitOp",
    "chain",
    "deepening_plan",
    "fold",
    "identity",
    "keep_empty_collections",
    "narrow",
    "on_units",
    "pad",
    "replicate",
    "run_groups",
    "split",
]
