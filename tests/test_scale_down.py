"""Tests of jnet2net.scale_down: config, stages, budget policy, scores, split, caches, the loop."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math

import chex
import flax
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import TRACES  # tests/ is on sys.path
from jax.sharding import PartitionSpec

from jnet2net import checkpoint as checkpoint_lib
from jnet2net import widen
from jnet2net.data import from_arrays
from jnet2net.data.augment import augment, augment_choices, crop_at
from jnet2net.data.dataset import normalize
from jnet2net.models import VGG, ResNet, resnet18, vgg11
from jnet2net.scale_down import cache as cache_lib
from jnet2net.scale_down import fit_scale_down, make_scaled_train_step, move_cut
from jnet2net.scale_down.config import ScaleDownConfig
from jnet2net.scale_down.flops import (
    cache_flops,
    counted_flops,
    flops_from_cost,
    jaxpr_flops,
    step_flops,
)
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
from jnet2net.scale_down.saving import restore_run, save_run
from jnet2net.scale_down.scores import (
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
from jnet2net.scale_down.steps import flip_choices, suffix_update_fn, whole_variables
from jnet2net.train import (
    Grow,
    TrainConfig,
    create_train_state,
    fit,
    read_jsonl,
    steps_per_epoch,
)
from jnet2net.train.batches import augment_key, epoch_permutation
from jnet2net.train.sharding import data_mesh

IMAGE = (8, 8, 1)


def tiny_vgg() -> VGG:
    return VGG((1, 1), (4, 8), hidden_widths=(8,), num_classes=3)


def tiny_resnet() -> ResNet:
    return ResNet((1, 1), (4, 8), num_classes=3)


def init(model, batch: int = 4):
    x = jax.random.normal(jax.random.key(1), (batch, *IMAGE))
    return model.init(jax.random.key(0), x), x


class Mlp(flax.linen.Module):
    """Dense layers, then the head; no ``dtype`` field (it computes in float32)."""

    depth: int
    num_classes: int = 3

    def layer_names(self) -> tuple[str, ...]:
        return (*(f"hidden{i}" for i in range(self.depth)), "head")

    @flax.linen.compact
    def __call__(self, x, train=False, *, start=0, stop=None):
        names = self.layer_names()
        for name in names[start : len(names) if stop is None else stop]:
            x = x.reshape(x.shape[0], -1)
            if name == "head":
                return flax.linen.Dense(self.num_classes, name=name)(x)
            x = flax.linen.relu(flax.linen.Dense(8, name=name)(x))
        return x


# --- config ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"target_compute": 0.0}, ValueError, r"target_compute must be in \(0, 1\]"),
        ({"target_compute": 1.5}, ValueError, r"target_compute must be in \(0, 1\].*got 1.5"),
        ({"target_compute": "half"}, TypeError, "target_compute must be a number"),
        ({"not_before": 1.0}, ValueError, r"not_before must be in \[0, 1\) .*got 1.0"),
        ({"not_before": -0.1}, ValueError, r"not_before must be in \[0, 1\)"),
        ({"min_spacing": math.nan}, ValueError, "min_spacing must be finite"),
        ({"ramp": 1.2}, ValueError, r"ramp must be in \[0, 1\)"),
        ({"lr_boost": 0.0}, ValueError, "lr_boost must be > 0, got 0.0"),
        ({"lr_boost": "2"}, TypeError, "lr_boost must be a number"),
        ({"max_stages": -1}, ValueError, "max_stages must be >= 0, got -1"),
        ({"max_stages": 1.0}, TypeError, "max_stages must be an int"),
        ({"check_every": 0}, ValueError, "check_every must be positive"),
        ({"check_every": 2.5}, TypeError, "check_every must be an int"),
        ({"ready_ratio": 0.0}, ValueError, "ready_ratio must be > 0 or None, got 0.0"),
        ({"patience": 0}, ValueError, "patience must be positive, got 0"),
        ({"bn_batches": True}, TypeError, "bn_batches must be an int, got True"),
        ({"cache_views": 0}, ValueError, "cache_views must be positive, got 0"),
        ({"mode": "frozen"}, ValueError, "mode must be one of 'nograd', 'cache', got 'frozen'"),
        (
            {"cache_augment": "jitter"},
            ValueError,
            "cache_augment must be one of 'crop', 'views', 'flip', 'none'",
        ),
        ({"cache_max_bytes": -1}, ValueError, "cache_max_bytes must be >= 0"),
    ],
)
def test_config_rejects_bad_values(kwargs, error, message):
    with pytest.raises(error, match=message):
        ScaleDownConfig(**kwargs)


def test_config_accepts_numpy_numbers_and_stores_python_ones():
    config = ScaleDownConfig(
        check_every=np.int64(5),
        max_stages=np.int32(2),
        target_compute=np.float32(0.5),
        ready_ratio=np.int64(1),
        not_before=np.float64(0.25),
    )
    fields = dataclasses.asdict(config)
    assert json.loads(json.dumps(fields)) == fields  # e.g. checkpoint metadata
    assert type(config.check_every) is int and type(config.max_stages) is int
    assert type(config.target_compute) is float and config.target_compute == 0.5
    assert type(config.ready_ratio) is float
    assert config == ScaleDownConfig(
        check_every=5, max_stages=2, target_compute=0.5, ready_ratio=1.0, not_before=0.25
    )
    assert ScaleDownConfig(ready_ratio=None).ready_ratio is None
    with pytest.raises(TypeError, match=r"check_every must be an int, got (np\.)?True"):
        ScaleDownConfig(check_every=np.bool_(True))


# --- stages ----------------------------------------------------------------------------


def test_resnet_stages_join_the_stem_to_stage_0_and_leave_the_last_stage_training():
    model = resnet18(stage_widths=(4, 4, 4, 4))  # stem, 4 stages of 2 blocks, head
    names = model.layer_names()
    stages = model_stages(model)
    assert [s.name for s in stages] == ["stage0", "stage1", "stage2", "stage3"]
    assert [(s.start, s.stop) for s in stages] == [(0, 3), (3, 5), (5, 7), (7, 9)]
    assert names[0:3] == ("stem", "stage0_block0", "stage0_block1")
    assert candidate_cuts(model) == (3, 5, 7)  # never the last stage by default
    assert candidate_cuts(model, max_stages=4) == (3, 5, 7, 9)  # ... unless asked
    assert candidate_cuts(model, max_stages=1) == (3,)
    assert candidate_cuts(model, max_stages=0) == ()
    assert score_groups(model)[-1] == Stage("head", 9, 10)
    with pytest.raises(ValueError, match=r"max_stages=5 is more than the 4 stages ResNet has"):
        candidate_cuts(model, max_stages=5)


def test_vgg_stages_end_at_each_pooling_block_and_the_head_holds_the_dense_layers():
    model = vgg11(stage_widths=(2, 2, 2, 2, 2), hidden_widths=(4,))
    stages = model_stages(model)
    assert [(s.start, s.stop) for s in stages] == [(0, 1), (1, 2), (2, 4), (4, 6), (6, 8)]
    for stage in stages:  # a cut after a stage is after its pooling layer
        last = model.layer_names()[stage.stop - 1]
        assert last == f"{stage.name}_layer{model.stage_depths[int(stage.name[5:])] - 1}"
    assert candidate_cuts(model) == (1, 2, 4, 6)
    assert score_groups(model)[-1] == Stage("head", 8, 10)  # hidden0 and head


def test_a_model_without_stages_has_one_stage_per_layer_before_the_head():
    assert [(s.start, s.stop) for s in model_stages(Mlp(3))] == [(0, 1), (1, 2), (2, 3)]
    assert candidate_cuts(Mlp(3)) == (1, 2)
    assert candidate_cuts(Mlp(1)) == ()
    with pytest.raises(ValueError, match="needs at least one layer before the head"):
        model_stages(Mlp(0))


# --- budget policy -----------------------------------------------------------------------

#: Per-step FLOPs of a ResNet-like network: each frozen stage saves a quarter.
COSTS = (1.0, 0.75, 0.5, 0.25)


def budget(**changes) -> ScaleDownConfig:
    fields = {"target_compute": 0.55, "not_before": 0.3, "min_spacing": 0.1, "ramp": 0.0}
    return ScaleDownConfig(**{**fields, **changes})


def test_plan_freezes_as_late_as_the_compute_target_allows():
    # Freezes at s, s+100, s+200 of 1000 steps cost (s + 75 + 50 + 0.25 (800 - s)) / 1000.
    plan = plan_freezes(COSTS, 1000, budget(target_compute=0.55))
    assert plan.deadlines == plan.freeze_steps == (300, 400, 500)
    assert compute_fraction(COSTS, plan.deadlines, 1000) == pytest.approx(0.55)
    plan = plan_freezes(COSTS, 1000, budget(target_compute=0.56))  # s <= 313.3
    assert plan.deadlines == (313, 413, 513)
    assert compute_fraction(COSTS, (314, 414, 514), 1000) > 0.56  # one step later is over
    assert plan.early == (False, False, False)


def test_plan_freezes_counts_one_off_move_costs():
    # Each move costs 10 full steps: 30 more steps' worth -> s falls by 40 (30 / 0.75).
    plan = plan_freezes(COSTS, 1000, budget(target_compute=0.6), move_flops=(10.0,) * 3)
    free = plan_freezes(COSTS, 1000, budget(target_compute=0.6))
    assert free.deadlines[0] - plan.deadlines[0] == 40
    fraction = compute_fraction(COSTS, plan.deadlines, 1000, move_flops=(10.0,) * 3)
    assert fraction <= 0.6


def test_plan_freezes_with_a_loose_target_leaves_late_stages_training():
    plan = plan_freezes(COSTS, 1000, budget(target_compute=0.97))
    first = plan.deadlines[0]
    assert first < 1000 and plan.deadlines[1:] == tuple(
        NEVER if first + k * 100 >= 1000 else first + k * 100 for k in (1, 2)
    )
    assert NEVER in plan.deadlines
    assert compute_fraction(COSTS, plan.deadlines, 1000) <= 0.97
    assert plan_freezes(COSTS, 1000, budget(target_compute=1.0)).deadlines == (NEVER,) * 3


def test_plan_freezes_rejects_a_target_it_cannot_meet():
    # The earliest schedule (300, 400, 500) costs 0.55.
    with pytest.raises(ValueError, match=r"target_compute=0.5 cannot be met.* least 0.55"):
        plan_freezes(COSTS, 1000, budget(target_compute=0.5))
    with pytest.raises(ValueError, match=r"target_compute=0.9 cannot be met.* no stage"):
        plan_freezes((1.0,), 1000, budget(target_compute=0.9))
    assert plan_freezes((1.0,), 1000, budget(target_compute=1.0)).deadlines == ()
    with pytest.raises(ValueError, match=r"step_flops must be finite and > 0, got \[1.0, nan\]"):
        plan_freezes((1.0, math.nan), 1000, budget())
    with pytest.raises(ValueError, match=r"move_flops needs 3 entries .* got 1"):
        plan_freezes(COSTS, 1000, budget(), move_flops=(1.0,))


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(
    savings=st.lists(st.floats(0.01, 0.5), min_size=1, max_size=4),
    total=st.integers(20, 3000),
    target=st.floats(0.2, 1.0),
    not_before=st.floats(0.0, 0.9),
    spacing=st.floats(0.0, 0.3),
)
def test_plan_freezes_respects_not_before_spacing_and_target(
    savings, total, target, not_before, spacing
):
    costs = tuple(np.maximum(1.0 - np.cumsum([0.0, *savings]), 0.01).tolist())
    config = budget(target_compute=target, not_before=not_before, min_spacing=spacing)
    times = step_times(config, total)
    try:
        plan = plan_freezes(costs, total, config)
    except ValueError as err:
        assert "cannot be met" in str(err)
        earliest = [times.not_before + k * times.spacing for k in range(len(savings))]
        earliest = [t if t < total else NEVER for t in earliest]
        assert compute_fraction(costs, earliest, total) > target
        return
    deadlines = [d for d in plan.deadlines if d != NEVER]
    assert compute_fraction(costs, plan.deadlines, total) <= target + 1e-12
    assert all(d >= times.not_before for d in deadlines)
    assert all(b - a >= times.spacing for a, b in itertools.pairwise(deadlines))
    assert all(d < total for d in deadlines)
    assert plan.deadlines[len(deadlines) :] == (NEVER,) * (len(savings) - len(deadlines))
    if deadlines:  # the latest such schedule: one step later is over the target
        later = [min(d + 1, total) for d in plan.deadlines]
        later = [d if d < total else NEVER for d in later]
        assert later == list(plan.deadlines) or compute_fraction(costs, later, total) > target


def test_step_times_round_fractions_of_training_to_steps():
    times = step_times(budget(not_before=0.3, min_spacing=0.1, ramp=0.05), 10)
    assert (times.total, times.not_before, times.spacing, times.ramp) == (10, 3, 1, 0)
    times = step_times(budget(not_before=0.31, min_spacing=0.11, ramp=0.05), 100)
    assert (times.not_before, times.spacing, times.ramp) == (31, 11, 5)


def times_of(plan: FreezePlan) -> tuple:
    return plan.freeze_steps, plan.early


def _ready_run(plan, config, total, ready_at):
    """The plan after a check every 10 steps, ready at the steps in ``ready_at``."""
    for step in range(10, total, 10):
        plan = update_plan(plan, step, step in ready_at, config, total)
    return plan


def test_readiness_brings_a_freeze_earlier_after_patience_and_never_later():
    config = budget(patience=2, ramp=0.02)  # ramp 20 steps of 1000
    deadline = plan_freezes(COSTS, 1000, config)
    assert deadline.freeze_steps == (300, 400, 500)
    # Never-ready checks change nothing; nor do ready checks that are not in a row.
    assert times_of(_ready_run(deadline, config, 1000, set())) == times_of(deadline)
    plan = _ready_run(deadline, config, 1000, {280, 300, 320})
    assert times_of(plan) == times_of(deadline)
    # Ready at 280 and 290: stage 0 is ramping from 280 (committed); stage 1 may not come
    # before 300 + 100 (spacing), which is its deadline already.
    plan = _ready_run(deadline, config, 1000, {280, 290})
    assert times_of(plan) == ((300, 400, 500), (False, False, False))


def test_readiness_never_freezes_before_not_before_or_the_spacing():
    config = budget(patience=2, ramp=0.02, target_compute=0.7)
    deadline = plan_freezes(COSTS, 1000, config)
    assert deadline.freeze_steps == (500, 600, 700)
    # Checks before not_before - ramp (280) do not count.
    plan = _ready_run(deadline, config, 1000, {200, 210, 220, 230})
    assert times_of(plan) == times_of(deadline)
    # Ready at 280 and 290: stage 0 at max(290 + 20, 300) = 310.
    plan = _ready_run(deadline, config, 1000, {280, 290})
    assert plan.freeze_steps == (310, 600, 700) and plan.early == (True, False, False)
    # Stage 1 ready right after: not before 310 + 100 (spacing), and its ramp.
    plan = _ready_run(deadline, config, 1000, {280, 290, 300, 310, 320, 330})
    assert plan.freeze_steps == (310, 410, 700)
    assert compute_fraction(COSTS, plan.freeze_steps, 1000) < 0.7  # earlier is cheaper
    # A freeze is brought forward no further than the ramp allows: ready at 450 and 460
    # gives 460 + 20.
    assert _ready_run(deadline, config, 1000, {450, 460}).freeze_steps == (480, 600, 700)


def test_fixed_schedule_ignores_readiness():
    config = budget(ready_ratio=None, target_compute=0.7)
    deadline = plan_freezes(COSTS, 1000, config)
    plan = _ready_run(deadline, config, 1000, set(range(0, 1000, 10)))
    assert times_of(plan) == times_of(deadline)


def test_layer_freeze_steps_and_cut_at_follow_the_plan():
    plan = FreezePlan((30, 50), (30, NEVER), (True, False), 0, 0)
    steps = layer_freeze_steps(plan, (2, 3), num_layers=5)
    np.testing.assert_array_equal(steps, [30, 30, NEVER, NEVER, NEVER])
    assert steps.dtype == np.int32
    assert [cut_at(plan, (2, 3), s) for s in (0, 29, 30, 10**6)] == [0, 0, 2, 2]


def test_ramp_multipliers_fall_from_one_to_zero_before_the_freeze():
    freeze_at = jnp.array([10, 20, NEVER], jnp.int32)
    values = np.stack([np.asarray(ramp_multipliers(jnp.int32(s), freeze_at, 4)) for s in range(25)])
    assert values.dtype == np.float32
    np.testing.assert_array_equal(values[:7, 0], 1.0)  # 4+ steps before the freeze
    assert 0.0 < values[8, 0] < values[7, 0] < 1.0 and values[9, 0] < values[8, 0]
    np.testing.assert_array_equal(values[10:, 0], 0.0)  # at and after the freeze
    np.testing.assert_array_equal(values[:, 2], 1.0)  # never frozen
    step = np.asarray(ramp_multipliers(jnp.int32(19), freeze_at, 0))
    np.testing.assert_array_equal(step, [0.0, 1.0, 1.0])  # no ramp: a step


def test_lr_scale_multiplies_the_ramp_of_the_layers_that_may_freeze():
    scale = layer_lr_scale((2, 3), num_layers=5, boost=2.5)
    assert scale == (2.5, 2.5, 2.5, 1.0, 1.0)  # layers before the last candidate cut
    assert layer_lr_scale((), num_layers=3, boost=2.5) == (1.0, 1.0, 1.0)
    freeze_at = jnp.array([10, 10, 20, NEVER, NEVER], jnp.int32)
    for s in (0, 8, 10, 19):
        plain = np.asarray(ramp_multipliers(jnp.int32(s), freeze_at, 4))
        scaled = np.asarray(ramp_multipliers(jnp.int32(s), freeze_at, 4, scale))
        np.testing.assert_allclose(scaled, plain * np.asarray(scale), rtol=1e-6)
    np.testing.assert_array_equal(
        np.asarray(ramp_multipliers(jnp.int32(0), freeze_at, 4, scale)), scale
    )


# --- scores ----------------------------------------------------------------------------


def test_change_norms_and_group_changes_on_hand_made_snapshots():
    previous = {
        "a": {"kernel": jnp.array([3.0, 4.0]), "bias": jnp.array([0.0])},
        "b": {"kernel": jnp.array([[1.0, 0.0], [0.0, 0.0]])},
        "c": {"kernel": jnp.zeros((2,))},
    }
    current = {
        "a": {"kernel": jnp.array([3.0, 4.0]), "bias": jnp.array([0.5])},  # |d|^2 .25, |w|^2 25
        "b": {"kernel": jnp.array([[1.0, 0.0], [0.0, 2.0]])},  # |d|^2 4, |w|^2 1
        "c": {"kernel": jnp.zeros((2,))},  # zero and unchanged
    }
    norms = change_norms(previous, current, ("a", "b", "c"))
    np.testing.assert_allclose(norms, [[0.25, 4.0, 0.0], [25.0, 1.0, 0.0]])
    groups = (Stage("ab", 0, 2), Stage("c", 2, 3))
    changes = group_changes(np.asarray(norms), groups)
    np.testing.assert_allclose(changes, [math.sqrt(4.25 / 26), 0.0])
    with pytest.raises(ValueError, match=r"params/a has a leaf of shape \(3,\) now and \(2,\)"):
        change_norms({"a": jnp.zeros(2)}, {"a": jnp.zeros(3)}, ("a",))


def test_readiness_is_relative_to_the_median_of_the_deeper_stages():
    changes = np.array([0.1, 0.4, 0.2, 0.3, 5.0])  # four stages, then the head
    assert readiness(changes, 0) == pytest.approx(0.1 / 0.3)  # median(0.4, 0.2, 0.3)
    assert readiness(changes, 2) == pytest.approx(0.2 / 0.3)  # the head is left out
    # Relative across stages: a learning rate that scales every update changes nothing,
    # and a stage's own history (its peak) plays no part.
    assert readiness(changes * 7.0, 0) == pytest.approx(readiness(changes, 0))
    assert math.isnan(readiness(changes, 3))  # no deeper stage
    assert math.isnan(readiness(np.array([0.1, 0.0, 0.0, 1.0]), 0))  # deeper ones stopped


def test_record_scores_keeps_every_check():
    history = empty_history(("s0", "s1", "head"))
    history = record_scores(history, 10, np.array([1.0, 2.0, 3.0]), 0, 0.5)
    history = record_scores(history, 20, np.array([1.0, 2.0, 3.0]), 1, math.nan)
    np.testing.assert_array_equal(history.steps, [10, 20])
    np.testing.assert_array_equal(history.candidate, [0, 1])
    assert history.changes.shape == (2, 3) and np.isnan(history.readiness[1])
    with pytest.raises(ValueError, match="check at step 20 is not after the last one"):
        record_scores(history, 20, np.zeros(3), 1, 0.0)
    with pytest.raises(ValueError, match=r"needs \(3,\) changes for groups"):
        record_scores(history, 30, np.zeros(2), 1, 0.0)


# --- split -----------------------------------------------------------------------------


@pytest.mark.parametrize("make", [tiny_vgg, tiny_resnet])
def test_prefix_then_suffix_is_the_whole_network(make):
    model = make()
    variables, x = init(model)
    full = model.apply(variables, x, train=False)
    for cut in range(len(model.layer_names())):
        frozen, trained = split_variables(model, variables, cut)
        assert set(frozen["params"]) == set(model.layer_names()[:cut])
        chex.assert_trees_all_equal(merge_variables(frozen, trained), variables)
        h = prefix_apply(model, frozen, x, cut)
        logits, stats = suffix_apply(
            model, trained["params"], trained["batch_stats"], h, cut, train=False
        )
        chex.assert_trees_all_close(logits, full, atol=1e-6)
        assert stats is trained["batch_stats"]


def test_split_rejects_bad_cuts_and_foreign_layers():
    model = tiny_vgg()
    variables, _ = init(model)
    with pytest.raises(
        ValueError, match=r"cut must be in \[0, 3\] .*the head 'head' is never dropped"
    ):
        split_variables(model, variables, 4)
    with pytest.raises(TypeError, match="cut must be an int layer index"):
        split_variables(model, variables, 1.0)
    bad = {"params": {**variables["params"], "extra": {}}}
    with pytest.raises(ValueError, match=r"params/extra is not a layer of VGG"):
        split_variables(model, bad, 1)
    frozen, _trained = split_variables(model, variables, 1)
    with pytest.raises(ValueError, match=r"params/stage0_layer0 is both frozen and trained"):
        merge_variables(frozen, variables)


@pytest.mark.parametrize(
    "tx",
    [
        optax.sgd(optax.cosine_decay_schedule(0.1, 100), momentum=0.9),
        optax.chain(optax.add_decayed_weights(1e-4), optax.adam(1e-3)),
    ],
    ids=["sgd_momentum_schedule", "decay_adam"],
)
def test_shrink_opt_state_keeps_the_suffix_moments_and_counts(tx):
    model = tiny_resnet()
    variables, _x = init(model)
    params = variables["params"]
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
    state = tx.init(params)
    update = jax.jit(lambda s: tx.update(grads, s, params)[1])
    for _ in range(3):
        state = update(state)
    _, trained = split_variables(model, variables, 2)
    shrunk = shrink_opt_state(tx, state, trained["params"])
    expected = tx.init(trained["params"])
    chex.assert_trees_all_equal_structs(shrunk, expected)
    old = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(state)[0]}
    for path, leaf in jax.tree_util.tree_flatten_with_path(shrunk)[0]:
        np.testing.assert_array_equal(leaf, old[jax.tree_util.keystr(path)])
    counts = [
        leaf for p, leaf in jax.tree_util.tree_flatten_with_path(shrunk)[0] if "count" in str(p)
    ]
    assert counts and all(int(c) == 3 for c in counts)  # schedules continue, not restart
    moments = [leaf for leaf in jax.tree.leaves(shrunk) if leaf.ndim > 0]
    assert moments and all(float(jnp.abs(m).max()) > 0 for m in moments)  # not reset


def test_shrink_opt_state_names_missing_paths():
    tx = optax.sgd(0.1, momentum=0.9)
    state = tx.init({"a": jnp.zeros(2)})
    with pytest.raises(ValueError, match=r"no leaf at .*\['b'\] \(shape \(3,\)\)"):
        shrink_opt_state(tx, state, {"b": jnp.zeros(3)})
    with pytest.raises(ValueError, match=r"has shape \(2,\), the params need \(3,\)"):
        shrink_opt_state(tx, state, {"a": jnp.zeros(3)})


# --- cache -----------------------------------------------------------------------------


def tiny_vgg_without_bn() -> VGG:
    return VGG((1, 1), (4, 8), hidden_widths=(8,), num_classes=3, batch_norm=False)


def tiny_bottleneck() -> ResNet:
    return ResNet((1, 1), (8, 8), num_classes=3, block="bottleneck")


def _normalised(images, mean=120.0, std=60.0):
    return (jnp.asarray(images, jnp.float32) - mean) / std


@pytest.mark.parametrize("make", [tiny_vgg_without_bn, tiny_bottleneck, tiny_resnet])
def test_cache_is_sharded_by_example_over_the_data_axis_at_every_cut(make):
    model = make()
    variables, _ = init(model)
    mesh = data_mesh()
    assert mesh.size == 4  # tests/conftest.py
    images = jax.random.randint(jax.random.key(2), (10, *IMAGE), 0, 256).astype(jnp.uint8)
    stats = {"mean": (120.0,), "std": (60.0,), "mesh": mesh}
    first = cache_lib.build_cache(model, variables, images, 1, flips=True, chunk=4, **stats)
    for cut in range(1, len(model.layer_names())):
        built = cache_lib.build_cache(model, variables, images, cut, flips=True, chunk=8, **stats)
        moved = cache_lib.extend_cache(model, variables, first, cut, chunk=4, mesh=mesh)
        for cache in (built, moved):
            sharding = cache.activations.sharding
            assert sharding.spec == PartitionSpec("data") and sharding.mesh == mesh, sharding
            rows = [shard.data.shape[0] for shard in cache.activations.addressable_shards]
            assert rows == [3, 3, 3, 3]  # 10 examples padded to 12, a quarter per device
            assert cache.num_views == 2 and cache.cut == cut
        x = _normalised(images)
        plain = prefix_apply(model, variables, x, cut)
        mirror = prefix_apply(model, variables, x[:, :, ::-1], cut)
        chex.assert_trees_all_close(built.activations[:10, 0], plain, atol=1e-5)
        chex.assert_trees_all_close(built.activations[:10, 1], mirror, atol=1e-5)
        chex.assert_trees_all_close(moved.activations[:10], built.activations[:10], atol=1e-5)


def test_cache_without_a_mesh_uses_every_device_and_extends_like_it_builds():
    model = tiny_resnet()
    variables, _ = init(model)
    images = jax.random.randint(jax.random.key(2), (5, *IMAGE), 0, 256).astype(jnp.uint8)
    stats = {"mean": (120.0,), "std": (60.0,)}
    early = cache_lib.build_cache(model, variables, images, 1, flips=False, chunk=2, **stats)
    moved = cache_lib.extend_cache(model, variables, early, 3, chunk=2)
    direct = cache_lib.build_cache(model, variables, images, 3, flips=False, chunk=4, **stats)
    assert moved.cut == direct.cut == 3 and moved.num_views == 1
    assert direct.activations.shape[0] == 8 and direct.activations.sharding.spec == PartitionSpec(
        "data"
    )
    chex.assert_trees_all_close(moved.activations[:5], direct.activations[:5], atol=1e-5)
    assert cache_lib.extend_cache(model, variables, direct, 3) is direct
    with pytest.raises(ValueError, match=r"a cache only moves forward: cut 2 < cache.cut 3"):
        cache_lib.extend_cache(model, variables, direct, 2)
    with pytest.raises(ValueError, match="at least one layer, got cut=0"):
        cache_lib.build_cache(model, variables, images, 0, flips=False, **stats)
    with pytest.raises(ValueError, match=r"cut must be in \[0, 3\] .*got 5"):
        cache_lib.extend_cache(model, variables, direct, 5)
    with pytest.raises(ValueError, match="chunk must be a positive int"):
        cache_lib.cache_fn(model, 0, 1, chunk=0, mesh=data_mesh())


@pytest.mark.parametrize("rows", [7, 8, 30])
def test_chunked_maps_give_every_row_once_with_chunks_that_do_not_divide_the_rows(rows):
    x = jnp.arange(rows * 3, dtype=jnp.float32).reshape(rows, 3)
    got = cache_lib._in_chunks(lambda c: jnp.stack([c * 2, -c], axis=1), x, 4)
    chex.assert_trees_all_equal(got, jnp.stack([x * 2, -x], axis=1))


def test_cache_build_holds_no_second_copy_of_the_cache():
    """The build writes each chunk in place: no padded copy of the (large) result."""
    model = tiny_resnet()
    variables, _ = init(model)
    mesh = data_mesh()
    build = cache_lib.cache_fn(
        model, 0, 2, mean=(120.0,), std=(60.0,), flips=True, chunk=4 * 8, mesh=mesh
    )
    images = jax.ShapeDtypeStruct((4 * 301, *IMAGE), jnp.uint8)  # 301 rows a device, chunks of 8
    memory = build.lower(variables, images).compile().memory_analysis()
    assert memory.temp_size_in_bytes < memory.output_size_in_bytes / 2, memory


def test_gather_views_picks_plain_or_mirrored_rows():
    plain = jnp.arange(3 * 1 * 2 * 1, dtype=jnp.float32).reshape(3, 1, 2, 1)
    cache = cache_lib.ActivationCache(1, jnp.stack([plain, cache_lib.mirrored(plain)], axis=1))
    got = cache_lib.gather_views(cache.activations, jnp.array([2, 0]), jnp.array([1, 0]))
    chex.assert_trees_all_equal(got, jnp.stack([plain[2, :, ::-1], plain[0]]))
    plain_rows = cache_lib.gather_views(cache.activations, jnp.array([1, 2]), None)
    chex.assert_trees_all_equal(plain_rows, plain[1:])
    assert cache.nbytes == 2 * plain.size * 4 and cache.num_views == 2
    assert cache_lib.cache_nbytes((3, 1, 2, 1), jnp.float32, 2) == cache.nbytes


# --- BatchNorm recalibration -------------------------------------------------------------


def _conv(x, kernel):
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


@pytest.mark.parametrize("stage", [0, 1])
def test_recalibration_averages_the_batch_statistics_of_the_stage(stage):
    model = tiny_vgg()  # stage s is stage{s}_layer0: conv -> BN -> ReLU -> pool
    variables, _ = init(model)
    # Running statistics far from the truth, so that keeping them would fail the test.
    stale = jax.tree.map(lambda a: a + 3.0, variables["batch_stats"])
    variables = {**variables, "batch_stats": stale}
    images = jax.random.randint(jax.random.key(5), (24, *IMAGE), 0, 256).astype(jnp.uint8)
    order = jax.random.permutation(jax.random.key(6), 24).astype(jnp.int32)
    stats = stage_recalibration(model, stage)(variables, images, order)
    name = f"stage{stage}_layer0"
    assert set(stats) == {name}
    means, variances = [], []
    for i in range(3):  # batches 0..2 of 8 examples
        x = _normalised(images[order[8 * i : 8 * (i + 1)]])
        if stage:
            x = model.apply(variables, x, train=False, stop=stage)
        y = _conv(x, variables["params"][name]["conv"]["kernel"])
        means.append(y.mean(axis=(0, 1, 2)))
        variances.append(y.var(axis=(0, 1, 2)))
    bn = stats[name]["bn"]
    chex.assert_trees_all_close(bn["mean"], np.mean(means, axis=0), rtol=2e-4, atol=2e-5)
    chex.assert_trees_all_close(bn["var"], np.mean(variances, axis=0), rtol=2e-4)


def stage_recalibration(model, stage):
    return recalibration_fn(
        model,
        stage,
        stage + 1,
        mean=(120.0,),
        std=(60.0,),
        batch_size=8,
        batches=3,
        mesh=data_mesh(),
    )


def test_recalibration_of_a_stage_without_batchnorm_is_empty():
    model = tiny_vgg_without_bn()
    variables, _ = init(model)
    images = jnp.zeros((8, *IMAGE), jnp.uint8)
    fn = stage_recalibration(model, 0)
    assert fn(variables, images, jnp.arange(8, dtype=jnp.int32)) == {}


# --- FLOPs -----------------------------------------------------------------------------


def test_flops_from_cost_reads_every_shape_of_answer():
    assert flops_from_cost({"flops": 12.0, "bytes accessed": 3.0}) == 12.0
    assert flops_from_cost([{"flops": 2.0}, {"flops": 3.0}]) == 5.0
    assert math.isnan(flops_from_cost(None))
    assert math.isnan(flops_from_cost({"bytes accessed": 3.0}))
    assert math.isnan(flops_from_cost({"flops": -1.0}))
    assert math.isnan(flops_from_cost([]))
    with pytest.raises(TypeError, match="cost analysis must be a dict"):
        flops_from_cost(3.0)


@pytest.mark.parametrize("make", [tiny_vgg, tiny_resnet])
def test_flops_fall_as_the_cut_moves(make):
    model = make()
    variables, x = init(model)
    cuts = range(len(model.layer_names()))
    counts = [step_flops(model, variables, cut, x, how="lowered") for cut in cuts]
    cached = [step_flops(model, variables, c, x, cached=True, how="lowered") for c in cuts[1:]]
    backward = [c.backward for c in counts]
    assert all(b > 0 for b in backward)
    assert all(a > b for a, b in itertools.pairwise(backward)), backward
    prefix = [c.prefix_forward for c in counts]
    assert prefix[0] == 0 and all(a < b for a, b in itertools.pairwise(prefix))
    forward = [counts[0].forward] + [c.forward for c in cached]
    assert all(a > b for a, b in itertools.pairwise(forward)), forward
    for plain, stored in zip(counts[1:], cached, strict=True):
        assert stored.forward == pytest.approx(plain.forward - plain.prefix_forward)
        assert stored.backward == plain.backward
    assert counts[-1].total < 0.75 * counts[0].total
    extend = cache_flops(model, variables, 0, 2, x, how="lowered")
    assert extend == pytest.approx(counts[2].prefix_forward)
    assert cache_flops(model, variables, 2, 2, x) == 0.0
    with pytest.raises(ValueError, match="a cache only grows"):
        cache_flops(model, variables, 2, 1, x)


def test_jaxpr_flops_counts_products_and_convolutions_exactly():
    a, b = jnp.ones((4, 5)), jnp.ones((5, 3))
    assert jaxpr_flops(lambda a, b: a @ b, a, b) == 2 * 4 * 5 * 3
    assert jaxpr_flops(lambda a, b: a @ b + 1.0, a, b) == 2 * 4 * 5 * 3 + 4 * 3
    x, k = jnp.ones((2, 6, 6, 4)), jnp.ones((3, 3, 2, 8))  # two groups of 2 -> 4 channels

    def conv(x, k):
        return jax.lax.conv_general_dilated(
            x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=2,
        )  # fmt: skip

    # taps on the zero padding do not count: 16 of 18 (output, tap) pairs per spatial dim
    assert jaxpr_flops(conv, x, k) == 2 * (2 * 8) * 2 * 16 * 16
    # nested programs count once, a scan's body once per iteration
    assert jaxpr_flops(jax.jit(lambda a, b: a @ b), a, b) == 2 * 4 * 5 * 3

    def scanned(a, b):
        return jax.lax.scan(lambda c, _: (c, a @ b), 0.0, None, length=3)[1]

    assert jaxpr_flops(scanned, a, b) == 3 * 2 * 4 * 5 * 3


@pytest.mark.parametrize("make", [tiny_vgg, tiny_resnet, tiny_bottleneck])
def test_jaxpr_flops_agree_with_xla_on_network_prefixes(make):
    model = make()
    variables, x = init(model)
    for stop in range(1, len(model.layer_names())):
        frozen, _ = split_variables(model, variables, stop)

        def prefix(f, x, stop=stop):
            return model.apply(f, x, train=False, start=0, stop=stop)

        xla = counted_flops(prefix, frozen, x, how="lowered")
        assert jaxpr_flops(prefix, frozen, x) == pytest.approx(xla, rel=0.03), stop


def test_lowered_counts_fall_back_to_the_jaxpr_where_the_backend_reports_none(monkeypatch):
    model = tiny_resnet()
    variables, x = init(model)
    expected = cache_flops(model, variables, 0, 2, x, how="lowered")
    monkeypatch.setattr(jax.stages.Lowered, "cost_analysis", lambda self: None)
    fallback = cache_flops(model, variables, 0, 2, x, how="lowered")
    assert math.isfinite(fallback) and fallback == pytest.approx(expected, rel=0.03)

    def unsupported(self):
        raise NotImplementedError("Lowered.cost_analysis not implemented on platform 'gpu'")

    monkeypatch.setattr(jax.stages.Lowered, "cost_analysis", unsupported)
    assert cache_flops(model, variables, 0, 2, x, how="lowered") == fallback


def test_counted_flops_on_gpus_come_from_the_traced_program(monkeypatch):
    from jnet2net.scale_down import flops as flops_lib

    model = tiny_resnet()
    variables, x = init(model)
    on_cpu = cache_flops(model, variables, 0, 2, x, how="compiled")
    monkeypatch.setattr(flops_lib, "platform_of", lambda args: "gpu")
    monkeypatch.setattr(jax.stages.Compiled, "cost_analysis", lambda self: {"flops": 1.0})
    on_gpu = cache_flops(model, variables, 0, 2, x, how="compiled")
    assert on_gpu != 1.0 / x.shape[0] and on_gpu == pytest.approx(on_cpu, rel=0.03)


@pytest.mark.parametrize("make", [tiny_vgg, tiny_resnet, tiny_bottleneck])
def test_jaxpr_flops_agree_with_xla_on_training_gradients(make):
    """Backward passes hold strided transposed convolutions (dilated inputs)."""
    model = make()
    variables, x = init(model)
    labels = jnp.zeros((x.shape[0],), jnp.int32)

    def loss(params, x, labels):
        logits, _ = model.apply(
            {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    grad = jax.value_and_grad(loss)
    xla = counted_flops(grad, variables["params"], x, labels, how="lowered")
    assert jaxpr_flops(grad, variables["params"], x, labels) == pytest.approx(xla, rel=0.03)


def test_compiled_steps_on_gpus_are_counted_on_the_traced_program(monkeypatch):
    """XLA's GPU analysis leaves cuDNN/cuBLAS calls out: the count comes from the jaxpr."""
    from jnet2net.train import cost

    a, b = jnp.ones((8, 16)), jnp.ones((16, 4))
    step = jax.jit(lambda a, b: jnp.tanh(a @ b))
    on_cpu = cost.compile_step(step, a, b)
    assert on_cpu.flops == pytest.approx(2 * 8 * 16 * 4, rel=0.05)
    monkeypatch.setattr(cost, "platform_of", lambda args: "gpu")
    monkeypatch.setattr(cost, "_CACHE", type(cost._CACHE)())
    assert cost.compile_step(step, a, b).flops == 2 * 8 * 16 * 4  # tanh: transcendental


