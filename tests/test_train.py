"""Tests of jnet2net.train: config, schedules, optimizers, steps, sharded fit, resume."""

import io
import json

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import TRACES  # tests/ is on sys.path

from jnet2net import data, models, plot, train
from jnet2net.train.batches import batch_indices, epoch_permutation, stream_key
from jnet2net.train.progress import ProgressBar, append_jsonl, progress_enabled
from jnet2net.train.records import nonfinite_loss_error
from jnet2net.train.sharding import check_batch_size, put_batch, put_replicated
from jnet2net.train.steps import augment_batch, cross_entropy_loss

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

MODEL = models.ResNet((1,), (4,), num_classes=10)
CONFIG = train.TrainConfig(
    epochs=2,
    batch_size=32,
    learning_rate=0.05,
    weight_decay=5e-4,
    warmup_epochs=0.5,
    label_smoothing=0.1,
    eval_batch_size=16,
    progress=False,
)


@pytest.fixture(scope="module")
def digits():
    """96 training digits (3 steps of 32) and 40 test digits, 8x8x1."""
    return data.load("digits", "train").take(96), data.load("digits", "test").take(40)


def host_copy(tree):
    """A numpy copy, as a checkpoint would hold it."""
    return jax.tree.map(lambda x: np.array(x), tree)


@pytest.fixture(scope="module")
def full_run(digits, tmp_path_factory):
    """Six steps (two epochs) on all four devices, logged to JSONL."""
    train_set, test_set = digits
    log = tmp_path_factory.mktemp("log") / "run.jsonl"
    log.write_text('{"stale": true}\n')
    traces = TRACES["indexed_train_step"]
    records = []
    result = train.fit(
        MODEL,
        train_set,
        test_set,
        CONFIG.replace(log_path=str(log)),
        on_epoch_end=lambda state, record: records.append((int(state.step), record)),
    )
    return result, log, records, TRACES["indexed_train_step"] - traces


# --- config -------------------------------------------------------------------------------


def test_config_round_trips_through_json():
    config = CONFIG.replace(optimizer="adamw", log_path="runs/a.jsonl")
    text = json.dumps(config.to_dict())
    assert train.TrainConfig.from_dict(json.loads(text)) == config
    assert train.TrainConfig.from_dict({}) == train.TrainConfig()


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"optimizer": "rmsprop"}, ValueError, r"optimizer must be one of \('sgd', 'adamw'\)"),
        ({"schedule": "step"}, ValueError, "schedule must be one of"),
        ({"compute_dtype": "float16"}, ValueError, "compute_dtype must be one of"),
        (
            {"augment": "mixup"},
            ValueError,
            r"augment must be one of \(.crop_flip., .crop., .flip., .none., .resized_crop_flip.\)",
        ),
        ({"epochs": 0}, ValueError, "epochs must be >= 1, got 0"),
        ({"batch_size": 8.0}, TypeError, "batch_size must be an int, got 8.0"),
        ({"learning_rate": 0.0}, ValueError, r"learning_rate must be > 0, got 0.0"),
        ({"learning_rate": float("nan")}, ValueError, "learning_rate must be > 0, got nan"),
        ({"learning_rate": float("inf")}, ValueError, "learning_rate must be finite, got inf"),
        ({"weight_decay": float("inf")}, ValueError, "weight_decay must be finite, got inf"),
        ({"momentum": 1.0}, ValueError, r"momentum must be >= 0 and < 1, got 1.0"),
        ({"label_smoothing": -0.1}, ValueError, "label_smoothing must be >= 0 and < 1"),
        ({"warmup_epochs": 3}, ValueError, r"warmup_epochs must be >= 0 and <= 2, got 3"),
        ({"max_steps": 0}, ValueError, "max_steps must be >= 1, got 0"),
        ({"eval_every_steps": 2.5}, TypeError, "eval_every_steps must be an int, got 2.5"),
        ({"weight_decay": "0.1"}, TypeError, "weight_decay must be a number"),
        ({"nesterov": 1}, TypeError, "nesterov must be a bool"),
        ({"progress": "yes"}, TypeError, "progress must be None or a bool"),
        ({"crop_padding": -1}, ValueError, "crop_padding must be >= 0"),
    ],
)
def test_config_rejects_bad_values(changes, error, match):
    with pytest.raises(error, match=match):
        CONFIG.replace(**changes)


