"""Growth schedules inside one ``fit``: exact events, mapped state, compute records, resume."""

from __future__ import annotations

import chex
import jax
import numpy as np
import pytest
from helpers import TRACES  # tests/ is on sys.path

import jnet2net
from jnet2net import data, models, train
from jnet2net.train.events import grow_at_event

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# Widths unique to this module, so the compile counts below see fresh architectures.
MODEL = models.ResNet((1, 1), (3, 5), num_classes=10)
WIDE = MODEL.clone(stage_widths=(5, 7))
WIDE_DEEP = WIDE.clone(stage_depths=(2, 1))
SPE = 3  # 96 digits in batches of 32
GROWTH = (
    train.Grow(1, widths=(5, 7), noise="split", noise_scale=0.5),
    train.Grow(5 / 3, depths=(2, 1)),  # mid-epoch: before step 5
)
CONFIG = train.TrainConfig(
    epochs=3, batch_size=32, learning_rate=0.05, eval_batch_size=16, progress=False
)
KEY = jax.random.key(11)


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", "train").take(96), data.load("digits", "test").take(40)


def host_copy(tree):
    return jax.tree.map(lambda x: np.array(x), tree)


@pytest.fixture(scope="module")
def grown_run(digits, tmp_path_factory):
    train_set, test_set = digits
    log = tmp_path_factory.mktemp("grow") / "run.jsonl"
    traces = TRACES["indexed_train_step"]
    seen = []
    result = train.fit(
        MODEL,
        train_set,
        test_set,
        CONFIG.replace(log_path=str(log)),
        growth=GROWTH,
        growth_key=KEY,
        on_grow=lambda model, state, record: seen.append((model, int(state.step), record)),
    )
    return result, log, seen, TRACES["indexed_train_step"] - traces


def test_fit_grows_at_each_event_and_returns_the_final_module(grown_run):
    result, _, seen, traces = grown_run
    assert result.model == WIDE_DEEP
    assert [(m, step) for m, step, _ in seen] == [(WIDE, 3), (WIDE_DEEP, 5)]
    assert traces == 3  # one compile per architecture
    jnet2net.variables.check_variables(WIDE_DEEP, result.state.variables)


def test_each_event_preserves_the_function_on_the_held_batch(grown_run):
    _result, _, seen, _ = grown_run
    for _, _, record in seen:
        assert record["event"] == "grow" and 0 <= record["output_error"] < 1e-5


def test_event_records_and_compute_totals_are_logged(grown_run):
    _result, log, _, _ = grown_run
    records = train.read_jsonl(log)
    assert [(r.get("event"), r["step"]) for r in records] == [
        (None, 3),
        ("grow", 3),
        ("grow", 5),
        (None, 6),
        (None, 9),
    ]
    grow = records[1]
    assert grow["model"]["stage_widths"] == [5, 7] and grow["epoch"] == 1.0
    assert grow["grow"] == {"at_epoch": 1.0, "widths": [5, 7], "noise": "split", "noise_scale": 0.5}
    epochs = [r for r in records if "event" not in r]
    flops = [r["train_flops"] for r in epochs]
    assert all(np.diff(flops) > 0) and all(r["step_flops"] > 0 for r in epochs)
    # Epoch 1 ran 3 steps of the narrow net; epoch 3 ran 3 steps of the wide, deep net.
    assert flops[0] == pytest.approx(3 * epochs[0]["step_flops"])
    assert flops[2] - flops[1] == pytest.approx(3 * epochs[2]["step_flops"])
    assert epochs[2]["step_flops"] > records[1]["step_flops"] > epochs[0]["step_flops"]
    assert all(r["train_s"] > 0 and r["compile_s"] > 0 for r in epochs)
    assert epochs[-1]["grow_s"] > 0


def test_schedule_and_step_continue_across_events(digits, grown_run):
    result, _, _, _ = grown_run
    schedule = train.make_schedule(CONFIG, SPE)
    epochs = [r for r in result.history if "event" not in r]
    assert [r["lr"] for r in epochs] == [float(schedule(s - 1)) for s in (3, 6, 9)]
    assert int(result.state.step) == 9


def test_an_event_grows_the_state_exactly_and_maps_the_moments(digits):
    train_set, test_set = digits
    before = train.fit(MODEL, train_set, test_set, CONFIG, max_steps=3)
    new_model, state = grow_at_event(MODEL, before.state, GROWTH[0], KEY)
    assert new_model == WIDE and int(state.step) == 3
    xs = jax.random.normal(jax.random.key(0), (2, 8, 8, 8, 1))
    jnet2net.assert_function_preserved(
        MODEL, before.state.variables, WIDE, state.variables, xs, rtol=1e-5
    )
    momentum = state.opt_state[1][0].trace if isinstance(state.opt_state, tuple) else None
    leaves = jax.tree.leaves(momentum if momentum is not None else state.opt_state)
    assert any(np.abs(np.asarray(leaf)).sum() > 0 for leaf in leaves)  # mapped, not reset
    chex.assert_trees_all_equal_shapes(
        jax.tree.leaves(state.params), jax.tree.leaves(jax.tree.map(np.zeros_like, state.params))
    )


