"""deepen(target=...): any linen module gets new layers initialised by rules, exactly."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_grow_any import randomized  # tests/ is on sys.path

import jnet2net
from jnet2net.variables import flatten


class DeepMLP(nn.Module):
    """``depth`` hidden ReLU layers of ``width`` units, then 2 outputs."""

    depth: int = 1
    width: int = 4

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(self.width, name="stem")(x))
        for i in range(self.depth):
            x = nn.relu(nn.Dense(self.width, name=f"hidden{i}")(x))
        return nn.Dense(2, name="out")(x)


class Block(nn.Module):
    width: int

    @nn.compact
    def __call__(self, x, train):
        norm = lambda name: nn.BatchNorm(use_running_average=not train, name=name)  # noqa: E731
        y = nn.relu(norm("bn_a")(nn.Conv(self.width, (3, 3), use_bias=False, name="conv_a")(x)))
        y = norm("bn_b")(nn.Conv(self.width, (3, 3), use_bias=False, name="conv_b")(y))
        return nn.relu(x + y)


class ResCNN(nn.Module):
    """A conv stem, ``blocks`` residual blocks ``block{i}``, a global mean and a head."""

    blocks: int = 1
    width: int = 4

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.relu(nn.Conv(self.width, (3, 3), name="stem")(x))
        for i in range(self.blocks):
            x = Block(self.width, name=f"block{i}")(x, train)
        return nn.Dense(3, name="head")(jnp.mean(x, axis=(1, 2)))


@pytest.mark.slow
def test_a_plain_chain_gets_identity_layers():
    model, target = DeepMLP(depth=1), DeepMLP(depth=3)
    x = jnp.zeros((2, 3))
    variables = randomized(model.init(jax.random.key(0), x))
    new_model, new_vars = jnet2net.deepen(
        model, variables, key=jax.random.key(1), target=target, example_input=x
    )
    assert new_model is target
    np.testing.assert_array_equal(new_vars["params"]["hidden2"]["kernel"], np.eye(4))
    np.testing.assert_array_equal(new_vars["params"]["hidden1"]["bias"], np.zeros(4))
    for path, leaf in flatten(variables).items():
        np.testing.assert_array_equal(flatten(new_vars)[path], leaf)
    xs = jax.random.normal(jax.random.key(2), (2, 5, 3))
    assert float(jnp.max(jnet2net.output_error(model, variables, target, new_vars, xs))) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("rules", [None, [(r"block1/bn_b/scale$", "zeros")]])
def test_a_new_residual_block_adds_zero_in_eval_and_train_mode(rules):
    model, target = ResCNN(blocks=1), ResCNN(blocks=2)
    x = jnp.zeros((2, 8, 8, 3))
    variables = randomized(model.init(jax.random.key(0), x))
    _, new_vars = jnet2net.deepen(
        model, variables, key=jax.random.key(1), target=target, example_input=x, rules=rules
    )
    new = new_vars["params"]["block1"]
    np.testing.assert_array_equal(new["bn_b"]["scale"], np.zeros(4))
    assert float(jnp.std(new["conv_a"]["kernel"])) > 0  # fresh weights: the branch learns
    xs = jax.random.normal(jax.random.key(2), (2, 2, 8, 8, 3))
    for train in (False, True):
        err = jnet2net.output_error(model, variables, target, new_vars, xs, train=train)
        assert float(jnp.max(err)) < 1e-5, (train, err)


def test_rules_that_break_the_function_are_refused_naming_the_new_paths():
    model, target = ResCNN(blocks=1), ResCNN(blocks=2)
    x = jnp.zeros((1, 8, 8, 3))
    variables = randomized(model.init(jax.random.key(0), x))
    with pytest.raises(ValueError, match=r"does not compute the same function.*block1/conv_a"):
        jnet2net.deepen(
            model, variables, key=jax.random.key(1), target=target, example_input=x, rules=[]
        )
    with pytest.raises(ValueError, match=r"unknown initialiser 'eye'"):
        jnet2net.deepen(
            model,
            variables,
            key=jax.random.key(1),
            target=target,
            example_input=x,
            rules=[("kernel$", "eye")],
        )


def test_rules_may_be_callables():
    model, target = DeepMLP(depth=1), DeepMLP(depth=2)
    x = jnp.zeros((2, 3))
    variables = randomized(model.init(jax.random.key(0), x))

    def eye(path, fresh):
        return jnp.eye(*fresh.shape) if path[-1] == "kernel" else jnp.zeros_like(fresh)

    _, new_vars = jnet2net.deepen(
        model,
        variables,
        key=jax.random.key(1),
        target=target,
        example_input=x,
        rules=[("hidden1", eye)],
    )
    np.testing.assert_array_equal(new_vars["params"]["hidden1"]["kernel"], np.eye(4))


def test_a_target_that_changes_old_layers_is_refused():
    model = DeepMLP(depth=1)
    x = jnp.zeros((2, 3))
    variables = model.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"params/hidden0/kernel has shape \(4, 4\) but \(5, 5\)"):
        jnet2net.deepen(
            model, variables, key=jax.random.key(1), target=DeepMLP(2, 5), example_input=x
        )
    with pytest.raises(ValueError, match=r"pass example_input="):
        jnet2net.deepen(model, variables, key=jax.random.key(1), target=DeepMLP(2))
