"""An exponential moving average of the weights (``TrainConfig.ema_decay``): the update, the
records, growth events, checkpoints and resume, the refusals and the flag."""

from __future__ import annotations

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jnet2net import checkpoint, cli, data, models, scale_down, train
from jnet2net.train.events import event_key, grow_variables, relative_output_error

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# Widths unique to this module (fresh compiles, no sharing with other modules' caches).
MODEL = models.ResNet((1,), (3,), num_classes=10)
WIDE = MODEL.clone(stage_widths=(4,))
WIDER_DEEP = MODEL.clone(stage_widths=(5,), stage_depths=(2,))
SPE = 3  # 96 digits in batches of 32
GROWTH = (
    train.Grow(1, widths=(4,), noise="split", noise_scale=0.5),
    train.Grow(5 / 3, widths=(5,), depths=(2,), noise="fresh"),  # mid-epoch: before step 5
)
CONFIG = train.TrainConfig(
    epochs=2, batch_size=32, learning_rate=0.05, eval_batch_size=16, augment="none", progress=False
)
EMA = CONFIG.replace(ema_decay=0.5)
KEY = jax.random.key(5)
XS = np.random.default_rng(0).standard_normal((8, 8, 8, 1)).astype(np.float32)


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", "train").take(96), data.load("digits", "test").take(40)


def host_copy(tree):
    return jax.tree.map(lambda x: np.array(x), tree)


def ema_step(ema, variables):
    """One update with decay 0.5, in float32 on the host."""
    return jax.tree.map(lambda e, p: np.float32(0.5) * e + np.float32(0.5) * p, ema, variables)


def fit_every_step(model, train_set, test_set, config, **kwargs):
    """``fit`` with a record after every step; returns it and ``{step: host state}``."""
    states = {}

    def keep(state, record):
        states[int(state.step)] = host_copy(state)

    result = train.fit(
        model,
        train_set,
        test_set,
        config.replace(eval_every_steps=1),
        on_epoch_end=keep,
        **kwargs,
    )
    return result, states


@pytest.fixture(scope="module")
def ema_run(digits):
    train_set, test_set = digits
    return fit_every_step(MODEL, train_set, test_set, EMA, max_steps=SPE, initial_eval=True)


@pytest.fixture(scope="module")
def grown_run(digits):
    train_set, _ = digits
    grown = []

    def on_grow(model, state, record):
        grown.append((model, int(state.step), host_copy(state), record))

    result, states = fit_every_step(  # no test set: no evaluation compiles
        MODEL, train_set, None, EMA, growth=GROWTH, growth_key=KEY, on_grow=on_grow
    )
    return result, states, grown


# --- config and flag ----------------------------------------------------------------------


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5, 1.5, float("nan")])
def test_ema_decay_must_lie_strictly_between_0_and_1(decay):
    with pytest.raises(ValueError, match=r"TrainConfig.ema_decay must be > 0 and < 1"):
        train.TrainConfig(ema_decay=decay)


def test_ema_decay_is_a_number_or_none():
    with pytest.raises(TypeError, match=r"TrainConfig.ema_decay must be a number"):
        train.TrainConfig(ema_decay="0.9")
    assert train.TrainConfig().ema_decay is None
    config = train.TrainConfig.from_dict({"ema_decay": 0.999})
    assert config.ema_decay == 0.999 and config.to_dict()["ema_decay"] == 0.999


def test_the_train_command_has_an_ema_decay_flag(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--ema-decay" in help_text and "moving average" in help_text
    args = cli.build_parser().parse_args(["train", "--out", "r", "--ema-decay", "0.99"])
    assert cli.train_config_from_args(args, "digits").ema_decay == 0.99
    args = cli.build_parser().parse_args(["train", "--out", "r"])
    assert cli.train_config_from_args(args, "digits").ema_decay is None


# --- the update and the records -----------------------------------------------------------


def test_the_ema_follows_the_formula_along_the_trajectory(ema_run):
    """ema_0 = the starting weights; ema_t = 0.5 ema_{t-1} + 0.5 live_t."""
    _, states = ema_run
    assert sorted(states) == [0, 1, 2, 3]
    expected = host_copy(states[0].variables)
    chex.assert_trees_all_equal(states[0].ema, expected)
    for step in (1, 2, 3):
        live = states[step].variables
        expected = ema_step(expected, live)
        chex.assert_trees_all_close(states[step].ema, expected, rtol=1e-6, atol=1e-7)
        assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(states[step].ema))
    # The average lags the live weights (the test above could not pass with ema = live).
    assert not np.allclose(
        jax.tree.leaves(states[3].ema["params"])[0], jax.tree.leaves(states[3].params)[0]
    )