@pytest.mark.parametrize("stop", [3, 4, 5])
def test_resume_across_events_is_bitwise_equal(digits, grown_run, tmp_path, stop):
    """Stopped at an event's step (pending), after it, or at a mid-epoch event."""
    train_set, test_set = digits
    config = CONFIG.replace(log_path=str(tmp_path / "run.jsonl"))
    first = train.fit(
        MODEL, train_set, test_set, config, growth=GROWTH, growth_key=KEY, max_steps=stop
    )
    second = train.fit(
        first.model,
        train_set,
        test_set,
        config,
        state=host_copy(first.state),
        growth=GROWTH,
        growth_key=KEY,
    )
    full = grown_run[0]
    assert second.model == full.model
    chex.assert_trees_all_equal(second.state.params, full.state.params)
    chex.assert_trees_all_equal(second.state.batch_stats, full.state.batch_stats)
    chex.assert_trees_all_equal(second.state.opt_state, full.state.opt_state)
    records = train.read_jsonl(tmp_path / "run.jsonl")
    whole = [r for r in records if r["step"] % SPE == 0 or "event" in r]  # not the stop's
    steps = [(r.get("event"), r["step"]) for r in whole]
    assert steps == [(None, 3), ("grow", 3), ("grow", 5), (None, 6), (None, 9)]
    full_flops = [r["train_flops"] for r in train.read_jsonl(grown_run[1])]
    assert [r["train_flops"] for r in whole] == pytest.approx(full_flops)


def test_a_resumed_run_logs_an_event_at_its_start_step_once(digits, tmp_path):
    """Stopped after logging the event at step 3 but before the next checkpoint."""
    train_set, _ = digits
    log = tmp_path / "run.jsonl"
    config = CONFIG.replace(log_path=str(log))
    first = train.fit(MODEL, train_set, None, config, growth=GROWTH, growth_key=KEY, max_steps=3)
    with open(log, "a") as f:
        f.write('{"event": "grow", "epoch": 1.0, "step": 3, "stale": true}\n')
    train.fit(
        MODEL,
        train_set,
        None,
        config,
        state=host_copy(first.state),
        growth=GROWTH,
        growth_key=KEY,
        max_steps=4,
    )
    events = [r for r in train.read_jsonl(log) if r.get("event") == "grow"]
    assert len(events) == 1 and "stale" not in events[0]


def test_rewarm_ramps_the_learning_rate_after_an_event(digits):
    train_set, _ = digits
    event = train.Grow(1, widths=(5, 7), rewarm_epochs=2 / 3)  # 2 steps
    schedule = train.make_schedule(CONFIG, SPE, rewarm=((3, 2),))
    plain = train.make_schedule(CONFIG, SPE)
    assert float(schedule(2)) == float(plain(2))
    assert float(schedule(3)) == pytest.approx(float(plain(3)) / 2)
    assert float(schedule(4)) == pytest.approx(float(plain(4)))
    result = train.fit(MODEL, train_set, None, CONFIG, growth=(event,), growth_key=KEY)
    assert result.model == WIDE


@pytest.mark.parametrize(
    ("growth", "error", "match"),
    [
        ((train.Grow(3, widths=(5, 7)),), ValueError, "outside the run's steps 1..8"),
        ((train.Grow(0.1, widths=(5, 7)),), ValueError, "outside the run's steps"),
        ((train.Grow(1, widths=(2, 5)),), ValueError, "cannot shrink"),
        ((train.Grow(1, widths=(5,)),), ValueError, r"Grow\(at_epoch=1.0\).*widths has 1"),
        (
            (train.Grow(1, widths=(5, 7)), train.Grow(1, depths=(2, 1))),
            ValueError,
            "two growth events fall on step 3",
        ),
        ((train.Grow(1, depths=(1, 1)), "x"), TypeError, "sequence of train.Grow"),
    ],
)
def test_bad_growth_schedules_fail_before_training(digits, growth, error, match):
    train_set, _ = digits
    traces = TRACES["indexed_train_step"]
    with pytest.raises(error, match=match):
        train.fit(MODEL, train_set, None, CONFIG, growth=growth)
    assert TRACES["indexed_train_step"] == traces


@pytest.mark.parametrize(
    ("fields", "error", "match"),
    [
        ({"at_epoch": 1}, ValueError, "changes nothing"),
        ({"at_epoch": 0, "widths": (4,)}, ValueError, "at_epoch must be a finite number > 0"),
        ({"at_epoch": "1", "widths": (4,)}, TypeError, "at_epoch must be a number"),
        ({"at_epoch": 1, "widths": (0,)}, ValueError, "widths must hold ints >= 1"),
        ({"at_epoch": 1, "widths": 4}, TypeError, "widths must be a tuple"),
        ({"at_epoch": 1, "depths": (2,), "noise": "loud"}, ValueError, "noise must be one of"),
        ({"at_epoch": 1, "depths": (2,), "moments": "keep"}, ValueError, "moments must be"),
        ({"at_epoch": 1, "depths": (2,), "rewarm_epochs": -1}, ValueError, "rewarm_epochs"),
    ],
)
def test_bad_grow_events_are_refused(fields, error, match):
    with pytest.raises(error, match=match):
        train.Grow(**fields)


def test_precompiled_events_train_the_same_run(digits, grown_run):
    """Compiling the events in the background changes no number and compiles nothing twice."""
    train_set, test_set = digits
    traces = TRACES["indexed_train_step"]
    plain = train.fit(
        MODEL, train_set, test_set, CONFIG, growth=GROWTH, growth_key=KEY, precompile=False
    )
    assert TRACES["indexed_train_step"] == traces  # all three were cached
    chex.assert_trees_all_equal(plain.state.params, grown_run[0].state.params)
    chex.assert_trees_all_equal(plain.state.opt_state, grown_run[0].state.opt_state)
    logged = train.read_jsonl(grown_run[1])
    assert logged[-1]["background_compile_s"] > 0  # the grown run compiled its events aside