# --- steps -----------------------------------------------------------------------------

NUM_TRAIN = 64


def tiny_data():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (NUM_TRAIN + 16, *IMAGE), dtype=np.uint8)
    labels = rng.integers(0, 3, NUM_TRAIN + 16)
    train = from_arrays(images[:NUM_TRAIN], labels[:NUM_TRAIN], num_classes=3)
    test = from_arrays(
        images[NUM_TRAIN:], labels[NUM_TRAIN:], num_classes=3, mean=train.mean, std=train.std
    )
    return train, test


def train_config(**changes) -> TrainConfig:
    fields = {"epochs": 3, "batch_size": 16, "learning_rate": 0.05, "progress": False}
    return TrainConfig(**{**fields, "eval_batch_size": 32, **changes})


def never_frozen(num_layers: int) -> jax.Array:
    return jnp.full((num_layers,), NEVER, jnp.int32)


def test_move_cut_drops_frozen_layers_from_state_and_keeps_the_other_moments():
    model = tiny_resnet()
    train, _ = tiny_data()
    state = create_train_state(model, train_config(), train.images, steps_per_epoch=4)
    grads = jax.tree.map(jnp.ones_like, state.params)
    state = jax.jit(lambda s: s.apply_gradients(grads=grads))(state)
    moved, frozen = move_cut(model, state, {}, 2)
    assert set(frozen["params"]) == {"stem", "stage0_block0"} == set(frozen["batch_stats"])
    assert set(moved.params) == {"stage1_block0", "head"} == set(moved.opt_state[1][0].trace)
    chex.assert_trees_all_equal(
        moved.opt_state[1][0].trace,
        {k: state.opt_state[1][0].trace[k] for k in ("stage1_block0", "head")},
    )
    assert int(moved.step) == int(state.step) == 1
    chex.assert_trees_all_equal(frozen["params"]["stem"], state.params["stem"])
    with pytest.raises(
        ValueError, match=r"cut 1 is before the current cut 2: layer 'stage0_block0' is frozen"
    ):
        move_cut(model, moved, frozen, 1)


