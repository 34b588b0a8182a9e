"""Training-time scale-down (our reading of Learn&Drop): drop layers that stopped learning.

Scores say how much each layer's parameters still change; a policy drops a contiguous
prefix from training; the dropped prefix runs without gradient (or from a cache of its
outputs) and only the suffix is differentiated and optimised::

    from jnet2net.scale_down import ScaleDownConfig, fit_scale_down

    result = fit_scale_down(model, train, test, TrainConfig(epochs=30),
                            ScaleDownConfig(mode="cache"), variables=grown_variables)
    result.variables                  # the whole network, for model.apply
    result.history[-1]["cut"]         # layers dropped from training
    result.summary["flops_saved"], result.summary["speedup_estimate"]

``ScaleDownConfig(max_frozen=0)`` trains the full network with the same loop and log:
the baseline to compare with.
"""

from jnet2net.scale_down.cache import ActivationCache
from jnet2net.scale_down.config import ScaleDownConfig
from jnet2net.scale_down.flops import StepFlops, cache_flops, flops_from_cost, step_flops
from jnet2net.scale_down.loop import (
    ScaleDownResult,
    fit_scale_down,
    make_scaled_train_step,
    move_cut,
    suffix_update_fn,
)
from jnet2net.scale_down.policy import (
    PolicyState,
    cut_limit,
    initial_policy,
    replay_policy,
    update_policy,
)
from jnet2net.scale_down.scores import (
    ScoreHistory,
    empty_history,
    layer_change_scores,
    record_scores,
    still_learning,
)
from jnet2net.scale_down.split import (
    merge_variables,
    prefix_apply,
    shrink_opt_state,
    split_variables,
    suffix_apply,
)

__all__ = [
    "ActivationCache",
    "PolicyState",
    "ScaleDownConfig",
    "ScaleDownResult",
    "ScoreHistory",
    "StepFlops",
    "cache_flops",
    "cut_limit",
    "empty_history",
    "fit_scale_down",
    "flops_from_cost",
    "initial_policy",
    "layer_change_scores",
    "make_scaled_train_step",
    "merge_variables",
    "move_cut",
    "prefix_apply",
    "record_scores",
    "replay_policy",
    "shrink_opt_state",
    "split_variables",
    "step_flops",
    "still_learning",
    "suffix_apply",
    "suffix_update_fn",
    "update_policy",
]
