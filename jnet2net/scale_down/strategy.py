"""Scale-down as a strategy of :func:`jnet2net.train.fit`: ``fit(..., scale_down=config)``.

:class:`ScaleDownSteps` is the :class:`~jnet2net.train.steppers.Stepper` that ``fit`` calls:
before the run it compiles every candidate cut (:func:`~jnet2net.scale_down.runners.
compile_runners`) and plans the freezes on the compute target; each step runs the current
cut's executable; after a step it may run a readiness check; before a step whose cut the
plan moves it freezes the stages (recalibration, cut, cache) as an event; its run state is a
:class:`ScaleDownCheckpoint`, from which ``fit(state=...)`` continues bitwise. The run state
and result types are in :mod:`~jnet2net.scale_down.results`, the run's closing summary in
:mod:`~jnet2net.scale_down.summary`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax.core import unfreeze
from jax.sharding import Mesh

from jnet2net.data.dataset import Dataset
from jnet2net.scale_down import cache as cache_lib
from jnet2net.scale_down.config import ScaleDownConfig
from jnet2net.scale_down.policy import (
    NEVER,
    FreezePlan,
    compute_fraction,
    cut_at,
    layer_freeze_steps,
    layer_lr_scale,
    plan_freezes,
    step_times,
)
from jnet2net.scale_down.results import ScaleDownCheckpoint, ScaleDownResult
from jnet2net.scale_down.runners import (
    Compiler,
    RunSetup,
    abstract_full_state,
    compile_runners,
    compiled_scores,
    freeze_stages,
    rebuild_cache,
    trained_from,
)
from jnet2net.scale_down.scores import empty_history, read_check
from jnet2net.scale_down.stages import candidate_cuts, score_groups
from jnet2net.scale_down.steps import move_cut, whole_variables
from jnet2net.scale_down.summary import scale_down_summary
from jnet2net.train.config import TrainConfig
from jnet2net.train.loop import fit
from jnet2net.train.sharding import put_replicated
from jnet2net.train.state import TrainState, create_train_state
from jnet2net.train.steppers import Stepper
from jnet2net.train.steps import with_compute_dtype

__all__ = [
    "ScaleDownCheckpoint",
    "ScaleDownResult",
    "ScaleDownSteps",
    "fit_scale_down",
    "scale_down_steps",
]

Record = dict[str, Any]


def scale_down_steps(
    model: nn.Module,
    config: TrainConfig,
    scale_config: Any,
    train: Dataset,
    mesh: Mesh,
    steps_per_epoch: int,
    *,
    state: Any = None,
    variables: Any = None,
    precompile: bool = True,
) -> tuple[ScaleDownSteps, TrainState]:
    """The stepper of a scale-down ``fit`` and the suffix state it starts from (replicated):
    from ``state`` (a :class:`ScaleDownCheckpoint`), else from ``variables`` or a fresh init.

    ``model`` has ``layer_names()`` and ``start``/``stop`` (VGG, ResNet); the other
    arguments are ``fit``'s (``precompile``: :class:`ScaleDownSteps`).

    Raises:
      TypeError: ``scale_config`` or ``state`` has the wrong type, or ``model`` has no
        ``layer_names()``.
      ValueError: the config does not fit the network.
    """
    if not isinstance(scale_config, ScaleDownConfig):
        raise TypeError(f"scale_down must be a ScaleDownConfig, got {type(scale_config).__name__}")
    if not hasattr(model, "layer_names"):
        raise TypeError(f"{type(model).__name__} has no layer_names(): it cannot be cut")
    if state is not None and not isinstance(state, ScaleDownCheckpoint):
        raise TypeError(
            "state must be a ScaleDownCheckpoint with scale_down (a scale-down fit's "
            f"result.state), got {type(state).__name__}"
        )
    if state is not None:
        suffix, frozen = put_replicated((state.state, state.frozen), mesh)
    else:
        # Plain dicts: the steps return dicts, and each cut's step is compiled for one tree.
        variables = None if variables is None else unfreeze(variables)
        example = np.zeros((1, *train.image_shape), np.uint8)
        fresh = create_train_state(
            model, config, example, variables=variables, steps_per_epoch=steps_per_epoch
        )
        suffix, frozen = move_cut(model, put_replicated(fresh, mesh), {}, 0)
    steps = ScaleDownSteps(
        model, config, scale_config, train, mesh, steps_per_epoch, frozen, state, precompile
    )
    return steps, suffix


class ScaleDownSteps(Stepper):
    """The scale-down :class:`~jnet2net.train.steppers.Stepper` (see the module docstring).

    Holds the frozen prefix, the cache, the plan and the readiness checks of one run.

    With ``precompile`` (and one process, a fresh run, candidate cuts) only cut 0's step is
    compiled before the first step; the candidates' steps, cache moves and recalibrations
    compile in a background thread while training runs, and the plan (which needs their
    FLOPs) is made when they are done, at the latest before step ``not_before - ramp - 1``.
    Until then the plan freezes nothing; readiness checks before ``not_before - ramp`` do
    not count (:func:`~jnet2net.scale_down.policy.update_plan`), so training is the same
    step for step as when everything compiles first (``precompile=False``).
    """

    event_total = "move_s"

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        scale_config: ScaleDownConfig,
        train: Dataset,
        mesh: Mesh,
        steps_per_epoch: int,
        frozen: dict,
        resume: ScaleDownCheckpoint | None = None,
        precompile: bool = True,
    ) -> None:
        self.model, self.config, self.scale_config = model, config, scale_config
        self.train, self.mesh, self.spe, self.frozen = train, mesh, steps_per_epoch, frozen
        self.names = tuple(model.layer_names())
        self.cuts = candidate_cuts(model, scale_config.max_stages)
        self.groups = score_groups(model)
        self.total_steps = config.epochs * steps_per_epoch
        self.resume = resume
        self.scores = empty_history([g.name for g in self.groups])
        self.snapshot: Any = None
        self.pending: tuple[int, Any] | None = None
        self.events: list[Record] = []
        self.segments: list[tuple[int, int, float]] = []  # (cut, steps, seconds)
        self.frozen_now: list[str] = []
        self.move_flops = 0.0
        self.cache: cache_lib.ActivationCache | None = None
        self.precompile = precompile
        self.background_compiler: Compiler | None = None
        self.plan_due = 0
        self.totals: dict[str, float] = {}

    @property
    def step_flops(self) -> float:
        return self.runner.step.flops

    def begin(self, state: TrainState, data: Any, totals: dict[str, float]) -> None:
        images, labels, order = data
        self.images, self.labels = images, labels
        mesh, config, scale_config = self.mesh, self.config, self.scale_config
        budget = scale_config.cache_max_bytes
        if budget is None:  # the cache is sharded: each device holds its share
            per_device = cache_lib.device_cache_budget(mesh.devices.flat[0])
            budget = None if per_device is None else per_device * mesh.size
        times = step_times(scale_config, self.total_steps)
        setup = RunSetup(
            with_compute_dtype(self.model, config.compute_dtype),
            config,
            scale_config,
            self.train,
            images,
            labels,
            mesh,
            self.spe,
            times.ramp,
            layer_lr_scale(self.cuts, len(self.names), scale_config.lr_boost),
            budget,
        )
        self.totals = totals
        compiler = Compiler(mesh.size)
        never = put_replicated(np.full((len(self.names),), NEVER, np.int32), mesh)
        full_state = abstract_full_state(state, self.frozen, mesh)
        resume = self.resume
        background = (
            self.precompile and resume is None and bool(self.cuts) and jax.process_count() == 1
        )
        cuts = () if background else self.cuts
        self.runners = compile_runners(setup, full_state, cuts, order, never, compiler)
        self.score_fn = None
        if scale_config.ready_ratio is not None and self.cuts:
            params = full_state.params
            self.score_fn = compiler(compiled_scores(self.names), params, params)
        if background:  # the candidates compile while cut 0 trains
            self.background_compiler = Compiler(mesh.size)
            self.run_in_background(
                compile_runners,
                setup,
                full_state,
                self.cuts,
                order,
                never,
                self.background_compiler,
                with_full=False,
            )
            self.plan_due = max(0, times.not_before - times.ramp - 1)
            none = (NEVER,) * len(self.cuts)  # freezes nothing until the plan is made
            self.plan = FreezePlan(none, none, (False,) * len(self.cuts))
            self.planned_compute = 1.0
        elif resume is None:
            self._make_plan()
        else:
            self.plan, self.scores, self.events = resume.plan, resume.scores, list(resume.events)
            totals.update({k: v for k, v in resume.totals.items() if k in totals})
            self.move_flops = resume.totals.get("move_flops", 0.0)
            if resume.snapshot is not None:
                self.snapshot = put_replicated(resume.snapshot, mesh)
            if resume.pending_norms is not None:
                self.pending = (resume.pending_step, put_replicated(resume.pending_norms, mesh))
            step_costs, move_costs = self._costs()
            self.planned_compute = compute_fraction(
                step_costs, self.plan.deadlines, self.total_steps, move_costs
            )
        self._set_freeze_steps()
        totals["compile_s"] += compiler.seconds
        cut = trained_from(self.model, state)
        self.runner = next(r for r in self.runners if r.cut == cut)
        if self.runner.mode == "cache":
            self.cache = rebuild_cache(self.model, self.runners, cut, self.frozen, images)
        self._set_args()

    def _costs(self) -> tuple[list[float], list[float]]:
        """``(FLOPs per step of each runner, one-off FLOPs of each freeze)``."""
        return [r.step.flops for r in self.runners], [r.move_flops for r in self.runners[1:]]

    def _make_plan(self) -> None:
        """The plan on the compute target (the runners' FLOPs), and its compute fraction."""
        step_costs, move_costs = self._costs()
        self.plan = plan_freezes(
            step_costs, self.total_steps, self.scale_config, move_flops=move_costs
        )
        self.planned_compute = compute_fraction(
            step_costs, self.plan.deadlines, self.total_steps, move_costs
        )

    def _finish_compiles(self) -> None:
        """Waits for the background compiles (if any), then makes the plan."""
        if self.background is None:
            return
        runners = self.background.result()  # re-raises what went wrong there
        self.background = None
        self.runners = [self.runners[0], *runners]
        self.totals["background_compile_s"] += self.background_compiler.seconds
        counted = self.plan  # the readiness checks so far, counted against no freezes
        self._make_plan()
        self.plan = self.plan._replace(
            candidate=counted.candidate, ready_checks=counted.ready_checks
        )
        self._set_freeze_steps()

    def _set_freeze_steps(self) -> None:
        steps = layer_freeze_steps(self.plan, self.cuts, len(self.names))
        self.freeze_at = put_replicated(steps, self.mesh)

    def _set_args(self) -> None:
        if self.runner.mode == "cache":
            self.args = (self.cache.activations, self.labels)
        else:
            self.args = (self.frozen, self.images, self.labels)

    def due(self, step: int) -> bool:
        if self.background is not None and (step >= self.plan_due or self.background.done()):
            self._finish_compiles()
        return cut_at(self.plan, self.cuts, step) != self.runner.cut

    def event(self, step: int, state: TrainState, data: Any) -> tuple[TrainState, Record]:
        """Freezes the stages up to the plan's cut at ``step`` (their ramps are over):
        recalibration, cut, cache."""
        t_start = time.perf_counter()
        old, target = self.runner.cut, cut_at(self.plan, self.cuts, step)
        moved = [r for r in self.runners if old < r.cut <= target]
        state, self.frozen, self.cache = freeze_stages(
            self.model, moved, state, self.frozen, self.cache, self.images, data[2]
        )
        self.runner = moved[-1]
        self._set_args()
        flops = sum(r.move_flops for r in moved)
        self.move_flops += flops
        jax.block_until_ready((state, self.frozen, self.args))
        layers = list(self.names[old : self.runner.cut])
        self.frozen_now += layers
        early = [e for c, e in zip(self.cuts, self.plan.early, strict=True) if old < c <= target]
        event = {
            "step": step,
            "epoch": step / self.spe,
            "from_cut": old,
            "to_cut": self.runner.cut,
            "layers": layers,
            "mode": self.runner.mode,
            "early": any(early),
            "move_s": time.perf_counter() - t_start,
        }
        self.events.append(event)
        record = {k: v for k, v in event.items() if k not in ("step", "move_s")}
        return state, {"event": "freeze", **record, "event_flops": flops}

    def step(self, state: TrainState, data: Any) -> tuple[TrainState, Any]:
        return self.runner.step.call(state, *self.args, data[2], self.freeze_at)

    def after_step(self, step: int, state: TrainState) -> None:
        """A readiness check every ``check_every`` steps: reads the previous check's norms
        (long computed) and starts this one's; no host sync waits for the steps in flight."""
        if self.score_fn is None or (step + 1) % self.scale_config.check_every:
            return
        current = whole_variables(self.frozen, state)["params"]
        if self.snapshot is None:
            _, self.snapshot = self.score_fn.call(current, current)
            return
        if self.pending is not None:
            before = self.plan.freeze_steps
            self.plan, self.scores = read_check(
                self.plan,
                self.scores,
                self.pending,
                step + 1,
                self.groups,
                self.scale_config,
                self.total_steps,
            )
            if self.plan.freeze_steps != before:  # a freeze came forward
                self._set_freeze_steps()
        norms, self.snapshot = self.score_fn.call(self.snapshot, current)
        norms.copy_to_host_async()
        self.pending = (step + 1, norms)

    def segment(self, steps: int, seconds: float) -> None:
        self.segments.append((self.runner.cut, steps, seconds))

    def variables(self, state: TrainState) -> dict:
        return whole_variables(self.frozen, state)

    def fields(self, state: TrainState, steps: int) -> Record:
        frozen_now, self.frozen_now = self.frozen_now, []
        return {
            "cut": self.runner.cut,
            "trained_layers": len(self.names) - self.runner.cut,
            "trained_params": _num_params(state.params),
            "frozen_now": frozen_now,
            "mode": self.runner.mode,
            "augment": self.runner.augment,
            "full_epoch_flops": self.runners[0].step.flops * steps,
            "cache_bytes": self.cache.nbytes if self.cache is not None else 0,
        }

    def run_state(self, state: TrainState, totals: dict[str, float]) -> ScaleDownCheckpoint:
        self._finish_compiles()  # a checkpoint holds the plan
        pending = self.pending
        return ScaleDownCheckpoint(
            state,
            self.frozen,
            self.plan,
            self.scores,
            self.snapshot,
            None if pending is None else pending[0],
            None if pending is None else pending[1],
            {**totals, "move_flops": self.move_flops},
            list(self.events),
        )

    def finish(
        self, state: TrainState, history: list[Record], totals: dict[str, float]
    ) -> tuple[ScaleDownResult, Record]:
        self._finish_compiles()
        steps = int(state.step)
        variables = whole_variables(self.frozen, state)
        epochs = [r for r in history if "epoch_s" in r]
        summary = scale_down_summary(self, steps, totals, epochs, _num_params(variables["params"]))
        result = ScaleDownResult(
            state,
            self.frozen,
            variables,
            self.runner.cut,
            [r for r in history if "event" not in r],
            summary,
            self.scores,
            self.plan,
            self.run_state(state, totals),
        )
        return result, {"step": steps, "summary": summary}


def _num_params(params: Any) -> int:
    return sum(int(leaf.size) for leaf in jax.tree.leaves(params))


def fit_scale_down(
    model: nn.Module,
    train: Dataset,
    test: Dataset | None,
    train_config: TrainConfig,
    scale_config: ScaleDownConfig | None = None,
    *,
    variables: Any = None,
    mesh: Mesh | None = None,
    on_epoch_end: Callable[[TrainState, Record], None] | None = None,
    max_steps: int | None = None,
    resume: ScaleDownCheckpoint | None = None,
    on_step: Callable[[int], None] | None = None,
) -> ScaleDownResult:
    """``train.fit(model, train, test, train_config, scale_down=scale_config, ...).scale_down``.

    ``scale_config`` defaults to ``ScaleDownConfig()``; ``resume`` is fit's ``state`` (a
    :attr:`ScaleDownResult.checkpoint`); ``on_epoch_end(state, record)`` gets the trained
    suffix's state (copy what you keep: the next step donates it).
    """
    scale_config = ScaleDownConfig() if scale_config is None else scale_config
    if not isinstance(scale_config, ScaleDownConfig):
        name = type(scale_config).__name__
        raise TypeError(f"scale_config must be a ScaleDownConfig, got {name}")
    if resume is not None and not isinstance(resume, ScaleDownCheckpoint):
        raise TypeError(f"resume must be a ScaleDownCheckpoint, got {type(resume).__name__}")
    if resume is not None and variables is not None:
        raise ValueError("pass variables or resume, not both")
    callback = None
    if on_epoch_end is not None:

        def callback(run: ScaleDownCheckpoint, record: Record) -> None:
            on_epoch_end(run.state, record)

    return fit(
        model,
        train,
        test,
        train_config,
        scale_down=scale_config,
        state=resume,
        variables=variables,
        mesh=mesh,
        on_epoch_end=callback,
        max_steps=max_steps,
        on_step=on_step,
    ).scale_down
