"""Training-time scale-down: freeze a growing prefix of stages within a compute budget.

Candidate cuts sit at stage boundaries; the last stage and the head keep training. The
user states a compute target (the run's training FLOPs over full training's); every
candidate cut's step is compiled before training and its FLOPs read from the executable,
which gives each stage's latest freeze step. A readiness score, relative across stages,
may only bring a freeze earlier. A freezing stage's learning rate ramps to zero first
(FreezeOut) and its BatchNorm statistics are recalibrated; then it runs without gradient,
or from a cache of its outputs sharded over the devices::

    from jnet2net.scale_down import ScaleDownConfig

    result = train.fit(model, train_set, test_set, TrainConfig(epochs=30),
                       scale_down=ScaleDownConfig(target_compute=0.6, mode="cache"))
    run = result.scale_down
    run.variables                  # the whole network, for model.apply
    run.summary["freeze_steps"]    # when each candidate stage froze
    run.summary["flops_ratio"], run.summary["total_s"]
    # result.state (also what on_epoch_end gets) continues the run bitwise:
    # train.fit(..., scale_down=..., state=result.state)

It is ``train.fit``'s loop (records, evaluation, log, resume); the strategy it runs is
:mod:`jnet2net.scale_down.strategy`. ``fit_scale_down`` is the same run under its first
name and result type. ``ScaleDownConfig(max_stages=0, target_compute=1.0)`` trains the full
network with the same loop and log: the baseline to compare with.
"""

from jnet2net.scale_down.cache import ActivationCache, build_cache, cache_fn, extend_cache
from jnet2net.scale_down.config import ScaleDownConfig
from jnet2net.scale_down.flops import StepFlops, cache_flops, flops_from_cost, step_flops
from jnet2net.scale_down.policy import (
    NEVER,
    FreezePlan,
    compute_fraction,
    cut_at,
    layer_freeze_steps,
    layer_lr_scale,
    plan_freezes,
    ramp_multipliers,
    step_times,
    update_plan,
)
from jnet2net.scale_down.recalibrate import recalibration_fn
from jnet2net.scale_down.runners import CutRunner, rebuild_cache
from jnet2net.scale_down.scores import (
    ScoreHistory,
    change_norms,
    empty_history,
    group_changes,
    readiness,
    record_scores,
)
from jnet2net.scale_down.split import (
    merge_variables,
    prefix_apply,
    shrink_opt_state,
    split_variables,
    suffix_apply,
)
from jnet2net.scale_down.stages import Stage, candidate_cuts, model_stages, score_groups
from jnet2net.scale_down.steps import (
    make_scaled_train_step,
    move_cut,
    suffix_update_fn,
    whole_variables,
)
from jnet2net.scale_down.strategy import (
    ScaleDownCheckpoint,
    ScaleDownResult,
    ScaleDownSteps,
    fit_scale_down,
)

__all__ = [
    "NEVER",
    "ActivationCache",
    "CutRunner",
    "FreezePlan",
    "ScaleDownCheckpoint",
    "ScaleDownConfig",
    "ScaleDownResult",
    "ScaleDownSteps",
    "ScoreHistory",
    "Stage",
    "StepFlops",
    "build_cache",
    "cache_flops",
    "cache_fn",
    "candidate_cuts",
    "change_norms",
    "compute_fraction",
    "cut_at",
    "empty_history",
    "extend_cache",
    "fit_scale_down",
    "flops_from_cost",
    "group_changes",
    "layer_freeze_steps",
    "layer_lr_scale",
    "make_scaled_train_step",
    "merge_variables",
    "model_stages",
    "move_cut",
    "plan_freezes",
    "prefix_apply",
    "ramp_multipliers",
    "readiness",
    "rebuild_cache",
    "recalibration_fn",
    "record_scores",
    "score_groups",
    "shrink_opt_state",
    "split_variables",
    "step_flops",
    "step_times",
    "suffix_apply",
    "suffix_update_fn",
    "update_plan",
    "whole_variables",
]