def test_config_from_dict_names_unknown_fields():
    with pytest.raises(ValueError, match=r"unknown TrainConfig fields \['lr'\]; known fields"):
        train.TrainConfig.from_dict({"lr": 0.1})


# --- schedules and optimizers -------------------------------------------------------------


def test_cosine_schedule_warms_up_then_decays_to_zero():
    config = CONFIG.replace(epochs=4, warmup_epochs=1.0, learning_rate=0.4)
    schedule = train.make_schedule(config, 10)
    values = np.array([schedule(i) for i in range(41)])
    assert values[0] == 0.0
    np.testing.assert_allclose(values[5], 0.2, rtol=1e-6)
    np.testing.assert_allclose(values[10], 0.4, rtol=1e-6)
    assert np.all(np.diff(values[10:]) <= 1e-7) and values[40] == pytest.approx(0.0, abs=1e-7)


@pytest.mark.slow
def test_constant_and_onecycle_schedules():
    constant = train.make_schedule(CONFIG.replace(schedule="constant", warmup_epochs=0.0), 5)
    assert [float(constant(i)) for i in (0, 7)] == pytest.approx([0.05, 0.05])
    ramp = train.make_schedule(CONFIG.replace(schedule="constant", warmup_epochs=1.0), 4)
    assert [float(ramp(i)) for i in (0, 2, 4, 7)] == pytest.approx([0.0, 0.025, 0.05, 0.05])
    onecycle = train.make_schedule(CONFIG.replace(schedule="onecycle", warmup_epochs=0.5), 10)
    values = np.array([onecycle(i) for i in range(21)])
    assert values.argmax() == 5 and values.max() == pytest.approx(0.05)
    assert values[0] < 0.05 / 20 and values[20] < 1e-5


def test_onecycle_peaks_exactly_where_the_warm_up_ends():
    exact = CONFIG.replace(schedule="onecycle", epochs=1, warmup_epochs=0.29)
    values = np.array([train.make_schedule(exact, 100)(i) for i in range(101)])
    assert values.argmax() == 29  # 0.29 * 100 is 28.999...
    # Warm-up over every step: the rate rises to the peak at the last step.
    ramp = train.make_schedule(CONFIG.replace(schedule="onecycle", warmup_epochs=2.0), 3)
    values = np.array([ramp(i) for i in range(6)])
    assert np.all(np.diff(values) > 0) and values[5] == pytest.approx(0.05)


def test_schedule_rejects_bad_steps_per_epoch():
    with pytest.raises(ValueError, match="steps_per_epoch must be >= 1, got 0"):
        train.make_schedule(CONFIG, 0)
    with pytest.raises(TypeError, match="steps_per_epoch must be an int"):
        train.make_optimizer(CONFIG, 2.5)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_weight_decay_touches_kernels_only(optimizer):
    config = CONFIG.replace(optimizer=optimizer, weight_decay=0.1, schedule="constant")
    config = config.replace(warmup_epochs=0.0)
    tx = train.make_optimizer(config, 1)
    params = {"conv": {"kernel": jnp.ones((3, 3, 1, 2))}, "bn": {"scale": jnp.ones(2)}}
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    assert float(jnp.abs(updates["conv"]["kernel"]).min()) > 0
    chex.assert_trees_all_equal(updates["bn"]["scale"], jnp.zeros(2))


# --- state and steps ----------------------------------------------------------------------


def test_create_train_state_from_scratch_and_from_variables(digits):
    train_set, _ = digits
    state = train.create_train_state(MODEL, CONFIG, train_set.images, steps_per_epoch=3)
    assert state.step.dtype == jnp.int32 and int(state.step) == 0
    assert set(state.variables) == {"params", "batch_stats"}
    again = train.create_train_state(
        MODEL, CONFIG, train_set.images, variables=host_copy(state.variables), steps_per_epoch=3
    )
    chex.assert_trees_all_equal(again.params, state.params)
    wide = models.ResNet((1,), (6,), num_classes=10)
    with pytest.raises(
        ValueError, match=r"variables do not match ResNet: .* the architecture needs"
    ):
        train.create_train_state(
            wide, CONFIG, train_set.images, variables=state.variables, steps_per_epoch=3
        )
    with pytest.raises(ValueError, match=r"example_images must be \(n, h, w, c\)"):
        train.create_train_state(MODEL, CONFIG, train_set.images[0], steps_per_epoch=3)