def test_a_layer_at_its_freeze_step_gets_no_update_and_the_others_do():
    model = tiny_resnet()
    train, _ = tiny_data()
    config = train_config(augment="none")
    state = create_train_state(model, config, train.images, steps_per_epoch=4)
    images, labels = jnp.asarray(train.images), jnp.asarray(train.labels)
    order = jnp.arange(NUM_TRAIN, dtype=jnp.int32)
    common = {"mean": train.mean, "std": train.std, "steps_per_epoch": 4}
    before = jax.tree.map(np.asarray, state.params)
    # Stage 0 (stem, stage0_block0) freezes at step 0: its ramp is over.
    freeze_at = jnp.array([0, 0, NEVER, NEVER], jnp.int32)
    ramped = make_scaled_train_step(model, config, 0, ramp_steps=3, **common)
    state, _ = ramped(state, {}, images, labels, order, freeze_at)
    for name in model.layer_names():
        changed = jax.tree.leaves(
            jax.tree.map(lambda a, b: bool(np.any(a != b)), before[name], state.params[name])
        )
        assert any(changed) == (name in ("stage1_block0", "head")), name
    # Halfway down a 4-step ramp the update is half the plain one (the same gradient).
    fresh = create_train_state(model, config, train.images, steps_per_epoch=4)
    start_state = jax.tree.map(jnp.copy, fresh)
    half = make_scaled_train_step(model, config, 0, ramp_steps=4, **common)
    plain = make_scaled_train_step(model, config, 0, **common)
    copy = jax.tree.map(jnp.copy, fresh)
    a, _ = half(fresh, {}, images, labels, order, jnp.full((4,), 2, jnp.int32))
    b, _ = plain(copy, {}, images, labels, order, never_frozen(4))
    start = create_train_state(model, config, train.images, steps_per_epoch=4).params
    delta_a = jax.tree.map(jnp.subtract, a.params, start)
    delta_b = jax.tree.map(jnp.subtract, b.params, start)
    chex.assert_trees_all_close(delta_a, jax.tree.map(lambda d: 0.5 * d, delta_b), atol=1e-6)
    # A boosted layer moves lr_scale times as far on the same gradient; the others as before.
    boosted = make_scaled_train_step(model, config, 0, lr_scale=(2.0, 2.0, 1.0, 1.0), **common)
    c, _ = boosted(jax.tree.map(jnp.copy, start_state), {}, images, labels, order, never_frozen(4))
    delta_c = jax.tree.map(jnp.subtract, c.params, start)
    for name, factor in zip(model.layer_names(), (2.0, 2.0, 1.0, 1.0), strict=True):
        chex.assert_trees_all_close(
            delta_c[name], jax.tree.map(lambda d, f=factor: f * d, delta_b[name]), atol=1e-6
        )