def test_the_ema_does_not_change_training(digits, ema_run):
    train_set, _ = digits
    plain = train.fit(MODEL, train_set, None, CONFIG, max_steps=SPE)
    result, _ = ema_run
    chex.assert_trees_all_equal(host_copy(result.state.params), host_copy(plain.state.params))
    chex.assert_trees_all_equal(host_copy(result.state.opt_state), host_copy(plain.state.opt_state))


def test_without_ema_the_state_and_records_are_as_before(digits):
    train_set, test_set = digits
    result = train.fit(MODEL, train_set, test_set, CONFIG.replace(ema_decay=None), max_steps=SPE)
    assert result.state.ema is None and result.ema_variables is None
    (record,) = result.history
    assert "test_acc" in record and not any(key.endswith("_live") for key in record)
    # No extra arrays travel with the state: params, batch_stats, optimizer state, step.
    parts = (result.state.params, result.state.batch_stats, result.state.opt_state)
    assert len(jax.tree.leaves(result.state)) == len(jax.tree.leaves(parts)) + 1


def test_records_give_the_ema_and_the_live_accuracies(digits, ema_run):
    _, test_set = digits
    result, _ = ema_run
    first, *_, last = result.history
    assert (first["step"], last["step"]) == (0, SPE)
    for record in (first, last):
        assert {"test_acc", "test_loss", "test_acc_live", "test_loss_live"} <= set(record)
    assert first["test_loss"] == first["test_loss_live"]  # the average starts at the weights
    ema_loss, ema_acc = train.evaluate(MODEL, result.ema_variables, test_set)
    live_loss, live_acc = train.evaluate(MODEL, result.state, test_set)
    assert (last["test_acc"], last["test_acc_live"]) == (ema_acc, live_acc)
    assert last["test_loss"] == pytest.approx(ema_loss, rel=1e-6)
    assert last["test_loss_live"] == pytest.approx(live_loss, rel=1e-6)
    assert last["test_loss"] != last["test_loss_live"]
    chex.assert_trees_all_equal(result.ema_variables, result.state.ema)


# --- growth events ------------------------------------------------------------------------


@pytest.mark.slow  # an end-to-end training run
def test_growth_events_grow_the_ema_exactly(grown_run):
    result, states, grown = grown_run
    assert result.model == WIDER_DEEP
    before_models = (MODEL, WIDE)
    for before_model, (model, step, after, record) in zip(before_models, grown, strict=True):
        before = states[step]  # the record at the event's step comes before the event
        assert not np.allclose(  # the average differs from the weights being grown
            jax.tree.leaves(before.ema["params"])[0], jax.tree.leaves(before.params)[0]
        )
        old = before_model.apply(before.ema, XS, train=False)
        new = model.apply(after.ema, XS, train=False)
        assert relative_output_error(old, new) < 1e-5, record["grow"]
        assert 0 <= record["ema_output_error"] < 1e-5
        chex.assert_trees_all_equal_shapes(after.ema, after.variables)


