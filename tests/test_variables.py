"""Tests of jnet2net.variables: flattening and checks of variable dicts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from flax.core import FrozenDict, freeze

from jnet2net.models import VGG
from jnet2net.variables import check_key, check_variables, flatten, unflatten_like

MODEL = VGG((1,), (2,), (), num_classes=2)


def variables():
    shapes = jax.eval_shape(MODEL.init, jax.random.key(0), jnp.zeros((1, 4, 4, 3)))
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def with_head(kernel, bias):
    v = variables()
    return {**v, "params": {**v["params"], "head": {"kernel": kernel, "bias": bias}}}


def test_flatten_and_unflatten_like_round_trip_without_touching_the_input():
    v = variables()
    flat = flatten(freeze(v))
    assert ("params", "head", "kernel") in flat and (
        "batch_stats",
        "stage0_layer0",
        "bn",
        "var",
    ) in flat
    flat.pop(("params", "head", "kernel"))
    assert "kernel" in v["params"]["head"]
    again = unflatten_like(flatten(v), freeze(v))
    assert isinstance(again, FrozenDict)
    assert not isinstance(unflatten_like(flatten(v), v), FrozenDict)
    check_variables(MODEL, again)


def test_check_variables_names_the_leaf_and_both_shapes():
    with pytest.raises(ValueError, match=r"params/head/bias has shape \(3,\).*needs \(2,\)"):
        check_variables(MODEL, with_head(jnp.zeros((8, 2)), jnp.zeros(3)))
    with pytest.raises(ValueError, match="lack 'batch_stats'"):
        check_variables(MODEL, {"params": variables()["params"]})
    with pytest.raises(TypeError, match="must be a dict"):
        check_variables(MODEL, [1])
    extra = variables()
    extra = {**extra, "params": {**extra["params"], "more": {"kernel": jnp.zeros(2)}}}
    with pytest.raises(ValueError, match=r"unexpected params/more/kernel with shape \(2,\)"):
        check_variables(MODEL, extra)


def test_check_variables_rejects_leaves_that_are_not_float_arrays():
    with pytest.raises(TypeError, match=r"params/head/bias is a list, not an array"):
        check_variables(MODEL, with_head(jnp.zeros((8, 2)), [0.0, 0.0]))
    with pytest.raises(TypeError, match=r"params/head/kernel has dtype int32.*\(8, 2\)"):
        check_variables(MODEL, with_head(jnp.zeros((8, 2), jnp.int32), jnp.zeros(2)))
    check_variables(MODEL, with_head(jnp.zeros((8, 2), jnp.bfloat16), jnp.zeros(2)))


def test_check_key():
    check_key("f", jax.random.key(0))
    check_key("f", jax.random.PRNGKey(0))
    with pytest.raises(TypeError, match=r"f needs key=jax\.random\.key"):
        check_key("f", 0)
    with pytest.raises(TypeError, match=r"shape \(2,\)"):
        check_key("f", jax.random.split(jax.random.key(0)))
