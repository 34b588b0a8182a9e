"""train.Grow(target=module): growth events of any linen module inside one fit, exact, with
the optimizer moments mapped like the params."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest

import jnet2net
from jnet2net import data, train
from jnet2net.train.events import grow_at_event

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class DigitsMLP(nn.Module):
    """Flattened 8x8 digits -> ``depth`` hidden ReLU layers of ``width`` -> 10 logits."""

    width: int = 6
    depth: int = 1

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.relu(nn.Dense(self.width, name="stem")(x.reshape(x.shape[0], -1)))
        for i in range(self.depth):
            x = nn.relu(nn.Dense(self.width, name=f"hidden{i}")(x))
        return nn.Dense(10, name="head")(x)


MODEL = DigitsMLP()
WIDE = DigitsMLP(width=9)
WIDE_DEEP = DigitsMLP(width=9, depth=2)
GROWTH = (
    train.Grow(1, target=WIDE, noise="split"),
    train.Grow(2, target=WIDE_DEEP),
)
CONFIG = train.TrainConfig(
    epochs=3, batch_size=32, learning_rate=0.05, eval_batch_size=16, progress=False
)
KEY = jax.random.key(5)
X = np.zeros((1, 8, 8, 1), np.float32)  # a batch of one digit, for the trace


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", "train").take(96), data.load("digits", "test").take(40)


@pytest.mark.slow
def test_fit_grows_any_module_to_its_targets_exactly(digits, tmp_path):
    train_set, test_set = digits
    log = tmp_path / "run.jsonl"
    result = train.fit(
        MODEL, train_set, test_set, CONFIG.replace(log_path=str(log)), growth=GROWTH, growth_key=KEY
    )
    assert result.model == WIDE_DEEP
    assert result.state.params["hidden1"]["kernel"].shape == (9, 9)
    events = [r for r in train.read_jsonl(log) if r.get("event") == "grow"]
    assert [r["step"] for r in events] == [3, 6]
    assert all(0 <= r["output_error"] < 1e-5 for r in events)
    assert events[0]["grow"]["target"] == "DigitsMLP(width=9, depth=1)"
    assert events[1]["grow"]["target"] == "DigitsMLP(width=9, depth=2)"


@pytest.mark.slow
@pytest.mark.parametrize("noise", ["none", "fresh"])
def test_an_event_maps_the_moments_like_the_params(digits, noise):
    train_set, test_set = digits
    before = train.fit(MODEL, train_set, test_set, CONFIG, max_steps=3)
    event = train.Grow(1, target=WIDE, noise=noise)
    new_model, state = grow_at_event(MODEL, before.state, event, KEY, example_input=X)
    assert new_model == WIDE and int(state.step) == 3
    xs = jax.random.normal(jax.random.key(0), (2, 4, 8, 8, 1))
    jnet2net.assert_function_preserved(
        MODEL, before.state.variables, WIDE, state.variables, xs, rtol=1e-5
    )
    trace = state.opt_state[1][0].trace  # SGD momentum, shaped like the params
    old_trace = before.state.opt_state[1][0].trace
    kernel, old_kernel = trace["stem"]["kernel"], old_trace["stem"]["kernel"]
    assert kernel.shape == (64, 9)
    np.testing.assert_array_equal(kernel[:, :6], old_kernel)  # old units keep theirs
    if noise == "fresh":
        assert not np.any(kernel[:, 6:])  # new units start without momentum
    else:  # replicas copy their original's momentum, split consumers share it
        params = state.params["stem"]["kernel"]
        for j in range(6, 9):
            (original,) = [i for i in range(6) if np.array_equal(params[:, i], params[:, j])]
            np.testing.assert_array_equal(kernel[:, j], old_kernel[:, original])
        rows = trace["hidden0"]["kernel"]
        np.testing.assert_allclose(rows.sum(axis=0)[:6], old_trace["hidden0"]["kernel"].sum(0))


@pytest.mark.slow
def test_a_deepening_event_keeps_old_moments_and_zeroes_new_ones(digits):
    train_set, _ = digits
    before = train.fit(MODEL, train_set, None, CONFIG, max_steps=3)
    event = train.Grow(1, target=DigitsMLP(depth=2))
    _, state = grow_at_event(MODEL, before.state, event, KEY, example_input=X)
    trace, old = state.opt_state[1][0].trace, before.state.opt_state[1][0].trace
    np.testing.assert_array_equal(trace["hidden0"]["kernel"], old["hidden0"]["kernel"])
    assert not np.any(trace["hidden1"]["kernel"])
    np.testing.assert_array_equal(state.params["hidden1"]["kernel"], np.eye(6))


@pytest.mark.parametrize(
    ("fields", "error", "match"),
    [
        ({"target": WIDE, "widths": (4,)}, ValueError, "either target= or sizes"),
        ({"target": "wide"}, TypeError, "target must be a flax linen module"),
    ],
)
def test_bad_target_events_are_refused(fields, error, match):
    with pytest.raises(error, match=match):
        train.Grow(1, **fields)


def test_a_target_that_widens_and_deepens_at_once_fails_before_training(digits):
    train_set, _ = digits
    growth = (train.Grow(1, target=WIDE_DEEP),)
    with pytest.raises(ValueError, match=r"Grow\(at_epoch=1.0\).*split it into two events"):
        train.fit(MODEL, train_set, None, CONFIG, growth=growth)