def test_cached_step_gives_the_nograd_loss_on_the_same_inputs():
    model = tiny_resnet()
    train, _ = tiny_data()
    config = train_config(augment="none")
    state = create_train_state(model, config, train.images, steps_per_epoch=4)
    state, frozen = move_cut(model, state, {}, 2)
    images, labels = jnp.asarray(train.images), jnp.asarray(train.labels)
    order = jnp.arange(NUM_TRAIN, dtype=jnp.int32)[::-1]
    common = {"mean": train.mean, "std": train.std, "steps_per_epoch": 4}
    nograd = make_scaled_train_step(model, config, 2, **common)
    cached = make_scaled_train_step(model, config, 2, cached=True, **common)
    cache = cache_lib.build_cache(
        model, frozen, images, 2, mean=train.mean, std=train.std, flips=False, chunk=24
    )
    copy = jax.tree.map(jnp.copy, state)
    state_a, metrics_a = nograd(state, frozen, images, labels, order, never_frozen(4))
    state_b, metrics_b = cached(copy, cache.activations, labels, order, never_frozen(4))
    chex.assert_trees_all_close(metrics_a, metrics_b, rtol=1e-5)
    chex.assert_trees_all_close(state_a.params, state_b.params, atol=1e-6)
    chex.assert_trees_all_close(state_a.batch_stats, state_b.batch_stats, atol=1e-6)