def test_cross_entropy_with_label_smoothing():
    logits = jnp.array([[2.0, 0.0, -1.0]])
    plain = cross_entropy_loss(logits, jnp.array([0]))
    np.testing.assert_allclose(plain, -jax.nn.log_softmax(logits)[:, 0], rtol=1e-6)
    smooth = cross_entropy_loss(logits, jnp.array([0]), label_smoothing=0.3)
    expected = -(
        0.8 * jax.nn.log_softmax(logits)[0, 0] + 0.1 * jax.nn.log_softmax(logits)[0, 1:].sum()
    )
    np.testing.assert_allclose(smooth, [expected], rtol=1e-6)


@pytest.mark.parametrize(
    ("mode", "padding", "flip"),
    [("crop_flip", 2, True), ("crop", 2, False), ("flip", 0, True), ("none", 0, False)],
)
def test_augment_batch_follows_the_config(mode, padding, flip):
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (8, 6, 6, 1), dtype=np.uint8))
    key = jax.random.key(4)
    got = augment_batch(CONFIG.replace(augment=mode, crop_padding=2), key, images)
    expected = data.augment(key, images, crop_padding=padding, flip=flip)
    np.testing.assert_array_equal(got, expected)


def _batch(dataset, n=32):
    return jnp.asarray(dataset.images[:n]), jnp.asarray(dataset.labels[:n])


def test_train_step_lowers_the_loss_and_compiles_once(digits):
    train_set, _ = digits
    config = CONFIG.replace(augment="none", label_smoothing=0.0, learning_rate=0.1)
    config = config.replace(schedule="constant", warmup_epochs=0.0)
    mesh = train.data_mesh()
    state = train.create_train_state(MODEL, config, train_set.images, steps_per_epoch=1, mesh=mesh)
    step = train.make_train_step(MODEL, config, mean=train_set.mean, std=train_set.std, mesh=mesh)
    images, labels = put_batch(_batch(train_set), mesh)
    traces = TRACES["train_step"]
    losses = []
    for _ in range(4):
        state, metrics = step(state, images, labels)
        losses.append(float(metrics["loss"]))
    assert TRACES["train_step"] - traces == 1
    assert int(state.step) == 4
    assert losses[-1] < losses[0] - 0.05, losses
    chex.assert_tree_all_finite(state.params)


@pytest.mark.slow  # several seconds on a 2-core machine
def test_bfloat16_compute_keeps_float32_params(digits):
    train_set, _ = digits
    results = {}
    for dtype in ("float32", "bfloat16"):
        config = CONFIG.replace(compute_dtype=dtype, augment="none")
        state = train.create_train_state(MODEL, config, train_set.images, steps_per_epoch=3)
        step = train.make_train_step(MODEL, config, mean=train_set.mean, std=train_set.std)
        state, metrics = step(state, *_batch(train_set))
        assert {leaf.dtype for leaf in jax.tree.leaves(state.params)} == {jnp.dtype("float32")}
        assert {leaf.dtype for leaf in jax.tree.leaves(state.batch_stats)} == {jnp.dtype("float32")}
        results[dtype] = float(metrics["loss"])
    assert np.isfinite(results["bfloat16"])
    # The two dtypes really computed differently, and bf16 stayed close.
    assert results["bfloat16"] != results["float32"]
    assert results["bfloat16"] == pytest.approx(results["float32"], rel=0.05)


def test_train_step_is_a_pure_function_of_state_and_step(digits):
    train_set, _ = digits
    state = train.create_train_state(MODEL, CONFIG, train_set.images, steps_per_epoch=3)
    step = train.make_train_step(MODEL, CONFIG, mean=train_set.mean, std=train_set.std)
    images, labels = _batch(train_set)
    first_state, first = step(host_copy(state), images, labels)
    second_state, second = step(host_copy(state), images, labels)
    chex.assert_trees_all_equal((first_state, first), (second_state, second))
    # Another step number draws another augmentation, hence another loss.
    _, later = step(host_copy(state).replace(step=np.int32(7)), images, labels)
    assert float(later["loss"]) != float(first["loss"])


# --- fit ----------------------------------------------------------------------------------


