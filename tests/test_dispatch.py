"""Bounded asynchronous dispatch (``jnet2net.train.dispatch``)."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

from jnet2net.train import dispatch


def test_window_waits_on_the_oldest_once_full():
    waited = []
    window = dispatch.DispatchWindow(depth=2, wait=waited.append)
    for i in range(5):
        window.push(i)
    assert waited == [0, 1, 2]  # 3 and 4 still in flight
    window.drain()
    assert waited == [0, 1, 2, 3, 4]
    window.drain()
    assert waited == [0, 1, 2, 3, 4]


def test_window_of_real_arrays_returns_them_ready():
    window = dispatch.DispatchWindow(depth=1)
    x = jnp.ones(3)
    for _ in range(3):
        x = x + 1
        window.push(x)
    window.drain()
    assert float(x[0]) == 4.0


def test_every_waits_on_each_kth_output():
    waited = []
    sync = dispatch.Every(3, wait=waited.append)
    for i in range(7):
        sync.push(i)
    assert waited == [2, 5]


@pytest.mark.parametrize("depth", [0, -1])
def test_bad_depth_is_a_one_line_error(depth):
    with pytest.raises(ValueError, match="depth"):
        dispatch.DispatchWindow(depth=depth)
    with pytest.raises(ValueError, match="every"):
        dispatch.Every(depth)


@pytest.mark.slow  # several seconds on a 2-core machine
def test_fit_keeps_at_most_the_window_of_steps_in_flight(monkeypatch):
    """``fit`` pushes every train step's outputs through one window (and eval through
    ``Every``), so a loop never queues more than ``MAX_IN_FLIGHT`` steps."""
    from jnet2net import data, models
    from jnet2net.train import TrainConfig, fit

    pushed = {"train": 0, "eval": 0}

    class CountingWindow(dispatch.DispatchWindow):
        def push(self, outputs):
            pushed["train"] += 1
            super().push(outputs)

    class CountingEvery(dispatch.Every):
        def push(self, outputs):
            pushed["eval"] += 1
            super().push(outputs)

    monkeypatch.setattr(dispatch, "DispatchWindow", CountingWindow)
    monkeypatch.setattr(dispatch, "Every", CountingEvery)
    train = data.load("digits", "train").take(96)
    test = data.load("digits", "test").take(40)
    config = TrainConfig(epochs=2, batch_size=32, learning_rate=0.05, progress=False)
    result = fit(models.ResNet((1,), (4,), num_classes=10), train, test, config)
    assert pushed["train"] == result.history[-1]["step"] == 6
    assert pushed["eval"] > 0