@pytest.mark.slow  # several seconds on a 2-core machine
def test_the_ema_grows_by_the_same_plan_and_key_as_the_weights(grown_run):
    """Fresh units of the average get the weights' random incoming weights (same key)."""
    _, states, grown = grown_run
    model, step, after, _ = grown[1]  # widen with noise='fresh', then deepen
    key = event_key(KEY, 1)  # fit's event key, seeding an RBG key as its growth program does
    key = jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl="rbg")
    new_model, expected = grow_variables(WIDE, states[step].ema, GROWTH[1], key)
    assert new_model == model
    chex.assert_trees_all_close(after.ema, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.slow  # an end-to-end training run
def test_a_resumed_run_with_ema_equals_the_whole_run_bitwise(digits, grown_run, tmp_path):
    """Stopped after the first growth event, saved and restored through Orbax."""
    train_set, _ = digits
    first = train.fit(MODEL, train_set, None, EMA, growth=GROWTH, growth_key=KEY, max_steps=4)
    assert first.model == WIDE
    checkpoint.save_train_state(tmp_path, first.model, first.state, EMA)
    abstract = jax.eval_shape(
        lambda: train.create_train_state(
            first.model, EMA, np.zeros((1, 8, 8, 1), np.uint8), steps_per_epoch=SPE
        )
    )
    state, _ = checkpoint.restore_train_state(tmp_path, abstract, model=first.model)
    chex.assert_trees_all_equal(host_copy(state.ema), host_copy(first.state.ema))
    # The run's own module object: its apply method keys the compiled steps (no recompile).
    state = state.replace(apply_fn=first.state.apply_fn)
    second = train.fit(
        first.model, train_set, None, EMA, state=state, growth=GROWTH, growth_key=KEY
    )
    full = grown_run[0]
    assert second.model == full.model
    chex.assert_trees_all_equal(host_copy(second.ema_variables), host_copy(full.ema_variables))
    chex.assert_trees_all_equal(host_copy(second.state.params), host_copy(full.state.params))


def test_a_checkpoint_without_ema_starts_the_ema_at_its_weights(digits, tmp_path):
    train_set, _ = digits
    plain = train.fit(MODEL, train_set, None, CONFIG, max_steps=2)
    checkpoint.save_train_state(tmp_path, MODEL, plain.state, CONFIG)
    abstract = jax.eval_shape(
        lambda: train.create_train_state(
            MODEL, EMA, np.zeros((1, 8, 8, 1), np.uint8), steps_per_epoch=SPE
        )
    )
    state, _ = checkpoint.restore_train_state(tmp_path, abstract, model=MODEL)
    chex.assert_trees_all_equal(host_copy(state.ema), host_copy(plain.state.variables))
    # fit(state=) without an EMA starts one at the state's weights too.
    for start in (state, state.replace(ema=None)):
        resumed = train.fit(MODEL, train_set, None, EMA, state=start, max_steps=3)
        expected = ema_step(host_copy(plain.state.variables), host_copy(resumed.state.variables))
        chex.assert_trees_all_close(host_copy(resumed.ema_variables), expected, rtol=1e-6)


def test_a_run_without_ema_drops_the_ema_of_its_state(digits, ema_run):
    train_set, _ = digits
    result = train.fit(MODEL, train_set, None, CONFIG, state=host_copy(ema_run[0].state))
    assert result.state.ema is None and result.ema_variables is None


@pytest.mark.slow  # an end-to-end training run
def test_the_train_command_saves_the_ema_and_resumes_it_bitwise(tmp_path, capsys):
    """A run stopped mid-epoch by --max-steps and resumed ends where the whole run ends."""
    arch = ["--arch", "resnet20", "--arch-json", '{"stage_depths": [1], "stage_widths": [3]}']
    flags = ["--dataset", "digits", "--train-subset", "96", "--batch-size", "32", "--lr", "0.05"]
    flags += ["--epochs", "2", "--ema-decay", "0.5", "--augment", "none", *arch]
    whole, parted = tmp_path / "whole", tmp_path / "parted"
    assert cli.main(["train", *flags, "--out", str(whole)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"epoch 2/2 step 6 .* test_acc \d\.\d{3} \(live \d\.\d{3}\)", out), out
    assert cli.main(["train", *flags, "--max-steps", "4", "--out", str(parted)]) == 0
    assert cli.main(["train", "--out", str(parted), "--resume"]) == 0
    a, b = checkpoint.restore(whole), checkpoint.restore(parted)
    assert a.step == b.step == 6 and set(a.extra) == {"ema"}
    chex.assert_trees_all_equal(a.extra["ema"], b.extra["ema"])
    chex.assert_trees_all_equal(a.variables, b.variables)
    assert not np.allclose(  # the average is saved, not the weights again
        jax.tree.leaves(a.extra["ema"]["params"])[0], jax.tree.leaves(a.variables["params"])[0]
    )
    record = train.read_jsonl(parted / "metrics.jsonl")[-1]
    assert record["test_acc"] == train.read_jsonl(whole / "metrics.jsonl")[-1]["test_acc"]
    assert "test_acc_live" in record


def test_fit_checks_the_ema_of_a_resumed_state_against_the_model(digits, ema_run):
    train_set, _ = digits
    state = host_copy(ema_run[0].state)
    state = state.replace(ema={"params": state.ema["params"]})  # no batch_stats
    with pytest.raises(ValueError, match=r"batch_stats"):
        train.fit(MODEL, train_set, None, EMA, state=state)


# --- refusals -----------------------------------------------------------------------------


def test_scale_down_refuses_an_ema(digits):
    train_set, test_set = digits
    with pytest.raises(ValueError, match=r"ema_decay and scale_down do not combine"):
        config = scale_down.ScaleDownConfig(target_compute=0.8)
        train.fit(MODEL, train_set, test_set, EMA, scale_down=config)


def test_a_step_with_ema_decay_needs_a_state_with_an_ema(digits):
    train_set, _ = digits
    state = train.create_train_state(MODEL, CONFIG, train_set.images[:1], steps_per_epoch=SPE)
    step = train.make_train_step(MODEL, EMA, mean=train_set.mean, std=train_set.std)
    with pytest.raises(ValueError, match=r"the state has no EMA"):
        step(state, train_set.images[:32], train_set.labels[:32])