def test_fit_history_log_and_callback(full_run):
    result, log, records, traces = full_run
    history = result.history
    assert [r["epoch"] for r in history] == [1, 2] and [r["step"] for r in history] == [3, 6]
    assert int(result.state.step) == 6
    keys = {"epoch", "step", "wall_s", "images_per_s", "lr", "train_loss", "train_acc"}
    assert keys | {"test_loss", "test_acc"} <= set(history[0]) and "first_step_s" in history[0]
    assert all(np.isfinite(r["train_loss"]) and 0 <= r["test_acc"] <= 1 for r in history)
    assert history[1]["wall_s"] > history[0]["wall_s"]
    assert history[1]["lr"] == pytest.approx(float(train.make_schedule(CONFIG, 3)(5)))
    # The stale line is gone: a run that starts at step 0 starts its log afresh.
    assert train.read_jsonl(log) == history
    assert [(step, r["epoch"]) for step, r in records] == [(3, 1), (6, 2)]
    assert traces == 1  # one compile for the whole run


@pytest.mark.slow
def test_fit_on_one_device_matches_four(digits, full_run):
    train_set, test_set = digits
    one = train.fit(MODEL, train_set, test_set, CONFIG, mesh=train.data_mesh(jax.devices()[:1]))
    four = full_run[0]
    assert len(jax.devices()) == 4
    for a, b in zip(one.history, four.history, strict=True):
        for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key
    chex.assert_trees_all_close(one.state.params, four.state.params, rtol=1e-4, atol=1e-5)
    chex.assert_trees_all_close(one.state.batch_stats, four.state.batch_stats, rtol=1e-4, atol=1e-5)


def test_resume_mid_epoch_matches_an_uninterrupted_run(digits, full_run, tmp_path):
    train_set, test_set = digits
    log = tmp_path / "resumed.jsonl"
    config = CONFIG.replace(log_path=str(log))
    first = train.fit(MODEL, train_set, test_set, config, max_steps=4)
    assert [r["step"] for r in first.history] == [3, 4]
    saved = host_copy(first.state)  # as a checkpoint would hold it
    traces = TRACES["indexed_train_step"]
    second = train.fit(MODEL, train_set, test_set, config, state=saved)
    assert TRACES["indexed_train_step"] == traces  # same architecture: no compile
    assert [r["step"] for r in second.history] == [6]
    full = full_run[0]
    chex.assert_trees_all_equal(second.state.params, full.state.params)
    chex.assert_trees_all_equal(second.state.batch_stats, full.state.batch_stats)
    chex.assert_trees_all_equal(second.state.opt_state, full.state.opt_state)
    assert second.history[-1]["test_loss"] == full.history[-1]["test_loss"]
    # The caller's state is not consumed, and the resumed run appended to the log.
    assert int(saved.step) == 4 and np.isfinite(jax.tree.leaves(saved.params)[0]).all()
    logged = train.read_jsonl(log)
    assert [r["step"] for r in logged] == [3, 4, 6]
    # The resumed run says so; a plot continues its clock from the first run's total.
    assert [r.get("resumed") for r in logged] == [None, None, True]
    curve = plot.read_curve(log)
    assert curve.wall_s[-1] == pytest.approx(logged[1]["wall_s"] + logged[2]["wall_s"])
    # A state already at the end trains no further.
    done = train.fit(MODEL, train_set, test_set, CONFIG, state=second.state)
    assert done.history == [] and int(done.state.step) == 6


def test_on_step_is_called_before_every_step_and_its_error_stops_the_run(digits, tmp_path):
    train_set, test_set = digits
    log = tmp_path / "run.jsonl"
    seen = []

    def stop_at_4(step):
        seen.append(step)
        if step == 4:
            raise KeyboardInterrupt

    config = CONFIG.replace(log_path=str(log))
    with pytest.raises(KeyboardInterrupt):
        train.fit(MODEL, train_set, test_set, config, on_step=stop_at_4)
    assert seen == [0, 1, 2, 3, 4]
    assert [r["step"] for r in train.read_jsonl(log)] == [3]  # epoch 1 logged, then stopped


def test_resume_drops_log_records_after_its_step(digits, tmp_path):
    """A run stopped after logging epoch 2 but before saving it logs epoch 2 only once."""
    train_set, _ = digits
    log = tmp_path / "run.jsonl"
    config = CONFIG.replace(log_path=str(log))
    first = train.fit(MODEL, train_set, None, config, max_steps=3)
    with open(log, "a") as f:
        f.write('{"epoch": 2, "step": 6, "lost": true}\n{"epoch": 3, "st')  # torn last line
    with pytest.warns(UserWarning, match="dropped the partial last line"):
        train.fit(MODEL, train_set, None, config, state=host_copy(first.state))
    records = train.read_jsonl(log)
    assert [r["step"] for r in records] == [3, 6] and "lost" not in records[1]


