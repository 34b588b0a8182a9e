"""The growth engine: unit ops are (values, linear moments) pairs; a GrowthPlan's map is linear
and agrees with apply when there is no noise."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jnet2net import engine
from jnet2net.coupling import Member, UnitGroup

X = jnp.asarray(np.random.default_rng(0).standard_normal((3, 4, 5)), jnp.float32)
MAPPING = jnp.asarray([0, 1, 2, 3, 1, 1], jnp.int32)
COUNTS = jnp.asarray([1, 3, 1, 1], jnp.int32)
KEPT = jnp.asarray([0, 2], jnp.int32)
ASSIGNMENT = jnp.asarray([0, 0, 1, 1], jnp.int32)

OPS = {
    "identity": engine.identity(),
    "replicate": engine.replicate(MAPPING),
    "split_none": engine.split(MAPPING, COUNTS),
    "split_noise": engine.split(MAPPING, COUNTS, "split", 0.5),
    "paper": engine.split(MAPPING, COUNTS, "paper", 0.5),
    "narrow": engine.narrow(KEPT),
    "fold": engine.fold(ASSIGNMENT, 2),
    "pad": engine.pad(7),
}


@pytest.mark.parametrize("name", sorted(OPS))
def test_moments_are_the_noise_free_linearisation_of_values(name):
    op = OPS[name]
    tangent = X * 2.0 - 1.0
    if op.keyed:  # noisy values; the moments drop the noise: the plain split's linearisation
        values = OPS["split_none"].values
        assert not np.allclose(op.values(X, 1, jax.random.key(0)), values(X, 1, None))
    else:
        values = op.values
    _, linear = jax.linearize(lambda x: values(x, 1, None), X)
    np.testing.assert_allclose(op.moments(tangent, 1), linear(tangent), rtol=1e-6)


def test_ops_give_the_surgery_results():
    np.testing.assert_array_equal(OPS["replicate"].moments(X, 1), X[:, MAPPING])
    np.testing.assert_allclose(
        OPS["split_none"].moments(X, 1), X[:, MAPPING] / COUNTS[MAPPING][None, :, None]
    )
    np.testing.assert_array_equal(OPS["narrow"].moments(X, 1), X[:, KEPT])
    np.testing.assert_allclose(OPS["fold"].moments(X, 1)[:, 1], X[:, 2] + X[:, 3])
    padded = OPS["pad"].moments(X, 1)
    assert padded.shape == (3, 7, 5)
    np.testing.assert_array_equal(padded[:, 4:], 0.0)


def test_split_noise_keeps_the_sum_over_replicas():
    split = OPS["split_noise"].values(X, 1, jax.random.key(1))
    summed = jax.ops.segment_sum(jnp.moveaxis(split, 1, 0), MAPPING, num_segments=4)
    np.testing.assert_allclose(jnp.moveaxis(summed, 0, 1), X, rtol=1e-5, atol=1e-6)


def test_chain_applies_first_to_last():
    forward = engine.chain(engine.replicate(MAPPING), engine.narrow(jnp.asarray([4, 5])))
    backward = engine.chain(engine.narrow(KEPT), engine.replicate(jnp.asarray([1, 1, 0])))
    np.testing.assert_array_equal(forward.moments(X, 1), X[:, jnp.asarray([1, 1])])
    np.testing.assert_array_equal(backward.values(X, 1, None), X[:, jnp.asarray([2, 2, 0])])
    noisy = engine.chain(engine.identity(), OPS["split_noise"])
    assert noisy.keyed and not forward.keyed
    assert noisy.values(X, 1, jax.random.key(2)).shape == (3, 6, 5)


def test_on_units_reshapes_a_flattened_axis_and_names_a_wrong_one():
    flat = jnp.arange(2 * 4 * 3, dtype=jnp.float32).reshape(8, 3)  # 2 positions x 4 units
    op = engine.on_units(engine.replicate(MAPPING), 4, flattened=True, where="a", group="g")
    grown = op.values(flat, 0, None)
    np.testing.assert_array_equal(grown.reshape(2, 6, 3), flat.reshape(2, 4, 3)[:, MAPPING])
    plain = engine.on_units(engine.replicate(MAPPING), 4, flattened=False, where="p/k", group="g")
    with pytest.raises(ValueError, match="p/k has 3 units on axis 1 but group g has 4"):
        plain.values(jnp.zeros((4, 3)), 1, None)


# --- plans --------------------------------------------------------------------------------

HIDDEN = UnitGroup(
    "hidden",
    None,
    (
        Member(("params", "a", "kernel"), 1, "producer"),
        Member(("params", "a", "bias"), 0, "producer"),
        Member(("params", "b", "kernel"), 0, "consumer"),
    ),
)
PARAMS = {
    "a": {"kernel": X[0, :, :4], "bias": X[1, 0, :4]},
    "b": {"kernel": X[2, :, :3]},
}


def _plan(noise: str, **kwargs) -> engine.GrowthPlan:
    step = engine.GroupStep(
        HIDDEN, 4, 6, engine.replicate(MAPPING), engine.split(MAPPING, COUNTS, noise, 0.5)
    )
    return engine.GrowthPlan(None, None, (step,), key=jax.random.key(3), **kwargs)


def _assert_trees_close(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), a, b)


def test_map_is_linear():
    plan = _plan("split")
    y = jax.tree.map(lambda x: jnp.cos(x) + 1.0, PARAMS)
    mixed = jax.tree.map(lambda x, z: 2.0 * x - 3.0 * z, PARAMS, y)
    expected = jax.tree.map(lambda x, z: 2.0 * x - 3.0 * z, plan.map(PARAMS), plan.map(y))
    _assert_trees_close(plan.map(mixed), expected)


def test_map_of_the_params_is_apply_without_noise():
    mapped = _plan("split").map(PARAMS)
    applied = _plan("none").apply({"params": PARAMS})["params"]
    jax.tree.map(np.testing.assert_array_equal, mapped, applied)
    noisy = _plan("split").apply({"params": PARAMS})["params"]
    assert not np.allclose(noisy["b"]["kernel"], mapped["b"]["kernel"])
    np.testing.assert_array_equal(noisy["a"]["kernel"], mapped["a"]["kernel"])


def test_new_sources_take_their_value_and_zero_moments():
    sources = {
        ("params", "a", "kernel"): engine.Source(("params", "a", "kernel")),
        ("params", "a", "bias"): engine.Source(("params", "a", "bias")),
        ("params", "b", "kernel"): engine.Source(("params", "b", "kernel")),
        ("params", "c", "kernel"): engine.Source(value=jnp.eye(3)),
    }
    plan = engine.GrowthPlan(None, None, sources=sources)
    grown = plan.apply({"params": PARAMS, "batch_stats": {}})
    np.testing.assert_array_equal(grown["params"]["c"]["kernel"], jnp.eye(3))
    assert grown["batch_stats"] == {}
    moments = plan.map(PARAMS)
    np.testing.assert_array_equal(moments["c"]["kernel"], jnp.zeros((3, 3)))
    np.testing.assert_array_equal(moments["a"]["kernel"], PARAMS["a"]["kernel"])


def test_a_transfer_plan_applies_and_maps_like_a_growth_plan():
    from helpers import random_variables  # tests/ on sys.path

    from jnet2net import VGG
    from jnet2net.reuse import transfer_plan

    src = VGG(stage_widths=(2, 3), stage_depths=(1, 1), hidden_widths=(), num_classes=2)
    dst = src.clone(stage_widths=(4, 2), stage_depths=(2, 1))
    variables = random_variables(src, 0)
    plan = transfer_plan(src, variables, dst, key=jax.random.key(0), noise="none")
    assert (plan.model, plan.new_model) == (src, dst)
    jax.tree.map(np.testing.assert_array_equal, plan.apply(variables), plan.variables)
    mapped = plan.map(variables["params"])
    np.testing.assert_array_equal(  # widened producers copy, narrowed ones keep units
        mapped["stage0_layer0"]["conv"]["kernel"],
        plan.variables["params"]["stage0_layer0"]["conv"]["kernel"],
    )
    assert np.all(mapped["stage0_layer1"]["conv"]["kernel"] == 0.0)  # identity layer: new
