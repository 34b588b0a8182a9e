"""Tests of jnet2net.train.growth: optimizer moments follow their parameters across growth."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.core import FrozenDict, freeze

import jnet2net
from jnet2net.models import VGG, ResNet
from jnet2net.train.config import TrainConfig
from jnet2net.train.growth import (
    deepen_train_state,
    grow_train_state,
    transfer_train_state,
    widen_train_state,
)
from jnet2net.train.optim import make_optimizer
from jnet2net.train.state import TrainState
from jnet2net.variables import flatten

SIZE = 8
MODEL = VGG((1, 1), (3, 4), hidden_widths=(5,), num_classes=4)


@functools.cache
def batch() -> tuple[jax.Array, jax.Array]:
    """Eight random ``(SIZE, SIZE, 3)`` images and their labels (concrete arrays even when
    first called under ``jax.jit``, so the cache never holds a tracer)."""
    with jax.ensure_compile_time_eval():
        images = jax.random.normal(jax.random.key(7), (8, SIZE, SIZE, 3))
        return images, jnp.arange(8) % MODEL.num_classes


def make_state(model, tx, *, step: int = 0, seed: int = 0) -> TrainState:
    """A state at ``step`` whose params-shaped optimizer trees all equal the params."""
    variables = jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, SIZE, SIZE, 3)))
    state = TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=tx,
        batch_stats=variables["batch_stats"],
    )
    moments = optax.tree_map_params(tx, lambda _, p: p, state.opt_state, state.params)
    return state.replace(step=jnp.int32(step), opt_state=moments)


@jax.jit
def sgd_steps(state: TrainState) -> TrainState:
    """Three training steps (BatchNorm in train mode) on :func:`batch`."""
    images, labels = batch()

    def loss_fn(params, batch_stats):
        logits, updates = state.apply_fn(
            {"params": params, "batch_stats": batch_stats},
            images,
            train=True,
            mutable=["batch_stats"],
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, updates["batch_stats"]

    for _ in range(3):
        grads, stats = jax.grad(loss_fn, has_aux=True)(state.params, state.batch_stats)
        state = state.apply_gradients(grads=grads).replace(batch_stats=stats)
    return state


def replica_pairs(kernel: jax.Array) -> list[tuple[int, int]]:
    """Pairs of equal output columns of a kernel ``(..., units)``."""
    columns = np.asarray(kernel).reshape(-1, kernel.shape[-1]).T
    return [
        (i, j)
        for i in range(len(columns))
        for j in range(i + 1, len(columns))
        if np.array_equal(columns[i], columns[j])
    ]


def test_widened_momentum_is_mapped_like_the_params_and_replicas_stay_tied():
    tx = optax.sgd(optax.linear_schedule(0.05, 0.0, 100), momentum=0.9)
    state = make_state(MODEL, tx, step=5)
    schedule = state.opt_state[1]._replace(count=jnp.int32(5))
    state = state.replace(opt_state=(state.opt_state[0], schedule))
    key = jax.random.key(1)
    _, grown = widen_train_state(
        state, MODEL, key=key, widths=(6, 7), hidden_widths=(8,), noise="none"
    )
    _, expected = jnet2net.widen(
        MODEL, state.variables, key=key, widths=(6, 7), hidden_widths=(8,), noise="none"
    )
    chex.assert_trees_all_equal(grown.params, expected["params"])
    chex.assert_trees_all_equal(grown.batch_stats, expected["batch_stats"])
    # The momentum equalled the params, and is mapped by the same replicate/split.
    chex.assert_trees_all_close(grown.opt_state[0].trace, grown.params)
    assert int(grown.step) == 5
    assert grown.tx is tx
    assert int(grown.opt_state[1].count) == 5  # the schedule continues
    kernel = ("stage0_layer0", "conv", "kernel")
    pairs = replica_pairs(grown.params[kernel[0]][kernel[1]][kernel[2]])
    assert len(pairs) >= 2  # widths 3 -> 6: three replicas
    trained = sgd_steps(grown)
    assert int(trained.step) == 8 and int(trained.opt_state[1].count) == 8
    after = np.asarray(trained.params[kernel[0]][kernel[1]][kernel[2]])
    momentum = np.asarray(trained.opt_state[0].trace[kernel[0]][kernel[1]][kernel[2]])
    assert not np.allclose(after, grown.params[kernel[0]][kernel[1]][kernel[2]])
    for i, j in pairs:
        np.testing.assert_allclose(after[..., i], after[..., j], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(momentum[..., i], momentum[..., j], rtol=1e-5, atol=1e-7)


def test_split_noise_changes_params_but_not_the_moment_mapping():
    tx = optax.sgd(0.1, momentum=0.9)
    state = make_state(MODEL, tx)
    key = jax.random.key(2)
    _, noisy = widen_train_state(state, MODEL, key=key, widths=(5, 4), noise="split")
    _, plain = jnet2net.widen(MODEL, state.variables, key=key, widths=(5, 4), noise="none")
    chex.assert_trees_all_close(noisy.opt_state[0].trace, plain["params"])
    # The same replicas: producers (not split, so not noisy) match the moved momentum.
    chex.assert_trees_all_equal(
        noisy.params["stage0_layer0"], noisy.opt_state[0].trace["stage0_layer0"]
    )
    consumer = noisy.params["stage1_layer0"]["conv"]["kernel"]
    assert not np.allclose(consumer, plain["params"]["stage1_layer0"]["conv"]["kernel"])


def test_reset_gives_zeros_and_keeps_the_step_and_counters():
    config = TrainConfig(optimizer="adamw", learning_rate=1e-3, epochs=2)
    tx = make_optimizer(config, steps_per_epoch=10)  # AdamW with a masked weight decay
    state = make_state(MODEL, tx, step=9)
    adam = state.opt_state[0]
    state = state.replace(opt_state=(adam._replace(count=jnp.int32(9)), *state.opt_state[1:]))
    new_model, grown = deepen_train_state(state, MODEL, depths=(2, 1), moments="reset")
    new_adam = grown.opt_state[0]
    for tree in (new_adam.mu, new_adam.nu):
        chex.assert_trees_all_equal_shapes(tree, grown.params)
        assert all(float(jnp.abs(leaf).max()) == 0.0 for leaf in jax.tree.leaves(tree))
    assert int(new_adam.count) == 9 and int(grown.step) == 9
    assert grown.apply_fn == new_model.apply


def test_deepened_moments_keep_old_layers_and_zero_new_ones():
    tx = optax.adam(1e-3)
    state = make_state(MODEL, tx, step=3)
    new_model, grown = deepen_train_state(state, MODEL, depths=(1, 3), hidden_depths=2)
    mu = flatten(grown.opt_state[0].mu)
    old = flatten(state.params)
    for path, leaf in mu.items():
        if path in old:
            np.testing.assert_array_equal(leaf, old[path], err_msg=str(path))
        else:
            assert path[0] in ("stage1_layer1", "stage1_layer2", "hidden1"), path
            assert float(jnp.abs(leaf).max()) == 0.0
    jnet2net.check_variables(new_model, grown.variables)


def test_transferred_adam_moments_follow_the_plan():
    tx = optax.adam(1e-3)
    state = make_state(MODEL, tx, step=4)
    nu = jax.tree.map(jnp.square, state.params)
    adam = state.opt_state[0]
    state = state.replace(opt_state=(adam._replace(nu=nu), *state.opt_state[1:]))
    dst = VGG((1, 1), (5, 6), hidden_widths=(7,), num_classes=4)
    grown, report = transfer_train_state(state, MODEL, dst, key=jax.random.key(3), noise="none")
    assert report.function_preserving
    new_adam = grown.opt_state[0]
    chex.assert_trees_all_close(new_adam.mu, grown.params)  # mu was the params
    # nu is mapped with the same replicas: replicated units carry equal second moments.
    kernel = grown.params["stage0_layer0"]["conv"]["kernel"]
    nu_kernel = np.asarray(new_adam.nu["stage0_layer0"]["conv"]["kernel"])
    for i, j in replica_pairs(kernel):
        np.testing.assert_array_equal(nu_kernel[..., i], nu_kernel[..., j])
    assert int(new_adam.count) == int(adam.count) and int(grown.step) == 4
    # A shallower, narrower transfer with new classes: moments fit and new entries are zero.
    small = VGG((1, 1), (2, 3), num_classes=6)
    shrunk, report = transfer_train_state(state, MODEL, small, key=jax.random.key(3))
    assert not report.function_preserving
    chex.assert_trees_all_equal_shapes(shrunk.opt_state[0].mu, shrunk.params)
    np.testing.assert_array_equal(shrunk.opt_state[0].mu["head"]["bias"][4:], 0.0)
    chex.assert_tree_all_finite(shrunk.opt_state)
    updated = shrunk.apply_gradients(grads=jax.tree.map(jnp.ones_like, shrunk.params))
    assert int(updated.step) == 5


def test_resnet_transfer_state_with_sgd():
    model = ResNet((1, 1), (3, 4), num_classes=4)
    tx = optax.sgd(0.1, momentum=0.9)
    state = make_state(model, tx)
    dst = ResNet((2, 1), (4, 4), num_classes=4)
    grown, report = transfer_train_state(state, model, dst, key=jax.random.key(4), noise="none")
    trace = flatten(grown.opt_state[0].trace)
    params = flatten(grown.params)
    for row in report.rows:
        path = tuple(row.path.split("/")[1:])
        if row.path.startswith("params/") and row.status == "fresh":  # the new block
            assert float(jnp.abs(trace[path]).max()) == 0.0, row.path
        elif row.path.startswith("params/"):
            np.testing.assert_allclose(trace[path], params[path], err_msg=row.path)


def test_frozen_params_stay_frozen_and_match_their_moments():
    tx = optax.adam(1e-3)
    state = make_state(MODEL, tx, step=2)
    frozen = state.replace(
        params=freeze(state.params),
        batch_stats=freeze(state.batch_stats),
        opt_state=tx.init(freeze(state.params)),
    )
    dst = VGG((1, 1), (4, 4), hidden_widths=(5,), num_classes=4)
    _, deepened = deepen_train_state(frozen, MODEL, depths=(2, 1))
    transferred, _ = transfer_train_state(frozen, MODEL, dst, key=jax.random.key(5))
    _, widened = widen_train_state(frozen, MODEL, key=jax.random.key(5), widths=(4, 4))
    for grown in (deepened, transferred, widened):
        assert isinstance(grown.params, FrozenDict)
        assert isinstance(grown.batch_stats, FrozenDict)
        assert isinstance(grown.opt_state[0].mu, FrozenDict)
        updated = grown.apply_gradients(grads=jax.tree.map(jnp.ones_like, grown.params))
        assert int(updated.step) == 3


def test_bad_arguments_are_named():
    tx = optax.sgd(0.1, momentum=0.9)
    state = make_state(MODEL, tx)
    with pytest.raises(ValueError, match=r"moments must be one of \('map', 'reset'\)"):
        widen_train_state(state, MODEL, key=jax.random.key(0), widths=(4, 4), moments="keep")
    wrong = lambda tree: {**tree, "head": {"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros(4)}}  # noqa: E731
    with pytest.raises(ValueError, match=r"made head/kernel with shape \(2, 2\), the new params"):
        grow_train_state(state, MODEL, state.variables, wrong)


def _old_block(new: np.ndarray, old_shape: tuple[int, ...], flat_units: tuple[int, int] | None):
    """The entries of ``new`` that hold old units: the leading corner of every axis; for a
    flattened first axis (``flat_units=(old, new)`` channels), the first ``old`` channels at
    every position. Returns ``(old block, mask)``."""
    mask = np.zeros(new.shape, bool)
    if flat_units is None:
        mask[tuple(slice(0, s) for s in old_shape)] = True
        return new[mask].reshape(old_shape), mask
    old_c, new_c = flat_units
    positions = new.shape[0] // new_c
    view = mask.reshape(positions, new_c, *new.shape[1:])
    view[(slice(None), slice(0, old_c), *(slice(0, s) for s in old_shape[1:]))] = True
    return new[mask].reshape(old_shape), mask


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_fresh_widening_keeps_old_moments_and_zeroes_new_ones(optimizer):
    if optimizer == "sgd":
        tx = optax.sgd(0.1, momentum=0.9)
    else:
        tx = make_optimizer(TrainConfig(optimizer="adamw", learning_rate=1e-3, epochs=2), 10)
    state = make_state(MODEL, tx, step=3)
    old_params = flatten(state.params)  # make_state: every moment equals the params ...
    expected_moments = [old_params]
    if optimizer == "adamw":  # ... but Adam's nu must be >= 0 to train on
        adam = state.opt_state[0]
        nu = jax.tree.map(jnp.square, state.params)
        state = state.replace(opt_state=(adam._replace(nu=nu), *state.opt_state[1:]))
        expected_moments.append(flatten(nu))
    key = jax.random.key(6)
    sizes = {"widths": (6, 7), "hidden_widths": (8,)}
    new_model, grown = widen_train_state(state, MODEL, key=key, noise="fresh", **sizes)
    _, expected = jnet2net.widen(MODEL, state.variables, key=key, noise="fresh", **sizes)
    chex.assert_trees_all_equal(grown.params, expected["params"])
    chex.assert_trees_all_equal(grown.batch_stats, expected["batch_stats"])
    jnet2net.check_variables(new_model, grown.variables)
    trees = [grown.opt_state[0].trace] if optimizer == "sgd" else [grown.opt_state[0].mu]
    if optimizer == "adamw":
        trees.append(grown.opt_state[0].nu)
    for tree, old_moments in zip(trees, expected_moments, strict=True):
        for path, leaf in flatten(tree).items():
            flat_units = (4, 7) if path == ("hidden0", "kernel") else None
            block, mask = _old_block(np.asarray(leaf), old_params[path].shape, flat_units)
            np.testing.assert_array_equal(block, old_moments[path], err_msg=str(path))
            np.testing.assert_array_equal(np.asarray(leaf)[~mask], 0.0, err_msg=str(path))
            params_block, _ = _old_block(
                np.asarray(flatten(grown.params)[path]), old_params[path].shape, flat_units
            )
            np.testing.assert_array_equal(params_block, old_params[path], err_msg=str(path))
    assert int(grown.step) == 3
    trained = sgd_steps(grown)
    chex.assert_tree_all_finite(trained.params)