def test_fit_from_variables_stops_at_accuracy(digits, full_run):
    train_set, test_set = digits
    variables = host_copy(full_run[0].state.variables)
    seen = []
    result = train.fit(
        MODEL,
        train_set,
        test_set,
        CONFIG,
        variables=variables,
        stop_at_accuracy=1e-9,
        on_epoch_end=lambda state, record: seen.append(record["epoch"]),
    )
    assert seen == [1] and len(result.history) == 1 and int(result.state.step) == 3


def test_fit_keeps_the_callers_device_arrays(digits, full_run):
    """The steps donate the state; variables passed as device arrays must stay valid."""
    train_set, _ = digits
    variables = jax.tree.map(jnp.asarray, host_copy(full_run[0].state.variables))
    before = host_copy(variables)
    train.fit(MODEL, train_set, None, CONFIG, variables=variables, max_steps=1)
    assert not any(x.is_deleted() for x in jax.tree.leaves(variables))
    chex.assert_trees_all_equal(host_copy(variables), before)


@pytest.mark.slow
def test_fit_raises_on_nan_loss(digits, full_run):
    train_set, _ = digits
    variables = host_copy(full_run[0].state.variables)
    variables["params"]["head"]["kernel"][0, 0] = np.nan
    with pytest.raises(FloatingPointError, match=r"training diverged: .* epoch 1 \(steps 0..2"):
        train.fit(
            MODEL, train_set, None, CONFIG.replace(epochs=1, warmup_epochs=0.0), variables=variables
        )


def test_fit_rejects_bad_inputs(digits):
    train_set, test_set = digits
    with pytest.raises(ValueError, match=r"batch_size=30 must be a multiple of the 4 devices"):
        train.fit(MODEL, train_set, test_set, CONFIG.replace(batch_size=30))
    with pytest.raises(ValueError, match="batch_size=128 is larger than the 96 training examples"):
        train.fit(MODEL, train_set, test_set, CONFIG.replace(batch_size=128))
    with pytest.raises(ValueError, match=r"model has 3 outputs but the train set 'digits' has 10"):
        train.fit(MODEL.clone(num_classes=3), train_set, test_set, CONFIG)
    with pytest.raises(ValueError, match=r"pass state .* or variables .*, not both"):
        train.fit(MODEL, train_set, test_set, CONFIG, state=object(), variables={})
    small = data.from_arrays(np.zeros((8, 4, 4, 1), np.uint8), np.arange(8) % 10, num_classes=10)
    with pytest.raises(ValueError, match=r"test images \(4, 4, 1\) differ in shape"):
        train.fit(MODEL, train_set, small, CONFIG)
    with pytest.raises(TypeError, match="config must be a TrainConfig"):
        train.fit(MODEL, train_set, test_set, CONFIG.to_dict())
    with pytest.raises(TypeError, match=r"train must be a jnet2net\.data\.Dataset"):
        train.fit(MODEL, (train_set.images, train_set.labels), test_set, CONFIG)
    state = train.create_train_state(MODEL, CONFIG, train_set.images, steps_per_epoch=3)
    wide = models.ResNet((1,), (6,), num_classes=10)
    with pytest.raises(ValueError, match=r"variables do not match ResNet: .* needs \(6,\)"):
        train.fit(wide, train_set, test_set, CONFIG, state=state)
    with pytest.raises(TypeError, match="state must be a jnet2net TrainState, got dict"):
        train.fit(MODEL, train_set, test_set, CONFIG, state=state.variables)
    with pytest.raises(ValueError, match=r"stop_at_accuracy must lie in \(0, 1\]"):
        train.fit(MODEL, train_set, test_set, CONFIG, stop_at_accuracy=50)
    with pytest.raises(ValueError, match="stop_at_accuracy needs a test set"):
        train.fit(MODEL, train_set, None, CONFIG, stop_at_accuracy=0.5)


class PlainNet(nn.Module):
    """A Flax model without ``dtype`` or ``num_classes`` fields."""

    outputs: int = 10

    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dense(self.outputs)(x.reshape(x.shape[0], -1))