def test_cached_mirror_views_are_the_flips_the_nograd_step_makes():
    model = tiny_resnet()
    train, _ = tiny_data()
    config = train_config(augment="flip")  # flips only: both steps see the same inputs
    state = create_train_state(model, config, train.images, steps_per_epoch=4)
    state, frozen = move_cut(model, state, {}, 2)
    images, labels = jnp.asarray(train.images), jnp.asarray(train.labels)
    order = jnp.arange(NUM_TRAIN, dtype=jnp.int32)
    common = {"mean": train.mean, "std": train.std, "steps_per_epoch": 4}
    nograd = make_scaled_train_step(model, config, 2, **common)
    cached = make_scaled_train_step(model, config, 2, cached=True, **common)
    cache = cache_lib.build_cache(
        model, frozen, images, 2, mean=train.mean, std=train.std, flips=True, chunk=64
    )
    state_b = jax.tree.map(jnp.copy, state)
    for _ in range(3):
        state, metrics_a = nograd(state, frozen, images, labels, order, never_frozen(4))
        state_b, metrics_b = cached(state_b, cache.activations, labels, order, never_frozen(4))
        chex.assert_trees_all_close(metrics_a, metrics_b, rtol=1e-5)
    chex.assert_trees_all_close(state.params, state_b.params, atol=1e-5)
    # With crops too, the cached step mirrors exactly the examples that the crop step flips.
    key, x = jax.random.key(7), images[:NUM_TRAIN]
    flips = flip_choices(key, NUM_TRAIN).astype(bool)
    cropped = augment(key, x, crop_padding=2, flip=False)
    expected = jnp.where(flips[:, None, None, None], cropped[:, :, ::-1], cropped)
    chex.assert_trees_all_equal(augment(key, x, crop_padding=2, flip=True), expected)
    assert 0 < int(flips.sum()) < NUM_TRAIN


def test_cached_step_never_flips_when_the_augmentation_has_no_flips():
    model = tiny_resnet()
    train, _ = tiny_data()
    config = train_config(augment="crop")  # digits and letters: a flip changes the class
    state = create_train_state(model, config, train.images, steps_per_epoch=4)
    state, frozen = move_cut(model, state, {}, 2)
    labels = jnp.asarray(train.labels)
    order = jnp.arange(NUM_TRAIN, dtype=jnp.int32)
    common = {"mean": train.mean, "std": train.std, "steps_per_epoch": 4, "cached": True}
    cached = make_scaled_train_step(model, config, 2, **common)
    plain = cache_lib.build_cache(
        model, frozen, jnp.asarray(train.images), 2, mean=train.mean, std=train.std, flips=False
    )
    junk = jnp.concatenate([plain.activations, 1e3 + plain.activations], axis=1)  # 2 views
    copy = jax.tree.map(jnp.copy, state)
    state_a, metrics_a = cached(state, plain.activations, labels, order, never_frozen(4))
    state_b, metrics_b = cached(copy, junk, labels, order, never_frozen(4))
    chex.assert_trees_all_close(metrics_a, metrics_b, rtol=1e-6)
    chex.assert_trees_all_close(state_a.params, state_b.params, atol=1e-7)


def test_augment_makes_the_choices_augment_choices_returns():
    x = jnp.asarray(tiny_data()[0].images[:32])
    key = jax.random.key(5)
    for padding, flip in [(2, True), (2, False), (0, True)]:
        offsets, flips = augment_choices(key, 32, crop_padding=padding, flip=flip)
        expected = crop_at(x, offsets, padding=padding)
        expected = jnp.where(flips[:, None, None, None], expected[:, :, ::-1], expected)
        chex.assert_trees_all_equal(augment(key, x, crop_padding=padding, flip=flip), expected)
        assert bool(flips.any()) == flip and int(offsets.max()) == 2 * padding


def test_a_cache_of_augmented_views_holds_the_prefix_of_each_augmented_copy():
    model = tiny_resnet()
    train, _ = tiny_data()
    variables, _ = init(model)
    images = jnp.asarray(train.images[:16])  # a multiple of the 4 devices: no padding rows
    views = cache_lib.AugmentedViews(jax.random.key(9), 3, 2, True)
    stats = {"mean": train.mean, "std": train.std}
    cache = cache_lib.build_cache(model, variables, images, 2, flips=False, views=views, **stats)
    assert cache.activations.shape == (16, 3, 8, 8, 4) and cache.num_views == 3
    for v in range(3):
        x = augment(jax.random.fold_in(views.key, v), images, crop_padding=2, flip=True)
        expected = prefix_apply(model, variables, normalize(x, train.mean, train.std), 2)
        chex.assert_trees_all_close(cache.activations[:, v], expected, atol=1e-5)
    assert float(jnp.abs(cache.activations[:, 0] - cache.activations[:, 1]).max()) > 1e-2
    moved = cache_lib.extend_cache(model, variables, cache, 3, chunk=8)
    rows = cache.activations.reshape(48, 8, 8, 4)
    expected = model.apply(variables, rows, train=False, start=2, stop=3)
    chex.assert_trees_all_close(moved.activations.reshape(48, 4, 4, 8), expected, atol=1e-5)
    with pytest.raises(ValueError, match="augmented views are made from the images"):
        cache_lib.cache_fn(model, 1, 2, flips=True, views=views, mesh=data_mesh())


def test_a_padded_cache_holds_the_prefix_of_the_zero_padded_images_and_their_mirrors():
    model = tiny_resnet()
    train, _ = tiny_data()
    variables, _ = init(model)
    images = jnp.asarray(train.images[:16])
    stats = {"mean": train.mean, "std": train.std}
    cache = cache_lib.build_cache(model, variables, images, 2, flips=True, pad=2, **stats)
    assert cache.activations.shape == (16, 2, 12, 12, 4)
    padded = jnp.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))  # black borders, as crops pad
    for view, x in enumerate([padded, padded[:, :, ::-1]]):
        expected = prefix_apply(model, variables, normalize(x, train.mean, train.std), 2)
        chex.assert_trees_all_close(cache.activations[:, view], expected, atol=1e-5)
    moved = cache_lib.extend_cache(model, variables, cache, 3, chunk=8)
    assert moved.activations.shape == (16, 2, 6, 6, 8)
    with pytest.raises(ValueError, match="pad"):
        cache_lib.cache_fn(model, 1, 2, pad=2, mesh=data_mesh())


def test_crop_map_scales_the_offsets_by_the_maps_stride():
    maps = jnp.arange(2 * 6 * 6, dtype=jnp.float32).reshape(2, 6, 6, 1)  # an 8x8 image, pad 2
    offsets = jnp.array([[0, 4], [2, 1]], jnp.int32)  # in the padded image: [0, 4]
    out = cache_lib.crop_map(maps, offsets, window=(4, 4), padding=2)
    chex.assert_trees_all_equal(out[0], maps[0, 0:4, 2:6])
    chex.assert_trees_all_equal(out[1], maps[1, 1:5, 0:4])  # 2 // 2 = 1, 1 // 2 = 0
    same = cache_lib.crop_map(maps[:, :4, :4], offsets, window=(4, 4), padding=0)
    chex.assert_trees_all_equal(same, maps[:, :4, :4])


