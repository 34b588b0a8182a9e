"""Tests of jnet2net.scale_down: scores, policy, prefix/suffix split, caches, FLOPs, the loop."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jnet2net import widen
from jnet2net.data import from_arrays
from jnet2net.data.augment import augment
from jnet2net.models import VGG, ResNet
from jnet2net.scale_down import cache as cache_lib
from jnet2net.scale_down import fit_scale_down, make_scaled_train_step, move_cut
from jnet2net.scale_down.config import ScaleDownConfig
from jnet2net.scale_down.flops import cache_flops, flops_from_cost, step_flops
from jnet2net.scale_down.loop import flip_choices
from jnet2net.scale_down.policy import cut_limit, initial_policy, replay_policy, update_policy
from jnet2net.scale_down.scores import (
    empty_history,
    layer_change_scores,
    record_scores,
    score_levels,
    score_trends,
    still_learning,
)
from jnet2net.scale_down.split import (
    merge_variables,
    prefix_apply,
    shrink_opt_state,
    split_variables,
    suffix_apply,
)
from jnet2net.train import TRACE_COUNTS, TrainConfig, create_train_state, fit, read_jsonl
from jnet2net.train.sharding import data_mesh

IMAGE = (8, 8, 1)


def tiny_vgg() -> VGG:
    return VGG((1, 1), (4, 8), hidden_widths=(8,), num_classes=3)


def tiny_resnet() -> ResNet:
    return ResNet((1, 1), (4, 8), num_classes=3)


def init(model, batch: int = 4):
    x = jax.random.normal(jax.random.key(1), (batch, *IMAGE))
    return model.init(jax.random.key(0), x), x


# --- scores ----------------------------------------------------------------------------


def test_layer_change_scores_on_hand_made_snapshots():
    previous = {
        "a": {"kernel": jnp.array([3.0, 4.0]), "bias": jnp.array([0.0])},
        "b": {"kernel": jnp.array([[1.0, 0.0], [0.0, 0.0]])},
        "c": {"kernel": jnp.zeros((2,))},
    }
    current = {
        "a": {"kernel": jnp.array([3.0, 4.0]), "bias": jnp.array([0.5])},  # |d| 0.5, |w| 5
        "b": {"kernel": jnp.array([[1.0, 0.0], [0.0, 2.0]])},  # |d| 2, |w| 1
        "c": {"kernel": jnp.zeros((2,))},  # zero and unchanged
    }
    scores = layer_change_scores(previous, current, ("a", "b", "c", "dropped"))
    chex.assert_trees_all_close(scores[:3], jnp.array([0.1, 2.0, 0.0]), rtol=1e-6)
    assert np.isnan(scores[3])


def test_layer_change_scores_rejects_changed_shapes():
    with pytest.raises(ValueError, match=r"params/a has a leaf of shape \(3,\) now and \(2,\)"):
        layer_change_scores({"a": jnp.zeros(2)}, {"a": jnp.zeros(3)}, ("a",))


def test_record_scores_smooths_and_tracks_peak():
    history = empty_history(("x", "y"))
    rows = [[4.0, np.nan], [2.0, 1.0], [1.0, 3.0]]
    for step, raw in zip((10, 20, 30), rows, strict=True):
        history = record_scores(history, step, np.array(raw), smoothing=0.5)
    # x: 4 -> 0.5*4+0.5*2 = 3 -> 0.5*3+0.5*1 = 2; y: nan -> 1 (restart) -> 2.
    np.testing.assert_allclose(history.smoothed, [[4, np.nan], [3, 1], [2, 2]])
    np.testing.assert_array_equal(history.steps, [10, 20, 30])
    np.testing.assert_allclose(history.peak, [4, 2])
    np.testing.assert_allclose(score_levels(history, "peak"), [0.5, 1.0])
    np.testing.assert_allclose(score_levels(history, "none"), [2.0, 2.0])


def test_record_scores_rejects_bad_rows():
    history = record_scores(empty_history(("x",)), 5, np.array([1.0]), 0.5)
    with pytest.raises(ValueError, match=r"needs \(1,\) scores for layers \('x',\)"):
        record_scores(history, 6, np.array([1.0, 2.0]), 0.5)
    with pytest.raises(ValueError, match="check at step 5 is not after the last one"):
        record_scores(history, 5, np.array([1.0]), 0.5)


def test_score_trends_are_relative_slopes_of_the_trailing_window():
    history = empty_history(("falling", "rising", "flat", "young"))
    rows = [[8, 1, 2, np.nan], [6, 2, 2, np.nan], [4, 3, 2, np.nan], [2, 4, 2, 5.0]]
    for step, raw in enumerate(rows):
        history = record_scores(history, step, np.array(raw, float), smoothing=0.0)
    trends = score_trends(history, window=3)
    # falling over (6, 4, 2): slope -2, mean 4; rising (2, 3, 4): slope 1, mean 3.
    np.testing.assert_allclose(trends[:3], [-0.5, 1 / 3, 0.0])
    assert np.isnan(trends[3])  # one finite score: no trend yet


def test_still_learning_needs_low_level_and_no_rise():
    config = ScaleDownConfig(threshold=0.5, trend_tolerance=0.05, trend_window=3, smoothing=0.0)
    history = empty_history(("low_falling", "high", "low_rising", "young"))
    rows = [[10, 10, 10, np.nan], [3, 9, 1, np.nan], [2, 9, 1.2, np.nan], [1, 9, 1.5, 1.0]]
    for step, raw in enumerate(rows):
        history = record_scores(history, step, np.array(raw, float), smoothing=0.0)
    np.testing.assert_array_equal(still_learning(history, config), [False, True, True, True])


# --- policy ----------------------------------------------------------------------------


def _history_of(levels_per_check: list[list[float]], names: tuple[str, ...]):
    """A history whose raw scores are the given levels (peak 1 at check 0)."""
    history = empty_history(names)
    history = record_scores(history, 0, np.ones(len(names)), 0.0)
    histories = []
    for step, levels in enumerate(levels_per_check, start=1):
        history = record_scores(history, step, np.array(levels, float), 0.0)
        histories.append(history)
    return histories


POLICY = ScaleDownConfig(
    threshold=0.5, patience=2, warmup_steps=0, smoothing=0.0, trend_window=2, trend_tolerance=0.0
)


def test_policy_freezes_in_prefix_order_and_never_the_head():
    names = ("l0", "l1", "l2", "head")
    # l1 goes quiet first, but only l0 may be dropped first; the head is always quiet.
    levels = [[0.9, 0.1, 0.9, 0.1], [0.8, 0.1, 0.8, 0.1], [0.2, 0.1, 0.7, 0.1]]
    levels += [[0.1, 0.1, 0.6, 0.1], [0.1, 0.1, 0.3, 0.1]] + [[0.1, 0.1, 0.3, 0.1]] * 3
    state = initial_policy(len(names))
    cuts = []
    for step, history in enumerate(_history_of(levels, names), start=1):
        state = update_policy(state, history, step, POLICY)
        cuts.append(state.cut)
    # l0 quiet at checks 3, 4 -> cut 2 at once (l1 long quiet); l2 quiet at 5, 6 -> 3.
    assert cuts == [0, 0, 0, 2, 2, 3, 3, 3]
    assert max(cuts) == cut_limit(len(names), POLICY) == 3  # head never dropped


def test_replay_policy_reads_a_recorded_history_check_by_check():
    names = ("l0", "l1", "l2", "head")
    levels = [[0.9, 0.1, 0.9, 0.1], [0.8, 0.1, 0.8, 0.1], [0.2, 0.1, 0.7, 0.1]]
    levels += [[0.1, 0.1, 0.6, 0.1], [0.1, 0.1, 0.3, 0.1]] + [[0.1, 0.1, 0.3, 0.1]] * 3
    history = _history_of(levels, names)[-1]
    replayed = replay_policy(history, POLICY)
    assert replayed == list(enumerate([0, 0, 0, 0, 2, 2, 3, 3, 3]))


def test_policy_waits_for_warmup_and_respects_max_frozen():
    names = ("l0", "l1", "l2", "head")
    histories = _history_of([[0.1] * 4] * 6, names)
    config = ScaleDownConfig(
        threshold=0.5, patience=2, warmup_steps=4, smoothing=0.0, trend_window=2, max_frozen=1
    )
    state = initial_policy(len(names))
    cuts = []
    for step, history in enumerate(histories, start=1):
        state = update_policy(state, history, step, config)
        cuts.append(state.cut)
    assert cuts == [0, 0, 0, 0, 1, 1]  # counts from step 4; never more than one layer


def test_policy_rejects_mismatched_history():
    state = initial_policy(3)
    history = _history_of([[0.1, 0.1]], ("a", "head"))[0]
    with pytest.raises(ValueError, match=r"policy tracks 3 layers, the history 2"):
        update_policy(state, history, 1, POLICY)
    with pytest.raises(ValueError, match=r"cut must be in \[0, 2\]"):
        initial_policy(3, cut=3)


# --- config ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"check_every": 0}, ValueError, "check_every must be positive"),
        ({"check_every": 2.5}, TypeError, "check_every must be an int"),
        ({"patience": -1}, ValueError, "patience must be positive, got -1"),
        ({"trend_window": 1}, ValueError, "trend_window must be >= 2"),
        ({"warmup_steps": True}, TypeError, "warmup_steps must be an int"),
        ({"max_frozen": -2}, ValueError, "max_frozen must be >= 0"),
        ({"smoothing": 1.0}, ValueError, r"smoothing must be in \[0, 1\)"),
        ({"smoothing": "high"}, TypeError, "smoothing must be a number"),
        ({"threshold": 0.0}, ValueError, "threshold must be > 0"),
        ({"threshold": 2.0}, ValueError, r"threshold must be in \(0, 1\] with normalize='peak'"),
        ({"threshold": math.nan}, ValueError, "threshold must be finite"),
        ({"trend_tolerance": -0.1}, ValueError, "trend_tolerance must be >= 0"),
        ({"mode": "frozen"}, ValueError, "mode must be one of 'nograd', 'cache', got 'frozen'"),
        ({"cache_augment": "crop"}, ValueError, "cache_augment must be one of 'flip', 'none'"),
        ({"normalize": "max"}, ValueError, "normalize must be one of 'peak', 'none'"),
        ({"flop_count": "xla"}, ValueError, "flop_count must be one of"),
        ({"cache_max_bytes": -1}, ValueError, "cache_max_bytes must be >= 0"),
    ],
)
def test_config_rejects_bad_values(kwargs, error, message):
    with pytest.raises(error, match=message):
        ScaleDownConfig(**kwargs)


def test_config_accepts_absolute_threshold_without_peak_normalisation():
    assert ScaleDownConfig(normalize="none", threshold=3.0).threshold == 3.0


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


def test_map_in_chunks_matches_one_call_and_pads_the_last_chunk():
    xs = jnp.arange(7 * 3, dtype=jnp.float32).reshape(7, 3)
    out = cache_lib.map_in_chunks(lambda x: 2 * x[:, :2], xs, chunk=3)
    chex.assert_trees_all_equal(out, 2 * xs[:, :2])
    with pytest.raises(ValueError, match="chunk must be a positive int"):
        cache_lib.map_in_chunks(lambda x: x, xs, chunk=0)
    with pytest.raises(ValueError, match="fn must keep the leading axis"):
        cache_lib.map_in_chunks(lambda x: x[:1], xs, chunk=3)


def test_gather_views_picks_plain_or_mirrored_rows():
    plain = jnp.arange(3 * 1 * 2 * 1, dtype=jnp.float32).reshape(3, 1, 2, 1)
    cache = cache_lib.ActivationCache(1, jnp.stack([plain, cache_lib.mirrored(plain)], axis=1))
    got = cache_lib.gather_views(cache.activations, jnp.array([2, 0]), jnp.array([1, 0]))
    chex.assert_trees_all_equal(got, jnp.stack([plain[2, :, ::-1], plain[0]]))
    plain_rows = cache_lib.gather_views(cache.activations, jnp.array([1, 2]), None)
    chex.assert_trees_all_equal(plain_rows, plain[1:])
    assert cache.nbytes == 2 * plain.size * 4 and cache.num_views == 2
    assert cache_lib.cache_nbytes((3, 1, 2, 1), jnp.float32, 2) == cache.nbytes


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


def test_compiled_cost_analysis_of_this_jax_reports_flops():
    compiled = jax.jit(lambda a: a @ a).lower(jnp.ones((4, 4))).compile()
    assert flops_from_cost(compiled.cost_analysis()) >= 2 * 4**3 - 4**2


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
    # No-grad: the prefix still runs each step; cached: the step forward falls with the cut.
    forward = [counts[0].forward] + [c.forward for c in cached]
    assert all(a > b for a, b in itertools.pairwise(forward)), forward
    for plain, stored in zip(counts[1:], cached, strict=True):
        assert stored.forward == pytest.approx(plain.forward - plain.prefix_forward)
        assert stored.backward == plain.backward
    assert counts[-1].total < 0.75 * counts[0].total
    extend = cache_flops(model, variables, 0, 2, x, how="lowered")
    assert extend == pytest.approx(counts[2].prefix_forward)
    # What runs, after XLA's optimisation, falls too.
    full, scaled = step_flops(model, variables, 0, x), step_flops(model, variables, 2, x)
    assert scaled.backward < full.backward and scaled.prefix_forward > 0
    assert cache_flops(model, variables, 2, 2, x) == 0.0
    with pytest.raises(ValueError, match="a cache only grows"):
        cache_flops(model, variables, 2, 1, x)


def test_flops_off_gives_nan_without_compiling():
    model = tiny_vgg()
    variables, x = init(model)
    counts = step_flops(model, variables, 1, x, how="off")
    assert math.isnan(counts.forward) and math.isnan(counts.backward)


def test_extending_a_cache_equals_building_it_at_the_new_cut():
    model = tiny_resnet()
    variables, _ = init(model)
    images = jax.random.randint(jax.random.key(2), (5, *IMAGE), 0, 256).astype(jnp.uint8)
    stats = {"mean": (120.0,), "std": (60.0,)}
    early = cache_lib.build_cache(model, variables, images, 1, flips=True, chunk=2, **stats)
    moved = cache_lib.extend_cache(model, variables, early, 3, chunk=2)
    direct = cache_lib.build_cache(model, variables, images, 3, flips=True, chunk=4, **stats)
    assert moved.cut == direct.cut == 3 and moved.num_views == 2
    chex.assert_trees_all_close(moved.activations, direct.activations, atol=1e-5)
    # The mirrored view is the prefix of the mirror images.
    x = (images[:, :, ::-1].astype(jnp.float32) - 120.0) / 60.0
    mirrored_view = direct.activations[:, 1]
    chex.assert_trees_all_close(mirrored_view, prefix_apply(model, variables, x, 3), atol=1e-5)
    assert cache_lib.extend_cache(model, variables, direct, 3) is direct
    with pytest.raises(ValueError, match=r"a cache only moves forward: cut 2 < cache.cut 3"):
        cache_lib.extend_cache(model, variables, direct, 2)
    with pytest.raises(ValueError, match="at least one layer, got cut=0"):
        cache_lib.build_cache(model, variables, images, 0, flips=False, **stats)


# --- steps and the loop ----------------------------------------------------------------

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


#: Every layer looks stopped from the second check on: the cut moves at step 4, to 2.
FORCED = ScaleDownConfig(
    check_every=2,
    warmup_steps=0,
    patience=1,
    normalize="none",
    threshold=1e9,
    trend_tolerance=1e9,
    max_frozen=2,
    flop_count="lowered",
)


def test_move_cut_drops_frozen_layers_from_state_and_keeps_the_other_moments():
    model = tiny_resnet()
    train, _ = tiny_data()
    config = train_config()
    state = create_train_state(model, config, train.images, steps_per_epoch=4)
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
    state_a, metrics_a = nograd(state, frozen, images, labels, order)
    state_b, metrics_b = cached(copy, cache.activations, labels, order)
    chex.assert_trees_all_close(metrics_a, metrics_b, rtol=1e-5)
    chex.assert_trees_all_close(state_a.params, state_b.params, atol=1e-6)
    chex.assert_trees_all_close(state_a.batch_stats, state_b.batch_stats, atol=1e-6)


def _fit(model, config, scale_config, **kwargs):
    train, test = tiny_data()
    before = TRACE_COUNTS["scale_down_step"]
    result = fit_scale_down(model, train, test, config, scale_config, **kwargs)
    return result, TRACE_COUNTS["scale_down_step"] - before


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


def test_cache_mode_trains_like_nograd_mode_without_augmentation(resnet_runs):
    (nograd, _), (cached, _) = resnet_runs["nograd"], resnet_runs["cache"]
    assert [r["mode"] for r in cached.history] == ["cache"] * 3
    assert [r["mode"] for r in nograd.history] == ["nograd"] * 3
    for a, b in zip(nograd.history, cached.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["test_acc"] == pytest.approx(b["test_acc"])
    chex.assert_trees_all_close(nograd.variables, cached.variables, atol=1e-5)


def test_loop_moves_the_cut_once_and_compiles_once_per_cut(resnet_runs):
    for result, traces in (resnet_runs["nograd"], resnet_runs["cache"]):
        assert result.cut == 2 and [r["cut"] for r in result.history] == [2, 2, 2]
        (event,) = result.summary["events"]
        assert (event["step"], event["from_cut"], event["to_cut"]) == (4, 0, 2)
        assert event["layers"] == ["stem", "stage0_block0"] == result.history[0]["frozen_now"]
        assert result.history[1]["frozen_now"] == []
        assert traces == 2  # one step per cut: 0 and 2
        assert set(result.frozen["params"]) == {"stem", "stage0_block0"}
        assert set(result.state.params) == {"stage1_block0", "head"}
        assert result.scores.steps.tolist() == [2, 4, 6, 8, 10, 12]
        assert np.isnan(result.scores.raw[2:, :2]).all()  # dropped layers are not scored


def test_loop_accounts_flops_per_epoch_and_in_the_summary(resnet_runs):
    (nograd, _), (cached, _) = resnet_runs["nograd"], resnet_runs["cache"]
    for result in (nograd, cached):
        first, later = result.history[0], result.history[1:]
        assert first["compile_s"] > 0 and all(r["epoch_s"] > 0 for r in result.history)
        for r in later:
            assert r["epoch_flops"] < r["full_epoch_flops"]
            assert r["backward_flops_per_example"] > 0 and r["rebuild_s"] == 0.0
        summary = result.summary
        assert summary["steps"] == 12 and summary["epochs"] == 3
        assert 0 < summary["flops_ratio"] < 1
        assert summary["train_flops"] == pytest.approx(
            sum(r["epoch_flops"] for r in result.history)
        )
        assert summary["full_step_s"] > 0 and summary["speedup_estimate"] > 0
    # The cache removes the prefix forward from every step; no-grad still runs it.
    last_cached, last_nograd = cached.history[-1], nograd.history[-1]
    for key in ("forward_flops_per_example", "backward_flops_per_example"):
        assert last_cached[key] > 0 and last_nograd[key] > 0
    assert last_cached["forward_flops_per_example"] < last_nograd["forward_flops_per_example"]
    assert last_cached["backward_flops_per_example"] == last_nograd["backward_flops_per_example"]
    assert 0 < cached.summary["trained_params"] < cached.summary["total_params"]
    assert cached.summary["train_forward_flops"] < cached.summary["full_train_forward_flops"]
    assert cached.summary["cache_flops"] > 0 == nograd.summary["cache_flops"]
    assert cached.history[-1]["cache_bytes"] > 0 == nograd.history[-1]["cache_bytes"]
    assert cached.history[-1]["augment"] == "none"
    lines = read_jsonl(resnet_runs["log"])
    assert [line.get("epoch") for line in lines[:3]] == [1, 2, 3]
    assert lines[-1]["summary"]["cut"] == 2 and len(lines) == 4


def test_frozen_layers_stay_bitwise_unchanged_after_growth_and_more_steps():
    small = VGG((1, 1), (4, 4), hidden_widths=(8,), num_classes=3)
    model, grown = widen(small, init(small)[0], widths=(6, 8), key=jax.random.key(3))
    config = train_config()  # crop + flip augmentation
    at_cut, _ = _fit(model, config, FORCED, variables=grown, max_steps=5)  # cut at step 4
    later, _ = _fit(model, config, FORCED, variables=grown)
    assert at_cut.cut == later.cut == 2 and at_cut.summary["steps"] == 5
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
    config = train_config(epochs=2)
    scale = dataclasses.replace(FORCED, mode="cache", cache_max_bytes=0)
    result, _ = _fit(tiny_resnet(), config, scale)
    assert [r["mode"] for r in result.history] == ["nograd", "nograd"]
    assert result.summary["events"][0]["mode"] == "nograd" and result.summary["cache_flops"] == 0


def test_fit_scale_down_rejects_bad_arguments():
    train, test = tiny_data()
    with pytest.raises(TypeError, match="scale_config must be a ScaleDownConfig, got dict"):
        fit_scale_down(tiny_vgg(), train, test, train_config(), {"mode": "cache"})
    other, _ = init(VGG((1, 1), (6, 8), hidden_widths=(8,), num_classes=3))
    with pytest.raises(
        ValueError, match=r"variables do not match VGG: .*stage0_layer0.* needs \(4,"
    ):
        fit_scale_down(tiny_vgg(), train, test, train_config(), FORCED, variables=other)


# --- review fixes ----------------------------------------------------------------------


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
    state_a, metrics_a = cached(state, plain.activations, labels, order)
    state_b, metrics_b = cached(copy, junk, labels, order)
    chex.assert_trees_all_close(metrics_a, metrics_b, rtol=1e-6)
    chex.assert_trees_all_close(state_a.params, state_b.params, atol=1e-7)


@pytest.fixture(scope="module")
def crop_cache_run():
    """A cache-mode run with crops only, spying on what the loop waits for."""
    built, blocked = [], []
    build, block = cache_lib.build_cache, jax.block_until_ready

    def spy_build(*args, **kwargs):
        cache = build(*args, **kwargs)
        built.append(cache.activations)
        return cache

    def spy_block(tree):
        blocked.extend(jax.tree.leaves(tree))
        return block(tree)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cache_lib, "build_cache", spy_build)
        patch.setattr(jax, "block_until_ready", spy_block)
        config = train_config(epochs=2, augment="crop")
        result, _ = _fit(tiny_resnet(), config, dataclasses.replace(FORCED, mode="cache"))
    return result, built, blocked


def test_cache_mode_stores_no_mirror_view_without_flip_augmentation(crop_cache_run):
    result, built, _ = crop_cache_run
    assert result.cut == 2 and [r["mode"] for r in result.history] == ["cache", "cache"]
    (activations,) = built
    assert activations.shape[1] == 1  # the plain view only
    assert result.history[-1]["cache_bytes"] == activations.nbytes
    assert [r["augment"] for r in result.history] == ["none (cached)"] * 2


def test_cut_move_time_includes_the_cache_build(crop_cache_run):
    _, built, blocked = crop_cache_run
    (activations,) = built
    assert any(leaf is activations for leaf in blocked)  # rebuild_s waits for the cache


def test_move_cut_rejects_a_cut_before_the_current_one():
    model = tiny_resnet()
    train, _ = tiny_data()
    state = create_train_state(model, train_config(), train.images, steps_per_epoch=4)
    state, frozen = move_cut(model, state, {}, 2)
    with pytest.raises(
        ValueError, match=r"cut 1 is before the current cut 2: layer 'stage0_block0' is frozen"
    ):
        move_cut(model, state, frozen, 1)


def test_prefix_suffix_and_cache_reject_cuts_outside_the_network():
    model = tiny_vgg()
    variables, x = init(model)
    frozen, trained = split_variables(model, variables, 1)
    with pytest.raises(ValueError, match=r"cut must be in \[0, 3\] .*got -1"):
        prefix_apply(model, variables, x, -1)
    with pytest.raises(ValueError, match=r"cut must be in \[0, 3\] .*got 4"):
        suffix_apply(model, trained["params"], trained["batch_stats"], x, 4, train=False)
    images = jnp.zeros((2, *IMAGE), jnp.uint8)
    cache = cache_lib.build_cache(model, frozen, images, 1, mean=(0.0,), std=(1.0,), flips=False)
    with pytest.raises(ValueError, match=r"cut must be in \[0, 3\] .*got 5"):
        cache_lib.extend_cache(model, variables, cache, 5)
    with pytest.raises(ValueError, match=r"cut must be in \[0, 3\] .*got -1"):
        cache_flops(model, variables, -1, 1, x)
    with pytest.raises(ValueError, match=r"cut must be in \[0, 3\] .*got 5"):
        cache_flops(model, variables, 5, 5, x)


# --- second review -----------------------------------------------------------------------


def tiny_vgg_without_bn() -> VGG:
    return VGG((1, 1), (4, 8), hidden_widths=(8,), num_classes=3, batch_norm=False)


def tiny_bottleneck() -> ResNet:
    return ResNet((1, 1), (8, 8), num_classes=3, block="bottleneck")


@pytest.mark.parametrize("make", [tiny_vgg_without_bn, tiny_bottleneck])
def test_cache_on_a_mesh_stays_replicated_at_every_cut(make):
    model = make()
    variables, _ = init(model)
    mesh = data_mesh()
    images = jax.random.randint(jax.random.key(2), (20, *IMAGE), 0, 256).astype(jnp.uint8)
    stats = {"mean": (120.0,), "std": (60.0,), "flips": False, "mesh": mesh}
    first = cache_lib.build_cache(model, variables, images, 1, chunk=32, **stats)  # one call
    for cut in range(1, len(model.layer_names())):
        built = cache_lib.build_cache(model, variables, images, cut, chunk=32, **stats)
        moved = cache_lib.extend_cache(model, variables, first, cut, chunk=8, mesh=mesh)  # 3
        for cache in (built, moved):
            assert cache.activations.sharding.is_fully_replicated, (cut, cache.activations.sharding)
        chex.assert_trees_all_close(built.activations, moved.activations, atol=1e-5)


def _eval_logits(model, variables, test):
    x = (jnp.asarray(test.images, jnp.float32) - jnp.asarray(test.mean)) / jnp.asarray(test.std)
    return model.apply(variables, x, train=False)


def test_vgg_without_bn_in_cache_mode_drops_all_but_the_head():
    model = tiny_vgg_without_bn()
    train, test = tiny_data()
    config = train_config(epochs=2, augment="none")
    scale = dataclasses.replace(FORCED, mode="cache", max_frozen=None)
    result = fit_scale_down(model, train, test, config, scale)
    assert result.cut == 3 == len(model.layer_names()) - 1  # the last layer before the head
    assert [r["mode"] for r in result.history] == ["cache", "cache"]
    assert set(result.state.params) == {"head"}
    init_variables, _ = init(model)
    # The same collections as the model's own variables: no empty batch_stats.
    assert set(result.variables) == set(init_variables) == {"params"}
    chex.assert_trees_all_equal_shapes(result.variables, init_variables)
    # The last evaluation ran the whole network on the returned variables.
    logits = _eval_logits(model, result.variables, test)
    accuracy = float(jnp.mean(jnp.argmax(logits, -1) == jnp.asarray(test.labels)))
    assert result.history[-1]["test_acc"] == pytest.approx(accuracy)


def test_config_accepts_numpy_numbers_and_stores_python_ones():
    config = ScaleDownConfig(
        check_every=np.int64(5),
        max_frozen=np.int32(2),
        threshold=np.float32(0.25),
        smoothing=np.float64(0.5),
        trend_tolerance=np.int64(0),
    )
    fields = dataclasses.asdict(config)
    assert json.loads(json.dumps(fields)) == fields  # e.g. checkpoint metadata
    assert type(config.check_every) is int and type(config.max_frozen) is int
    assert type(config.threshold) is float and config.threshold == 0.25
    assert type(config.trend_tolerance) is float
    assert config == ScaleDownConfig(
        check_every=5, max_frozen=2, threshold=0.25, smoothing=0.5, trend_tolerance=0.0
    )
    with pytest.raises(TypeError, match=r"check_every must be an int, got (np\.)?True"):
        ScaleDownConfig(check_every=np.bool_(True))
    with pytest.raises(ValueError, match="smoothing must be finite"):
        ScaleDownConfig(smoothing=np.float32("nan"))


def test_max_frozen_zero_reproduces_plain_fit_with_augmentation():
    model = tiny_resnet()
    train, test = tiny_data()
    config = train_config(epochs=2)  # crop + flip
    scale = dataclasses.replace(FORCED, max_frozen=0)
    baseline = fit(model, train, test, config)
    result = fit_scale_down(model, train, test, config, scale)
    assert result.cut == 0 and result.summary["events"] == []
    chex.assert_trees_all_close(result.variables, baseline.state.variables, rtol=1e-5, atol=1e-6)
    for a, b in zip(result.history, baseline.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-5)
    assert result.summary["flops_ratio"] == pytest.approx(1.0)
    assert result.summary["flops_saved"] == pytest.approx(0.0, abs=1e-12)


def test_summary_arithmetic_against_full_training_at_equal_steps(resnet_runs):
    for result, _ in (resnet_runs["nograd"], resnet_runs["cache"]):
        summary, history = result.summary, result.history
        full_step = history[0]["full_epoch_flops"] / (4 * 16)  # 4 steps of 16 per epoch
        last = history[-1]
        cut_step = last["forward_flops_per_example"] + last["backward_flops_per_example"]
        # 4 full steps, then 8 at cut 2, plus the cache build (0 in no-grad mode).
        expected = (4 * full_step + 8 * cut_step) * 16 + summary["cache_flops"]
        assert summary["train_flops"] == pytest.approx(expected, rel=1e-6)
        assert summary["full_train_flops"] == pytest.approx(12 * 16 * full_step, rel=1e-9)
        assert summary["full_train_flops"] == pytest.approx(
            sum(r["full_epoch_flops"] for r in history), rel=1e-9
        )
        ratio = summary["train_flops"] / summary["full_train_flops"]
        assert summary["flops_ratio"] == pytest.approx(ratio)
        assert summary["flops_saved"] == pytest.approx(1 - ratio)
        assert summary["full_train_s_estimate"] == pytest.approx(12 * summary["full_step_s"])
        assert summary["speedup_estimate"] == pytest.approx(
            summary["full_train_s_estimate"] / summary["train_s"]
        )
        assert summary["train_s"] == pytest.approx(sum(r["epoch_s"] for r in history))
        assert summary["rebuild_s"] == pytest.approx(sum(r["rebuild_s"] for r in history))
        assert summary["rebuild_s"] > 0


def test_fit_scale_down_accepts_frozen_dict_variables_and_leaves_them_alone():
    model = tiny_resnet()
    variables, _ = init(model)
    frozen_dict = flax.core.freeze(variables)
    train, test = tiny_data()
    config = train_config(epochs=2)
    result = fit_scale_down(model, train, test, config, FORCED, variables=frozen_dict)
    assert result.cut == 2 and result.summary["steps"] == 8
    assert type(result.variables["params"]) is dict
    chex.assert_trees_all_equal(flax.core.unfreeze(frozen_dict), variables)  # not donated


@pytest.mark.parametrize("max_steps", [2.5, -1, True, "3"])
def test_fit_scale_down_rejects_bad_max_steps(max_steps):
    train, test = tiny_data()
    with pytest.raises(ValueError, match=r"max_steps must be an int >= 0"):
        fit_scale_down(tiny_vgg(), train, test, train_config(), FORCED, max_steps=max_steps)


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
        state, metrics_a = nograd(state, frozen, images, labels, order)
        state_b, metrics_b = cached(state_b, cache.activations, labels, order)
        chex.assert_trees_all_close(metrics_a, metrics_b, rtol=1e-5)
    chex.assert_trees_all_close(state.params, state_b.params, atol=1e-5)
    # With crops too, the cached step mirrors exactly the examples that the crop step flips.
    key, x = jax.random.key(7), images[:NUM_TRAIN]
    flips = flip_choices(key, NUM_TRAIN).astype(bool)
    cropped = augment(key, x, crop_padding=2, flip=False)
    expected = jnp.where(flips[:, None, None, None], cropped[:, :, ::-1], cropped)
    chex.assert_trees_all_equal(augment(key, x, crop_padding=2, flip=True), expected)
    assert 0 < int(flips.sum()) < NUM_TRAIN


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


def test_fit_scale_down_rejects_a_network_without_layers_before_the_head():
    train, test = tiny_data()
    scale = dataclasses.replace(FORCED, check_every=1000)  # no check would ever notice
    with pytest.raises(ValueError, match="needs at least one layer before the head, got 1"):
        fit_scale_down(Mlp(0), train, test, train_config(epochs=1), scale)


def test_fit_scale_down_runs_a_model_without_a_dtype_field_in_cache_mode():
    train, test = tiny_data()
    scale = dataclasses.replace(FORCED, mode="cache", max_frozen=None)
    result = fit_scale_down(Mlp(2), train, test, train_config(epochs=2, augment="none"), scale)
    assert result.cut == 2 and [r["mode"] for r in result.history] == ["cache", "cache"]
    assert set(result.state.params) == {"head"}


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


def test_fit_scale_down_rejects_logits_that_do_not_fit_the_classes():
    train, test = tiny_data()  # 3 classes
    with pytest.raises(ValueError, match=r"HeadOfTwo gives logits \(1, 2\) .* has 3 classes"):
        fit_scale_down(HeadOfTwo(), train, test, train_config(epochs=1), FORCED)