@pytest.mark.slow
def test_fit_and_evaluate_a_plain_flax_module(digits):
    train_set, test_set = digits
    config = CONFIG.replace(epochs=1, warmup_epochs=0.0)
    result = train.fit(PlainNet(), train_set.take(32), test_set, config)
    record = result.history[0]
    # The epoch's only step also compiled: no throughput to report.
    assert record["step"] == 1 and record["images_per_s"] is None
    got = train.evaluate(PlainNet(), result.state, test_set)
    assert got == pytest.approx((record["test_loss"], record["test_acc"]), rel=1e-5)
    with pytest.raises(
        TypeError, match=r"PlainNet has no 'dtype' field, so it cannot compute in 'bfloat16'"
    ):
        train.fit(PlainNet(), train_set, None, config.replace(compute_dtype="bfloat16"))


@pytest.mark.slow
def test_fit_and_evaluate_reject_too_few_outputs(digits):
    """Labels past the logits would give a silently wrong (zero-target) loss."""
    train_set, test_set = digits
    with pytest.raises(ValueError, match=r"PlainNet gives logits \(1, 5\) .* 'digits' has 10 cl"):
        train.fit(PlainNet(5), train_set, test_set, CONFIG)
    variables = PlainNet(5).init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    with pytest.raises(ValueError, match=r"gives logits \(1, 5\) .* 'digits' has 10 classes"):
        train.evaluate(PlainNet(5), variables, test_set)
    wider = PlainNet(12).init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    assert 0.0 <= train.evaluate(PlainNet(12), wider, test_set)[1] <= 1.0  # more is fine


def test_fit_and_evaluate_check_their_counts(digits):
    train_set, test_set = digits
    with pytest.raises(ValueError, match=r"max_steps must be an int >= 0, got 1.5"):
        train.fit(MODEL, train_set, None, CONFIG, max_steps=1.5)
    with pytest.raises(ValueError, match=r"batch_size must be an int >= 1, got 0"):
        train.evaluate(MODEL, {}, test_set, batch_size=0)


# --- evaluate -----------------------------------------------------------------------------


@pytest.mark.slow
def test_evaluate_matches_a_direct_computation(digits, full_run):
    _, test_set = digits
    state = full_run[0].state
    x = (test_set.images.astype(np.float32) - np.float32(test_set.mean)) / np.float32(test_set.std)
    logits = np.asarray(MODEL.apply(state.variables, jnp.asarray(x), train=False))
    log_probs = np.asarray(jax.nn.log_softmax(logits))
    loss = -log_probs[np.arange(len(test_set)), test_set.labels].mean()
    accuracy = (logits.argmax(-1) == test_set.labels).mean()
    # 7 is rounded up to 8 (4 devices); 40 examples then need padding in the last batch.
    got = train.evaluate(MODEL, state, test_set, batch_size=7)
    assert got == pytest.approx((loss, accuracy), rel=1e-5)
    assert full_run[0].history[-1]["test_loss"] == pytest.approx(loss, rel=1e-5)
    one_device = train.data_mesh(jax.devices()[:1])
    got_one = train.evaluate(MODEL, state.variables, test_set, batch_size=64, mesh=one_device)
    assert got_one == pytest.approx((loss, accuracy), rel=1e-5)
    traces = TRACES["indexed_eval_step"]
    assert train.evaluate(MODEL, state, test_set, batch_size=7) == got
    assert TRACES["indexed_eval_step"] == traces  # compiled once per setting


def test_evaluate_rejects_arrays():
    with pytest.raises(TypeError, match=r"dataset must be a jnet2net\.data\.Dataset"):
        train.evaluate(MODEL, {}, np.zeros((2, 8, 8, 1)), batch_size=2)


def test_evaluate_rejects_an_empty_set(digits):
    empty = digits[1].take(0)  # e.g. load('digits', 'test[:0]')
    with pytest.raises(ValueError, match=r"the evaluation set 'digits' is empty"):
        train.evaluate(MODEL, {}, empty)


# --- data order, sharding helpers, progress -----------------------------------------------


def test_epoch_permutations_are_pure_functions_of_seed_and_epoch():
    a = epoch_permutation(0, 1, 50)
    chex.assert_trees_all_equal(a, epoch_permutation(0, 1, 50))
    assert sorted(np.asarray(a).tolist()) == list(range(50))
    assert not np.array_equal(a, epoch_permutation(0, 2, 50))
    assert not np.array_equal(a, epoch_permutation(1, 1, 50))
    np.testing.assert_array_equal(batch_indices(a, 2, 8), np.asarray(a)[16:24])
    with pytest.raises(ValueError, match="unknown random stream 'noise'"):
        stream_key(0, "noise")


