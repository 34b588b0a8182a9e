"""The summary that ends a scale-down run: its compute and seconds against full training for
as many steps (``ScaleDownResult.summary``, the ``{"step", "summary"}`` line of the log)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from jnet2net.scale_down.policy import NEVER
from jnet2net.scale_down.runners import CutRunner

if TYPE_CHECKING:
    from jnet2net.scale_down.strategy import ScaleDownSteps

Record = dict[str, Any]


def _ratio(a: float, b: float) -> float | None:
    return a / b if b and math.isfinite(a) and math.isfinite(b) else None


def _json_float(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def steady_step_s(segments: list[tuple[int, int, float]], cut: int) -> float | None:
    """Seconds per step at ``cut`` over its timed segments (the run's first one left out
    when there are others: it holds the first steps' warm-up)."""
    timed = [(steps, seconds) for c, steps, seconds in segments[1:] if c == cut and steps]
    if not timed:
        timed = [(steps, seconds) for c, steps, seconds in segments[:1] if c == cut and steps]
    if not timed:
        return None
    return sum(seconds for _, seconds in timed) / sum(steps for steps, _ in timed)


def scale_down_summary(
    run: ScaleDownSteps,
    steps: int,
    totals: dict[str, float],
    epochs: list[Record],
    total_params: int,
) -> Record:
    """The run against full training for ``steps`` steps (FLOPs measured, seconds estimated
    from each cut's steady step time)."""
    runners: Sequence[CutRunner] = run.runners
    full_flops = runners[0].step.flops * steps
    flops_ratio = _ratio(totals["train_flops"], full_flops)
    step_s = {str(r.cut): steady_step_s(run.segments, r.cut) for r in runners}
    full_step_s = step_s["0"]
    train_s = totals["train_s"] + totals["move_s"]  # the freezes are part of the training
    full_train_s = None if full_step_s is None else full_step_s * steps
    last = epochs[-1] if epochs else {}
    cut, plan = run.runner.cut, run.plan
    return {
        "epochs": len(epochs),
        "steps": steps,
        "cut": cut,
        "frozen": list(run.names[:cut]),
        "trained": list(run.names[cut:]),
        "trained_params": last.get("trained_params"),
        "total_params": total_params,
        "candidate_cuts": [r.cut for r in runners[1:]],
        "deadlines": [None if d == NEVER else d for d in plan.deadlines],
        "freeze_steps": [None if f == NEVER else f for f in plan.freeze_steps],
        "early": list(plan.early),
        "planned_compute": run.planned_compute,
        "events": run.events,
        "cut_step_flops": {str(r.cut): _json_float(r.step.flops) for r in runners},
        "cut_step_s": step_s,
        "train_flops": _json_float(totals["train_flops"]),
        "full_train_flops": _json_float(full_flops),
        "flops_ratio": flops_ratio,
        "flops_saved": None if flops_ratio is None else 1.0 - flops_ratio,
        "move_flops": _json_float(run.move_flops),
        "train_s": totals["train_s"],
        "move_s": totals["move_s"],
        "compile_s": totals["compile_s"],
        "total_s": train_s + totals["compile_s"],
        "full_step_s": full_step_s,
        "full_train_s_estimate": full_train_s,
        "speedup_estimate": None if not full_train_s or not train_s else full_train_s / train_s,
        "test_acc": last.get("test_acc"),
        "test_loss": last.get("test_loss"),
    }