@pytest.mark.parametrize(
    ("flip", "cut", "size", "margin"),
    [
        (False, 1, 8, 1),  # the stem: one 3x3 conv, stride 1
        (True, 1, 8, 1),
        (True, 3, 16, 3),  # through a stride-2 stage (a 6-pixel radius): offsets halved
    ],
)
def test_cached_crops_equal_the_nograd_crops_away_from_the_window_border(flip, cut, size, margin):
    """The prefix on a crop of the padded image equals the crop of the prefix's map of the
    padded image wherever the prefix's receptive field stays inside the crop; through
    stride 2 only for the even offsets, where the two maps' grids coincide."""
    model = tiny_resnet()
    variables, _ = init(model)
    rng = np.random.default_rng(1)
    images = jnp.asarray(rng.integers(0, 256, (16, size, size, 1), dtype=np.uint8))
    stats = {"mean": (120.0,), "std": (60.0,)}
    window = (size // (1 if cut == 1 else 2),) * 2
    cache = cache_lib.build_cache(model, variables, images, cut, flips=flip, pad=2, **stats)
    key = jax.random.key(3)
    x = augment(key, images, crop_padding=2, flip=flip)
    nograd = prefix_apply(model, variables, normalize(x, *stats.values()), cut)
    index = jnp.arange(16)
    cached = cache_lib.cached_crops(
        cache.activations, index, key, window=window, padding=2, flip=flip
    )
    offsets, flips = augment_choices(key, 16, crop_padding=2, flip=flip)
    column = jnp.where(flips, 4 - offsets[:, 1], offsets[:, 1])
    stride = size // window[0]
    aligned = (offsets[:, 0] % stride == 0) & (column % stride == 0)
    assert int(aligned.sum()) > 0
    inner = (slice(None), slice(margin, -margin), slice(margin, -margin))
    chex.assert_trees_all_close(cached[aligned][inner], nograd[aligned][inner], atol=1e-5)
    assert float(jnp.abs(cached - nograd).max()) > 1e-3  # the border is where they differ


def _cut_at_two_with_crops():
    """A tiny ResNet cut after its first stage, crop-and-flip training (padding 2), and an
    epoch order: ``(model, train, config, state, frozen, labels, order)``."""
    model = tiny_resnet()
    train, _ = tiny_data()
    config = train_config(augment="crop_flip", crop_padding=2)
    state = create_train_state(model, config, train.images, steps_per_epoch=4)
    state, frozen = move_cut(model, state, {}, 2)
    labels = jnp.asarray(train.labels)
    order = jnp.arange(NUM_TRAIN, dtype=jnp.int32)[::-1]
    return model, train, config, state, frozen, labels, order


def test_cached_step_with_crops_trains_on_the_crops_of_the_padded_maps():
    model, train, config, state, frozen, labels, order = _cut_at_two_with_crops()
    stats = {"mean": train.mean, "std": train.std}
    images = jnp.asarray(train.images)
    cache = cache_lib.build_cache(model, frozen, images, 2, flips=True, pad=2, **stats)
    common = {**stats, "steps_per_epoch": 4}
    cached = make_scaled_train_step(
        model, config, 2, cached=True, crop_window=(8, 8), crop_padding=2, **common
    )
    update = jax.jit(suffix_update_fn(model, config, 2))
    reference = jax.tree.map(jnp.copy, state)
    for step in range(3):
        index = order[step * 16 : (step + 1) * 16]
        key = augment_key(config.seed, step)
        h = cache_lib.cached_crops(
            cache.activations, index, key, window=(8, 8), padding=2, flip=True
        )
        reference, metrics_a = update(reference, h, labels[index], never_frozen(4))
        state, metrics_b = cached(state, cache.activations, labels, order, never_frozen(4))
        chex.assert_trees_all_close(metrics_a, metrics_b, rtol=1e-5)
    chex.assert_trees_all_close(reference.params, state.params, atol=1e-5)


def test_cached_step_with_random_views_trains_on_the_view_its_key_picks():
    model, train, config, state, frozen, labels, order = _cut_at_two_with_crops()
    views = cache_lib.AugmentedViews(jax.random.key(9), 4, 2, True)
    cache = cache_lib.build_cache(
        model,
        frozen,
        jnp.asarray(train.images),
        2,
        mean=train.mean,
        std=train.std,
        flips=False,
        views=views,
    )
    common = {"mean": train.mean, "std": train.std, "steps_per_epoch": 4}
    cached = make_scaled_train_step(model, config, 2, cached=True, random_view=True, **common)
    update = jax.jit(suffix_update_fn(model, config, 2))
    reference = jax.tree.map(jnp.copy, state)
    picked = set()
    for step in range(3):
        index = order[step * 16 : (step + 1) * 16]
        view = jax.random.randint(augment_key(config.seed, step), (16,), 0, 4)
        picked |= set(np.asarray(view).tolist())
        h = cache.activations[index, view]
        reference, metrics_a = update(reference, h, labels[index], never_frozen(4))
        state, metrics_b = cached(state, cache.activations, labels, order, never_frozen(4))
        chex.assert_trees_all_close(metrics_a, metrics_b, rtol=1e-5)
    assert picked == {0, 1, 2, 3}
    chex.assert_trees_all_close(reference.params, state.params, atol=1e-5)


# --- the loop --------------------------------------------------------------------------

#: Always ready: stage 0 freezes at the first check that counts. Of 12 steps (3 epochs of
#: 4), not_before is step 4; the check at step 4 is read at step 6 (checks are read one
#: check late, so the host never waits), so the cut moves before step 6.
FORCED = ScaleDownConfig(
    target_compute=1.0,
    not_before=0.3,
    min_spacing=0.0,
    ramp=0.0,
    check_every=2,
    ready_ratio=1e9,
    patience=1,
    bn_batches=2,
)


class CompileCounter:
    """Counts XLA backend compiles, and remembers the count after each epoch."""

    def __init__(self):
        self.count, self.after_epoch = 0, []

    def __call__(self, event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            self.count += 1

    def on_epoch_end(self, state, record):
        self.after_epoch.append(self.count)


def _fit(model, config, scale_config, **kwargs):
    """``fit_scale_down`` on tiny data; also the traces of scale-down functions and the
    XLA compiles counted after each epoch."""
    train, test = tiny_data()
    keys = ("scale_down_step", "scale_down_cache", "scale_down_recalibrate", "scale_down_scores")
    before = {k: TRACES[k] for k in keys}
    counter = CompileCounter()
    jax.monitoring.register_event_duration_secs_listener(counter)
    try:
        result = fit_scale_down(
            model, train, test, config, scale_config, on_epoch_end=counter.on_epoch_end, **kwargs
        )
    finally:
        jax.monitoring.unregister_event_duration_listener(counter)
    traces = {k: TRACES[k] - before[k] for k in keys}
    return result, traces, counter


@pytest.fixture(scope="module")
def resnet_runs(tmp_path_factory):
    """The same ResNet run in no-grad and cache mode, without augmentation."""
    log = tmp_path_factory.mktemp("logs") / "cache.jsonl"
    config = train_config(augment="none")
    nograd = _fit(tiny_resnet(), config, FORCED)
    cached = _fit(
        tiny_resnet(), config.replace(log_path=str(log)), dataclasses.replace(FORCED, mode="cache")
    )
    return {"nograd": nograd, "cache": cached, "log": log}


def test_loop_freezes_stage_0_and_compiles_nothing_after_the_start(resnet_runs):
    for mode in ("nograd", "cache"):
        result, traces, compiles = resnet_runs[mode]
        assert result.cut == 2 and [r["cut"] for r in result.history] == [0, 2, 2]
        (event,) = result.summary["events"]
        assert (event["step"], event["from_cut"], event["to_cut"]) == (6, 0, 2)
        assert event["layers"] == ["stem", "stage0_block0"] == result.history[1]["frozen_now"]
        assert event["early"] is True and result.plan.freeze_steps == (6,)
        assert result.plan.deadlines == (NEVER,)  # target 1.0: no freeze needed
        # Each function traced once, by the end of epoch 1 (cut 0's before the first step,
        # the candidate's in the background: the epoch's checkpoint callback waits for it) ...
        assert traces["scale_down_step"] == 2  # cut 0 and cut 2
        assert traces["scale_down_recalibrate"] == traces["scale_down_scores"] == 1
        assert traces["scale_down_cache"] == (1 if mode == "cache" else 0)
        # ... and no XLA compile at all from the end of epoch 1 on, across the freeze.
        assert compiles.after_epoch[0] == compiles.after_epoch[-1] == compiles.count
        assert result.history[-1]["compile_s"] > 0
        assert set(result.frozen["params"]) == {"stem", "stage0_block0"}
        assert set(result.state.params) == {"stage1_block0", "head"}
        assert result.scores.steps.tolist() == [4, 6, 8, 10]  # read one check late
        assert result.scores.names == ("stage0", "stage1", "head")
        assert np.all(result.scores.changes[2:, 0] == 0)  # frozen: no change


@pytest.mark.parametrize(
    ("cache_augment", "named", "nbytes"),
    [
        # 64 examples, 3 views, the stage-0 map of 8x8 images, 4 channels, float32.
        ("views", "crop_flip (3 cached views)", 64 * 3 * 8 * 8 * 4 * 4),
        # 64 examples, 2 views (mirror), the stage-0 map of 12x12 padded images.
        ("crop", "crop_flip (crops of cached padded maps)", 64 * 2 * 12 * 12 * 4 * 4),
    ],
)
def test_cache_mode_with_crops_compiles_nothing_after_the_start(cache_augment, named, nbytes):
    config = train_config(augment="crop_flip", crop_padding=2)
    scale = dataclasses.replace(FORCED, mode="cache", cache_augment=cache_augment, cache_views=3)
    result, traces, compiles = _fit(tiny_resnet(), config, scale)
    assert [r["augment"] for r in result.history] == ["crop_flip", named, named]
    assert result.history[-1]["cache_bytes"] == nbytes
    assert traces["scale_down_step"] == 2 and traces["scale_down_cache"] == 1
    assert compiles.after_epoch[0] == compiles.after_epoch[-1] == compiles.count
    assert all(math.isfinite(r["train_loss"]) for r in result.history)


def test_cached_crops_only_where_the_padding_is_a_multiple_of_the_cuts_stride():
    """Padding 1: the stride-2 cut's padded map would sit half a pixel off the plain one's
    grid, so that cut caches the plain maps (and builds them from the images)."""
    config = train_config(augment="crop_flip", crop_padding=1)
    scale = dataclasses.replace(FORCED, mode="cache", cache_augment="crop", min_spacing=0.2)
    model = ResNet((1, 1, 1), (4, 8, 8), num_classes=3)
    result, _, _ = _fit(model, config, scale)
    assert [r["cut"] for r in result.history] == [0, 2, 3]
    assert result.history[1]["augment"] == "crop_flip (crops of cached padded maps)"
    assert result.history[1]["cache_bytes"] == 64 * 2 * 10 * 10 * 4 * 4  # 8x8 padded by 1
    assert result.history[2]["augment"] == "flip (cached mirror view)"
    assert result.history[2]["cache_bytes"] == 64 * 2 * 4 * 4 * 8 * 4  # the plain 4x4 map


def test_cached_crops_need_crops_in_the_augmentation():
    """With flips only, cache_augment='crop' caches the plain maps, as 'flip' does."""
    scale = dataclasses.replace(FORCED, mode="cache", cache_augment="crop")
    result, _, _ = _fit(tiny_resnet(), train_config(augment="flip"), scale)
    assert result.history[-1]["cache_bytes"] == 64 * 2 * 8 * 8 * 4 * 4
    assert result.history[-1]["augment"] == "flip (cached mirror view)"


def test_cache_mode_trains_like_nograd_mode_without_augmentation(resnet_runs):
    (nograd, _, _), (cached, _, _) = resnet_runs["nograd"], resnet_runs["cache"]
    assert [r["mode"] for r in cached.history] == ["nograd", "cache", "cache"]
    assert [r["mode"] for r in nograd.history] == ["nograd"] * 3
    for a, b in zip(nograd.history, cached.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["test_acc"] == pytest.approx(b["test_acc"])
    chex.assert_trees_all_close(nograd.variables, cached.variables, atol=1e-5)
    assert cached.history[-1]["cache_bytes"] == 64 * 4 * 8 * 8 * 4  # 64 rows, 1 view
    assert cached.history[-1]["augment"] == "none"


def test_loop_accounts_flops_per_epoch_and_in_the_summary(resnet_runs):
    for mode in ("nograd", "cache"):
        result = resnet_runs[mode][0]
        summary, history = result.summary, result.history
        full_step = summary["cut_step_flops"]["0"]
        cut_step = summary["cut_step_flops"]["2"]
        assert 0 < cut_step < full_step
        assert history[0]["step_flops"] == full_step and history[-1]["step_flops"] == cut_step
        # 6 full steps, 6 at cut 2, one freeze (recalibration, cache move).
        expected = 6 * full_step + 6 * cut_step + summary["move_flops"]
        assert summary["train_flops"] == pytest.approx(expected, rel=1e-9)
        assert summary["full_train_flops"] == pytest.approx(12 * full_step, rel=1e-9)
        assert summary["train_flops"] == pytest.approx(sum(r["epoch_flops"] for r in history))
        assert history[-1]["train_flops"] == pytest.approx(summary["train_flops"])
        ratio = summary["train_flops"] / summary["full_train_flops"]
        assert summary["flops_ratio"] == pytest.approx(ratio) and 0 < ratio < 1
        assert summary["flops_saved"] == pytest.approx(1 - ratio)
        assert summary["move_flops"] > 0 and summary["move_s"] > 0
        # Seconds as every fit record counts them; the freezes are counted apart.
        assert summary["train_s"] == history[-1]["train_s"] > sum(r["epoch_s"] for r in history)
        assert summary["move_s"] == history[-1]["move_s"]
        total = summary["train_s"] + summary["move_s"] + summary["compile_s"]
        assert summary["total_s"] == pytest.approx(total)
        assert summary["cut_step_s"]["0"] > 0 and summary["cut_step_s"]["2"] > 0
        assert summary["full_train_s_estimate"] == pytest.approx(12 * summary["full_step_s"])
        assert summary["candidate_cuts"] == [2] and summary["freeze_steps"] == [6]
    cached, nograd = resnet_runs["cache"][0], resnet_runs["nograd"][0]
    # The cache removes the prefix forward from every step; no-grad still runs it.
    assert cached.summary["cut_step_flops"]["2"] < nograd.summary["cut_step_flops"]["2"]
    assert cached.summary["move_flops"] > nograd.summary["move_flops"]  # + the cache move
    lines = read_jsonl(resnet_runs["log"])
    assert [(line.get("event"), line.get("step")) for line in lines[:-1]] == [
        (None, 4),
        ("freeze", 6),
        (None, 8),
        (None, 12),
    ]
    assert lines[-1]["summary"]["cut"] == 2 and len(lines) == 5


def test_a_frozen_stage_keeps_its_recalibrated_statistics(resnet_runs):
    result = resnet_runs["nograd"][0]
    train, _ = tiny_data()
    fn = recalibration_fn(
        tiny_resnet(),
        0,
        2,
        mean=train.mean,
        std=train.std,
        batch_size=16,
        batches=2,
        mesh=data_mesh(),
    )
    order = epoch_permutation(0, 1, NUM_TRAIN)  # the freeze came in epoch 2
    expected = fn(result.variables, jnp.asarray(train.images), order)
    assert set(expected) == {"stem", "stage0_block0"}
    chex.assert_trees_all_close(result.frozen["batch_stats"], expected, rtol=1e-5, atol=1e-6)


def test_budgeted_fixed_schedule_meets_its_compute_target():
    scale = dataclasses.replace(FORCED, ready_ratio=None, target_compute=0.97, ramp=0.2)
    result, traces, _ = _fit(tiny_vgg(), train_config(epochs=4), scale)  # 16 steps
    summary = result.summary
    (freeze,) = result.plan.deadlines
    assert 5 <= freeze < 16  # not_before 0.3 of 16 steps: step 5
    assert result.plan.freeze_steps == result.plan.deadlines and traces["scale_down_scores"] == 0
    assert summary["flops_ratio"] <= 0.97 and summary["planned_compute"] <= 0.97
    assert summary["flops_ratio"] == pytest.approx(summary["planned_compute"], rel=1e-9)
    assert summary["candidate_cuts"] == [1] and result.cut == 1  # VGG: after stage 0's pool
    assert summary["events"][0]["step"] == freeze and summary["events"][0]["early"] is False
    # Stage 0's learning rate ramped down over the 3 steps before its freeze: its weights
    # differ from those of plain training stopped at the same step.
    train, test = tiny_data()
    plain = fit(tiny_vgg(), train, test, train_config(epochs=4), max_steps=freeze)
    ours, theirs = result.frozen["params"], plain.state.params["stage0_layer0"]
    gap = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), ours["stage0_layer0"], theirs)
    assert max(jax.tree.leaves(gap)) > 1e-4


def test_max_stages_zero_reproduces_plain_fit_with_augmentation():
    model = tiny_resnet()
    train, test = tiny_data()
    config = train_config(epochs=2)  # crop + flip
    scale = ScaleDownConfig(max_stages=0, target_compute=1.0)
    baseline = fit(model, train, test, config)
    result = fit_scale_down(model, train, test, config, scale)
    assert result.cut == 0 and result.summary["events"] == []
    chex.assert_trees_all_close(result.variables, baseline.state.variables, rtol=1e-5, atol=1e-6)
    for a, b in zip(result.history, baseline.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-5)
    assert result.summary["flops_ratio"] == pytest.approx(1.0)


def test_frozen_layers_stay_bitwise_unchanged_after_growth_and_more_steps():
    small = VGG((1, 1, 1), (4, 4, 4), hidden_widths=(8,), num_classes=3)
    model, grown = widen(small, init(small)[0], widths=(6, 8, 8), key=jax.random.key(3))
    config = train_config()  # crop + flip augmentation
    scale = dataclasses.replace(FORCED, max_stages=1)
    at_cut, _, _ = _fit(model, config.replace(max_steps=7), scale, variables=grown)  # cut: 6
    later, _, _ = _fit(model, config, scale, variables=grown)
    assert at_cut.cut == later.cut == 1 and at_cut.summary["steps"] == 7
    assert [r["augment"] for r in later.history] == ["crop_flip"] * 3
    chex.assert_trees_all_equal(at_cut.frozen, later.frozen)  # bitwise
    assert later.frozen["params"]["stage0_layer0"]["conv"]["kernel"].shape[-1] == 6
    moved = jax.tree.map(
        lambda a, b: bool(jnp.any(a != b)), at_cut.state.params, later.state.params
    )
    assert all(jax.tree.leaves(moved["head"]))  # the suffix kept training
    trained = jax.tree.map(
        lambda a, b: bool(jnp.any(a != b)),
        grown["params"]["stage0_layer0"],
        at_cut.frozen["params"]["stage0_layer0"],
    )
    assert any(jax.tree.leaves(trained))  # frozen after it was trained


def test_cache_mode_falls_back_to_nograd_when_the_cache_does_not_fit():
    scale = dataclasses.replace(FORCED, mode="cache", cache_max_bytes=0)
    result, traces, _ = _fit(tiny_resnet(), train_config(), scale)
    assert [r["mode"] for r in result.history] == ["nograd"] * 3
    assert result.summary["events"][0]["mode"] == "nograd" and traces["scale_down_cache"] == 0


def test_vgg_without_bn_in_cache_mode_freezes_stage_after_stage():
    model = VGG((1, 1, 1), (4, 8, 8), hidden_widths=(8,), num_classes=3, batch_norm=False)
    _, test = tiny_data()
    config = train_config(augment="none")
    result, traces, _ = _fit(model, config, dataclasses.replace(FORCED, mode="cache"))
    assert result.plan.freeze_steps == (6, 8)  # stage 1 checked at 6, read at 8
    assert result.cut == 2 and [r["mode"] for r in result.history] == ["nograd", "cache", "cache"]
    assert [(e["from_cut"], e["to_cut"]) for e in result.summary["events"]] == [(0, 1), (1, 2)]
    assert traces["scale_down_cache"] == 2  # images -> cut 1, cut 1 -> cut 2
    assert traces["scale_down_recalibrate"] == 0  # no BatchNorm
    assert set(result.state.params) == {"stage2_layer0", "hidden0", "head"}
    init_variables, _ = init(model)
    assert set(result.variables) == set(init_variables) == {"params"}  # no empty batch_stats
    chex.assert_trees_all_equal_shapes(result.variables, init_variables)
    x = _normalised(test.images, np.asarray(test.mean), np.asarray(test.std))
    logits = model.apply(result.variables, x, train=False)
    accuracy = float(jnp.mean(jnp.argmax(logits, -1) == jnp.asarray(test.labels)))
    assert result.history[-1]["test_acc"] == pytest.approx(accuracy)


def test_fit_scale_down_runs_a_model_without_a_dtype_field_in_cache_mode():
    train, test = tiny_data()
    scale = dataclasses.replace(FORCED, mode="cache")
    seen = []
    result = fit_scale_down(
        Mlp(2), train, test, train_config(augment="none"), scale, on_step=seen.append
    )
    assert seen == list(range(result.history[-1]["step"]))  # called before every step
    assert result.cut == 1 and [r["mode"] for r in result.history] == ["nograd", "cache", "cache"]
    assert set(result.state.params) == {"hidden1", "head"}


def test_fit_scale_down_accepts_frozen_dict_variables_and_leaves_them_alone():
    model = tiny_resnet()
    variables, _ = init(model)
    frozen_dict = flax.core.freeze(variables)
    train, test = tiny_data()
    result = fit_scale_down(model, train, test, train_config(), FORCED, variables=frozen_dict)
    assert result.cut == 2 and result.summary["steps"] == 12
    assert type(result.variables["params"]) is dict
    chex.assert_trees_all_equal(flax.core.unfreeze(frozen_dict), variables)  # not donated


class HeadOfTwo(flax.linen.Module):
    """Like ``Mlp(1)`` but without ``num_classes``: its head gives 2 logits, whatever the data."""

    def layer_names(self) -> tuple[str, ...]:
        return ("hidden0", "head")

    @flax.linen.compact
    def __call__(self, x, train=False, *, start=0, stop=None):
        names = self.layer_names()[start:stop]
        x = x.reshape(x.shape[0], -1)
        if "hidden0" in names:
            x = flax.linen.relu(flax.linen.Dense(8, name="hidden0")(x))
        return flax.linen.Dense(2, name="head")(x) if "head" in names else x


def test_fit_scale_down_rejects_bad_arguments_before_training():
    train, test = tiny_data()
    config = train_config()
    with pytest.raises(TypeError, match="scale_config must be a ScaleDownConfig, got dict"):
        fit_scale_down(tiny_vgg(), train, test, config, {"mode": "cache"})
    other, _ = init(VGG((1, 1), (6, 8), hidden_widths=(8,), num_classes=3))
    with pytest.raises(
        ValueError, match=r"variables do not match VGG: .*stage0_layer0.* needs \(4,"
    ):
        fit_scale_down(tiny_vgg(), train, test, config, FORCED, variables=other)
    with pytest.raises(ValueError, match=r"max_stages=3 is more than the 2 stages VGG has"):
        fit_scale_down(tiny_vgg(), train, test, config, dataclasses.replace(FORCED, max_stages=3))
    with pytest.raises(ValueError, match="needs at least one layer before the head, got 1"):
        fit_scale_down(Mlp(0), train, test, config, FORCED)
    with pytest.raises(ValueError, match=r"HeadOfTwo gives logits \(1, 2\) .* has 3 classes"):
        fit_scale_down(HeadOfTwo(), train, test, config, FORCED)
    for max_steps in (2.5, -1, True, "3"):
        with pytest.raises(ValueError, match=r"max_steps must be an int >= 0"):
            fit_scale_down(tiny_vgg(), train, test, config, FORCED, max_steps=max_steps)
    tight = dataclasses.replace(FORCED, target_compute=0.05)
    with pytest.raises(ValueError, match=r"target_compute=0.05 cannot be met"):
        fit_scale_down(tiny_vgg(), train, test, config, tight)


# --- resuming --------------------------------------------------------------------------


@pytest.mark.parametrize("stop", [5, 7], ids=["before_the_freeze", "after_the_freeze"])
def test_a_resumed_run_ends_bitwise_where_the_whole_run_ends(stop, resnet_runs, tmp_path):
    whole = resnet_runs["cache"][0]  # cache mode, no augmentation, frozen at step 6
    config = train_config(augment="none", log_path=str(tmp_path / "log.jsonl"))
    scale = dataclasses.replace(FORCED, mode="cache")
    first, _, _ = _fit(tiny_resnet(), config, scale, max_steps=stop)
    checkpoint = first.checkpoint
    assert int(checkpoint.state.step) == stop
    assert checkpoint.pending_step == (4 if stop < 6 else 6)  # read at the next check
    rest, traces, _ = _fit(tiny_resnet(), config, scale, resume=checkpoint)
    assert [r["epoch"] for r in rest.history] == [2, 3]  # it continues epoch 2
    assert rest.plan.freeze_steps == whole.plan.freeze_steps == (6,)
    chex.assert_trees_all_equal(rest.variables, whole.variables)  # bitwise
    chex.assert_trees_all_equal(rest.state.opt_state, whole.state.opt_state)
    np.testing.assert_array_equal(rest.scores.steps, whole.scores.steps)
    np.testing.assert_array_equal(rest.scores.changes, whole.scores.changes)
    assert rest.summary["train_flops"] == pytest.approx(whole.summary["train_flops"])
    assert [r["test_acc"] for r in rest.history] == [r["test_acc"] for r in whole.history[1:]]
    # The log holds the first part's records (epoch 1, then the stop's), then the resumed
    # run's: the freeze at step 6 once, epochs 2 and 3.
    lines = [line for line in read_jsonl(tmp_path / "log.jsonl") if "summary" not in line]
    steps = [(line.get("event"), line["step"]) for line in lines]
    resumed = [("freeze", 6), (None, 8), (None, 12)]
    assert steps == [(None, 4), *sorted([(None, stop), *resumed], key=lambda pair: pair[1])]
    summaries = [
        line["summary"] for line in read_jsonl(tmp_path / "log.jsonl") if "summary" in line
    ]
    assert [summary["steps"] for summary in summaries] == [12]  # the first part's is dropped
    assert traces["scale_down_step"] == 2  # every cut compiled again, ahead of time


@pytest.mark.parametrize("mode", ["nograd", "cache"])
def test_background_compiles_train_step_for_step_like_compiling_first(mode):
    """The candidates compile in a thread while cut 0 trains; the plan comes at the latest
    before ``not_before - ramp - 1``; nothing about training changes."""
    train, test = tiny_data()
    config = train_config(augment="none")
    scale = dataclasses.replace(FORCED, mode=mode, not_before=0.5, ramp=0.1)
    runs = {
        precompile: fit(tiny_resnet(), train, test, config, scale_down=scale, precompile=precompile)
        for precompile in (True, False)
    }
    ahead, background = runs[False].scale_down, runs[True].scale_down
    assert background.plan == ahead.plan and background.plan.freeze_steps == (7,)
    assert background.summary["events"][0]["step"] == 7  # ready (read at step 6) + 1-step ramp
    chex.assert_trees_all_equal(background.variables, ahead.variables)  # bitwise
    np.testing.assert_array_equal(background.scores.steps, ahead.scores.steps)
    np.testing.assert_array_equal(background.scores.changes, ahead.scores.changes)
    np.testing.assert_array_equal(background.scores.candidate, ahead.scores.candidate)
    assert [r["test_acc"] for r in background.history] == [r["test_acc"] for r in ahead.history]
    assert background.summary["train_flops"] == pytest.approx(ahead.summary["train_flops"])
    last = {p: runs[p].history[-1] for p in runs}
    assert last[True]["background_compile_s"] > 0 == last[False]["background_compile_s"]
    assert last[True]["compile_s"] < last[False]["compile_s"]


def test_a_checkpoint_taken_before_the_background_compiles_end_holds_the_plan():
    train, test = tiny_data()
    scale = dataclasses.replace(FORCED, target_compute=0.95, not_before=0.6, ready_ratio=None)
    kept = []
    result = fit(
        tiny_resnet(),
        train,
        test,
        train_config(augment="none"),
        scale_down=scale,
        on_epoch_end=lambda run, record: kept.append((record["step"], run.plan)),
    )
    step, plan = kept[0]  # epoch 1 ends at step 4, before the plan is due (step 7)
    assert step == 4 and plan == result.scale_down.plan and plan.deadlines[0] < NEVER


def test_resume_rejects_variables_and_a_foreign_checkpoint(resnet_runs):
    train, test = tiny_data()
    checkpoint = resnet_runs["cache"][0].checkpoint
    variables, _ = init(tiny_resnet())
    with pytest.raises(ValueError, match="pass variables or resume, not both"):
        fit_scale_down(
            tiny_resnet(),
            train,
            test,
            train_config(),
            FORCED,
            variables=variables,
            resume=checkpoint,
        )
    with pytest.raises(TypeError, match="resume must be a ScaleDownCheckpoint, got dict"):
        fit_scale_down(tiny_resnet(), train, test, train_config(), FORCED, resume={})


# --- one loop: train.fit(..., scale_down=...) --------------------------------------------


def host_copy(tree):
    return jax.tree.map(np.array, tree)


@pytest.fixture(scope="module")
def fit_runs(tmp_path_factory):
    """``resnet_runs``' cache-mode run spelled ``train.fit(..., scale_down=...)``, with a
    record every 2 steps and the run state each record came with (host copies)."""
    log = tmp_path_factory.mktemp("fit") / "run.jsonl"
    train, test = tiny_data()
    config = train_config(augment="none", log_path=str(log), eval_every_steps=2)
    saved = {}

    def keep(run_state, record):
        saved[record["step"]] = run_state._replace(state=host_copy(run_state.state))

    scale = dataclasses.replace(FORCED, mode="cache")
    result = fit(tiny_resnet(), train, test, config, scale_down=scale, on_epoch_end=keep)
    return {"result": result, "log": log, "saved": saved, "config": config, "scale": scale}


def test_fit_with_scale_down_trains_bitwise_like_fit_scale_down(resnet_runs, fit_runs):
    alias = resnet_runs["cache"][0]
    result = fit_runs["result"]
    run = result.scale_down
    assert result.model == tiny_resnet() and run.cut == alias.cut == 2
    chex.assert_trees_all_equal(run.variables, alias.variables)  # bitwise
    chex.assert_trees_all_equal(result.state.state.opt_state, alias.state.opt_state)
    chex.assert_trees_all_equal(run.frozen, alias.frozen)
    np.testing.assert_array_equal(run.scores.changes, alias.scores.changes)
    assert run.plan == alias.plan

    def untimed(events):
        return [{k: v for k, v in event.items() if k != "move_s"} for event in events]

    assert untimed(run.summary["events"]) == untimed(alias.summary["events"])
    epochs = [r for r in result.history if r["step"] % 4 == 0 and "event" not in r]
    assert [r["train_loss"] for r in epochs] == [r["train_loss"] for r in alias.history]
    assert [r["test_acc"] for r in epochs] == [r["test_acc"] for r in alias.history]
    assert run.summary["train_flops"] == alias.summary["train_flops"]


def test_fit_with_scale_down_logs_the_records_of_a_plain_fit_and_its_freezes(fit_runs):
    train, test = tiny_data()
    plain = fit(tiny_resnet(), train, test, train_config(augment="none"), max_steps=4)
    lines = read_jsonl(fit_runs["log"])
    assert lines[:-1] == fit_runs["result"].history
    steps = [(line.get("event"), line["step"]) for line in lines[:-1]]
    evals = [(None, step) for step in (2, 4, 6, 8, 10, 12)]
    assert steps == [*evals[:3], ("freeze", 6), *evals[3:]]
    (freeze,) = [line for line in lines if line.get("event") == "freeze"]
    assert (freeze["from_cut"], freeze["to_cut"], freeze["epoch"]) == (0, 2, 1.5)
    assert freeze["layers"] == ["stem", "stage0_block0"] and freeze["event_s"] > 0
    assert freeze["train_flops"] > 0 and freeze["step_flops"] < lines[0]["step_flops"]
    ends = [line for line in lines if "epoch_s" in line]
    assert [r["epoch"] for r in ends] == [1, 2, 3] and [r["cut"] for r in ends] == [0, 2, 2]
    assert set(plain.history[0]) <= set(ends[0])  # every field of a plain fit's records
    per_epoch = {"epoch_s", "images_per_s", "first_step_s", "epoch_flops"}
    assert set(plain.history[0]) - per_epoch <= set(lines[0])
    assert lines[-1]["summary"]["cut"] == 2 and lines[-1]["step"] == 12


def _orbax_round_trip(run, config, scale, directory):
    """``run`` saved with ``save_run`` and restored with ``restore_run``, checked equal."""
    train, _ = tiny_data()
    model = tiny_resnet()
    save_run(directory, model, run, config, scale, input_shape=(1, *train.image_shape))
    spe = steps_per_epoch(len(train), config.batch_size)
    back, restored = restore_run(directory, model, config, train.image_shape, spe)
    assert restored.metadata["scale_down"] == dataclasses.asdict(scale)
    for field in ("step", "params", "batch_stats", "opt_state"):  # bitwise, same structure
        chex.assert_trees_all_equal(getattr(back.state, field), getattr(run.state, field))
    chex.assert_trees_all_equal(back.frozen, run.frozen)
    chex.assert_trees_all_equal(back.snapshot, run.snapshot)
    chex.assert_trees_all_equal(back.pending_norms, run.pending_norms)
    assert (back.plan, back.pending_step, back.totals) == (run.plan, run.pending_step, run.totals)
    assert back.events == run.events
    for field in ("steps", "changes", "candidate", "readiness"):
        np.testing.assert_array_equal(getattr(back.scores, field), getattr(run.scores, field))
    whole = checkpoint_lib.restore(directory).variables  # an ordinary checkpoint too
    chex.assert_trees_all_equal(whole, whole_variables(run.frozen, run.state))
    with pytest.raises(ValueError, match="holds no scale-down run state"):
        plain = directory.parent / "plain"
        checkpoint_lib.save(plain, model=model, variables=whole, step=1)
        restore_run(plain, model, config, train.image_shape, spe)
    return back


def test_fit_with_scale_down_resumes_bitwise_from_a_mid_run_checkpoint(fit_runs, tmp_path):
    whole, saved = fit_runs["result"], fit_runs["saved"]
    assert sorted(saved) == [2, 4, 6, 8, 10, 12]
    train, test = tiny_data()
    for step in (2, 8):  # before and after the freeze at step 6
        log = tmp_path / f"from_{step}.jsonl"  # the log as it was when the run stopped
        log.write_text(
            "".join(
                json.dumps(line) + "\n"
                for line in read_jsonl(fit_runs["log"])
                if line["step"] <= step
            )
        )
        config = fit_runs["config"].replace(log_path=str(log))
        state = saved[step]
        if step == 8:  # through an Orbax checkpoint: the same run state
            state = _orbax_round_trip(state, config, fit_runs["scale"], tmp_path / "run")
        rest = fit(tiny_resnet(), train, test, config, scale_down=fit_runs["scale"], state=state)
        assert int(rest.state.state.step) == 12 and rest.scale_down.cut == 2
        chex.assert_trees_all_equal(rest.scale_down.variables, whole.scale_down.variables)
        chex.assert_trees_all_equal(rest.state.state.opt_state, whole.state.state.opt_state)
        np.testing.assert_array_equal(rest.scale_down.scores.steps, whole.scale_down.scores.steps)
        later = [
            r for r in whole.history if r["step"] > step or ("event" in r and r["step"] == step)
        ]
        assert [(r.get("event"), r["step"]) for r in rest.history] == [
            (r.get("event"), r["step"]) for r in later
        ]
        assert [r.get("test_acc") for r in rest.history] == [r.get("test_acc") for r in later]
        assert rest.scale_down.summary["train_flops"] == whole.scale_down.summary["train_flops"]
        logged = [(r.get("event"), r["step"]) for r in read_jsonl(log)]
        assert logged == [(r.get("event"), r["step"]) for r in whole.history] + [(None, 12)]


def test_fit_scales_the_learning_rate_of_the_stages_that_may_freeze():
    train, test = tiny_data()
    config = train_config(epochs=1)
    scale = dataclasses.replace(FORCED, ready_ratio=None, lr_boost=1e-9)  # freezes nothing
    start = create_train_state(tiny_resnet(), config, train.images, steps_per_epoch=4).params
    result = fit(tiny_resnet(), train, test, config, scale_down=scale)
    assert result.scale_down.cut == 0
    params = result.scale_down.variables["params"]
    for name in tiny_resnet().layer_names():  # stem and stage 0 may freeze: they barely move
        leaves = zip(jax.tree.leaves(params[name]), jax.tree.leaves(start[name]), strict=True)
        moved = max(float(np.max(np.abs(a - b))) for a, b in leaves)
        assert (moved < 1e-6) == (name in ("stem", "stage0_block0")), (name, moved)


def test_fit_refuses_scale_down_with_growth_or_streamed_input():
    train, test = tiny_data()
    config = train_config()
    grow = (Grow(1, widths=(6, 8)),)
    with pytest.raises(ValueError, match="growth events and scale_down do not combine"):
        fit(tiny_resnet(), train, test, config, scale_down=FORCED, growth=grow)
    with pytest.raises(ValueError, match="scale_down trains from data in memory"):
        fit(tiny_resnet(), train, test, config.replace(input="stream"), scale_down=FORCED)
    with pytest.raises(TypeError, match="scale_down must be a ScaleDownConfig, got dict"):
        fit(tiny_resnet(), train, test, config, scale_down={"mode": "cache"})
    with pytest.raises(TypeError, match="state must be a ScaleDownCheckpoint with scale_down"):
        state = create_train_state(tiny_resnet(), config, train.images, steps_per_epoch=4)
        fit(tiny_resnet(), train, test, config, scale_down=FORCED, state=state)