def test_sharding_helpers():
    mesh = train.data_mesh()
    assert mesh.axis_names == ("data",) and mesh.size == 4
    batch = put_batch(np.arange(8.0), mesh)
    assert batch.sharding.spec == jax.sharding.PartitionSpec("data")
    assert len(batch.addressable_shards) == 4 and batch.addressable_shards[0].data.shape == (2,)
    original = jnp.arange(3.0)
    copy = put_replicated({"a": original}, mesh)["a"]
    assert copy.sharding.is_fully_replicated and copy is not original
    np.testing.assert_array_equal(copy, original)
    original_buffer = original.unsafe_buffer_pointer()
    assert all(s.data.unsafe_buffer_pointer() != original_buffer for s in copy.addressable_shards)
    jax.jit(lambda x: x + 1, donate_argnums=0)(copy)  # a donating step consumes the copy only
    assert not original.is_deleted()
    np.testing.assert_array_equal(original, np.arange(3.0))
    with pytest.raises(ValueError, match="batch_size=6 must be a multiple of the 4 devices"):
        check_batch_size(6, mesh)


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_only_on_terminals_outside_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    assert progress_enabled(None, FakeTerminal())
    assert not progress_enabled(None, io.StringIO())
    assert progress_enabled(True, io.StringIO())
    monkeypatch.setenv("CI", "true")
    assert not progress_enabled(None, FakeTerminal())
    for unset in ("", "0", "false", "False", "no"):
        monkeypatch.setenv("CI", unset)
        assert progress_enabled(None, FakeTerminal()), unset
    stream = FakeTerminal()
    with ProgressBar(4, desc="fit", stream=stream) as bar:
        for _ in range(4):
            bar.update(note="loss 1.0")
    text = stream.getvalue()
    assert "fit [" in text and "4/4" in text and "loss 1.0" in text and text.endswith("\n")
    silent = io.StringIO()
    with ProgressBar(4, enabled=False, stream=silent) as bar:
        bar.update(4)
    assert silent.getvalue() == ""


def test_optimizer_state_holds_params_shaped_trees(digits):
    """Growth code maps optimizer moments like the params (``optax.tree_map_params``)."""
    train_set, _ = digits
    state = train.create_train_state(MODEL, CONFIG, train_set.images, steps_per_epoch=3)
    doubled = optax.tree_map_params(state.tx, lambda p: p * 2, state.opt_state)
    chex.assert_trees_all_equal_structs(doubled, state.opt_state)


def test_jsonl_lines_are_strict_json_with_nulls_for_non_finite_numbers(tmp_path) -> None:
    path = tmp_path / "log" / "metrics.jsonl"
    append_jsonl(path, {"epoch": 1, "test_loss": float("nan"), "lr": np.float32(0.5)})
    append_jsonl(path, {"epoch": 2, "test_loss": float("inf"), "acc": [1.0, -np.inf]})
    for line in path.read_text().splitlines():
        assert "NaN" not in line and "Infinity" not in line, line
    assert train.read_jsonl(path) == [
        {"epoch": 1, "test_loss": None, "lr": 0.5},
        {"epoch": 2, "test_loss": None, "acc": [1.0, None]},
    ]


def test_config_accepts_numpy_numbers_and_stores_python_ones() -> None:
    config = train.TrainConfig(
        epochs=np.int64(3), batch_size=np.int32(16), learning_rate=np.float32(0.5)
    )
    assert (config.epochs, config.batch_size, config.learning_rate) == (3, 16, 0.5)
    assert type(config.epochs) is int and type(config.learning_rate) is float
    json.dumps(config.to_dict())
    with pytest.raises(TypeError, match=r"TrainConfig\.epochs must be an int"):
        train.TrainConfig(epochs=np.bool_(True))


# --- step-based records, initial evaluation, progress lines --------------------------------


@pytest.mark.slow
def test_eval_every_steps_and_max_steps_resume_to_the_uninterrupted_run(digits, full_run, tmp_path):
    train_set, test_set = digits
    log = tmp_path / "run.jsonl"
    config = CONFIG.replace(log_path=str(log), eval_every_steps=2, max_steps=4)
    saved = {}

    def keep(state, record):
        saved[record["step"]] = host_copy(state)

    first = train.fit(MODEL, train_set, test_set, config, on_epoch_end=keep)
    assert [r["step"] for r in first.history] == [2, 3, 4] and sorted(saved) == [2, 3, 4]
    mid = first.history[0]
    assert mid["epoch"] == pytest.approx(2 / 3)
    assert (mid["test_loss"], mid["test_acc"]) == pytest.approx(
        train.evaluate(MODEL, saved[2], test_set, batch_size=config.eval_batch_size)
    )
    assert "epoch_s" not in mid and mid["train_s"] > 0 and mid["train_flops"] > 0
    assert int(first.state.step) == 4 and first.history[-1]["epoch"] == pytest.approx(4 / 3)
    # Resumed from the checkpoint a record at step 2 came with: the same state as one run.
    second = train.fit(MODEL, train_set, test_set, config.replace(max_steps=None), state=saved[2])
    assert [r["step"] for r in second.history] == [3, 4, 6]
    full = full_run[0]
    chex.assert_trees_all_equal(second.state.params, full.state.params)
    chex.assert_trees_all_equal(second.state.opt_state, full.state.opt_state)
    records = train.read_jsonl(log)
    assert [r["step"] for r in records] == [2, 3, 4, 6]
    seconds = [r["train_s"] for r in records]
    assert seconds == sorted(seconds)


def test_initial_eval_logs_the_starting_network_at_step_0(
    digits, full_run, tmp_path, capsys, monkeypatch
):
    train_set, test_set = digits
    monkeypatch.setattr(train.progress, "LINE_EVERY_S", 0.0)
    variables = host_copy(full_run[0].state.variables)
    log = tmp_path / "run.jsonl"
    config = CONFIG.replace(log_path=str(log), progress=None)
    result = train.fit(
        MODEL, train_set, test_set, config, variables=variables, max_steps=1, initial_eval=True
    )
    first = result.history[0]
    assert (first["epoch"], first["step"], first["train_s"], first["train_flops"]) == (0, 0, 0, 0)
    loss, accuracy = train.evaluate(MODEL, variables, test_set, batch_size=16)
    assert first["test_acc"] == pytest.approx(accuracy)
    assert first["test_loss"] == pytest.approx(loss, rel=1e-5)
    assert [r["step"] for r in train.read_jsonl(log)] == [0, 1]
    # Not a terminal: a plain progress line (every LINE_EVERY_S seconds) instead of a bar.
    err = capsys.readouterr().err
    assert "train ResNet step 1/1 (100%) loss " in err and " img/s" in err and "\r" not in err
    # A resumed run does not evaluate its start again.
    resumed = train.fit(MODEL, train_set, test_set, CONFIG, state=result.state, initial_eval=True)
    assert [r["step"] for r in resumed.history] == [3, 6]


def test_progress_lines_where_no_bar_is_drawn(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    assert train.progress.progress_lines_enabled(None, io.StringIO())
    assert not train.progress.progress_lines_enabled(None, FakeTerminal())
    assert not train.progress.progress_lines_enabled(False, io.StringIO())
    monkeypatch.setattr(train.progress, "LINE_EVERY_S", 0.0)
    stream = io.StringIO()
    bar = ProgressBar(
        4, desc="fit", enabled=False, lines=True, offset=2, batch_size=8, stream=stream
    )
    bar.update(metrics={"loss": np.float32(1.5)})
    bar.update()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("fit step 3/6 (25%) loss 1.500 ")
    assert lines[1].startswith("fit step 4/6 (50%) loss 1.500 ") and lines[1].endswith(" img/s")
    monkeypatch.setattr(train.progress, "LINE_EVERY_S", 1e9)
    quiet = ProgressBar(4, enabled=False, lines=True, stream=io.StringIO())
    quiet.update(4)
    assert quiet.stream.getvalue() == ""


def test_divergence_advice_leaves_out_what_is_set_already():
    text = str(nonfinite_loss_error(2, 3, 6, 0.5, CONFIG))
    assert "a lower learning_rate (now 0.05)" in text
    assert "warmup_epochs" not in text and "compute_dtype" not in text  # warm-up 0.5, float32
    text = str(
        nonfinite_loss_error(
            1, 0, 3, 0.5, CONFIG.replace(warmup_epochs=0.0, compute_dtype="bfloat16")
        )
    )
    assert text.endswith(
        "Try a lower learning_rate (now 0.05) or warmup_epochs > 0 or compute_dtype=float32 "
        "(now bfloat16)."
    )
