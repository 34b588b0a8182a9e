"""widen(target=...): any linen module grows by its discovered unit groups, exactly."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from test_discover import ConvFlattenDense, NormedMLP, ResidualCNN, Tokens  # tests/ is on sys.path

import jnet2net
from jnet2net.models import VGG
from jnet2net.variables import flatten


class MLP(nn.Module):
    widths: tuple[int, ...] = (4, 3)
    outputs: int = 2

    @nn.compact
    def __call__(self, x):
        for width in self.widths:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.outputs)(x)


def randomized(variables, seed=0):
    """Perturbed parameters and non-trivial BatchNorm statistics."""
    flat = flatten(variables)
    keys = jax.random.split(jax.random.key(seed), len(flat))
    out = {}
    for key, (path, leaf) in zip(keys, flat.items(), strict=True):
        if path[-1] == "var":
            out[path] = jax.random.uniform(key, leaf.shape, minval=0.5, maxval=1.5)
        else:
            out[path] = leaf + 0.3 * jax.random.normal(key, leaf.shape)
    return traverse_util.unflatten_dict(out)


def widened(model, target, x, noise, **kwargs):
    variables = randomized(model.init(jax.random.key(1), x))
    new_model, new_vars = jnet2net.widen(
        model,
        variables,
        key=jax.random.key(2),
        target=target,
        example_input=x,
        noise=noise,
        **kwargs,
    )
    return variables, new_model, new_vars


CASES = {
    "mlp": (MLP(), MLP(widths=(7, 5)), (2, 3)),
    "residual_cnn_bn": (ResidualCNN(), ResidualCNN(width=6, inner=9), (2, 8, 8, 3)),
    "conv_flatten_dense": (ConvFlattenDense(), ConvFlattenDense(width=6, hidden=8), (2, 8, 8, 3)),
    "layer_norm_x2": (NormedMLP(), NormedMLP(width=8), (2, 3)),
}


@pytest.mark.slow
@pytest.mark.parametrize(
    "case, noise",
    [
        (case, noise)
        for case in sorted(CASES)
        for noise in ("split", "none", "fresh")
        if not (noise == "fresh" and case == "layer_norm_x2")  # refused, tested below
    ],
)
def test_widening_to_a_target_is_exact_in_eval_and_train_mode(case, noise):
    model, target, shape = CASES[case]
    x = jnp.zeros(shape)
    variables, new_model, new_vars = widened(model, target, x, noise)
    assert new_model is target
    expected = flatten(jax.eval_shape(target.init, jax.random.key(0), x))
    got = flatten(new_vars)
    assert {p: v.shape for p, v in got.items()} == {p: v.shape for p, v in expected.items()}
    xs = jax.random.normal(jax.random.key(3), (2, *shape))
    for train in (False, True):
        err = jnet2net.output_error(model, variables, new_model, new_vars, xs, train=train)
        assert float(jnp.max(err)) < 1e-5, (case, noise, train, err)
    old = flatten(variables)
    assert any(not np.array_equal(np.shape(old[p]), got[p].shape) for p in old)


def test_uniform_only_groups_replicate_every_unit_equally():
    model, target, shape = CASES["layer_norm_x2"]
    _, _, new_vars = widened(model, target, jnp.zeros(shape), "none")
    kernel = np.asarray(new_vars["params"]["Dense_0"]["kernel"])
    np.testing.assert_array_equal(kernel[:, 4:], kernel[:, :4])


def test_uniform_only_groups_refuse_other_sizes_and_fresh_units():
    model, _, shape = CASES["layer_norm_x2"]
    x = jnp.zeros(shape)
    with pytest.raises(ValueError, match=r"Dense_0 .*uniform replication, to a multiple of 4"):
        widened(model, NormedMLP(width=6), x, "split")
    with pytest.raises(ValueError, match=r"noise='fresh' cannot grow Dense_0"):
        widened(model, NormedMLP(width=8), x, "fresh")


def test_shrinking_is_refused_naming_the_group():
    with pytest.raises(ValueError, match=r"cannot shrink Dense_1 from 3 to 2 units"):
        widened(MLP(), MLP(widths=(5, 2)), jnp.zeros((2, 3)), "split")


def test_targets_that_differ_in_more_than_unit_counts_are_refused():
    x = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match=r"params/Dense_3/kernel only in target"):
        widened(MLP(), MLP(widths=(4, 3, 3)), x, "split")
    with pytest.raises(ValueError, match=r"no growable unit group owns.*Dense_2/kernel axis 1: 2"):
        widened(MLP(), MLP(outputs=5), x, "split")
    with pytest.raises(ValueError, match=r"target must be a MLP .* got a NormedMLP"):
        widened(MLP(), NormedMLP(), x, "split")


def test_target_needs_an_example_input_and_excludes_the_width_keywords():
    model = MLP()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"traces MLP .* pass example_input="):
        jnet2net.widen(model, variables, key=jax.random.key(0), target=MLP(widths=(5, 3)))
    with pytest.raises(ValueError, match=r"either target= or the width keywords"):
        jnet2net.widen(
            model, variables, key=jax.random.key(0), target=MLP(widths=(5, 3)), widths=(5,)
        )


@pytest.mark.slow
def test_presets_grow_by_target_too_like_by_widths():
    model = VGG((1, 1), (3, 4), (5,), num_classes=2)
    x = jnp.zeros((1, 8, 8, 3))
    variables = randomized(model.init(jax.random.key(0), x))
    target = model.clone(stage_widths=(5, 6), hidden_widths=(7,))
    new_model, by_target = jnet2net.widen(model, variables, key=jax.random.key(4), target=target)
    _, by_widths = jnet2net.widen(
        model, variables, key=jax.random.key(4), widths=(5, 6), hidden_widths=(7,)
    )
    assert new_model == target
    xs = jax.random.normal(jax.random.key(5), (2, 2, 8, 8, 3))
    for train in (False, True):
        err = jnet2net.output_error(model, variables, new_model, by_target, xs, train=train)
        assert float(jnp.max(err)) < 1e-5
    assert jax.tree.map(jnp.shape, by_target) == jax.tree.map(jnp.shape, by_widths)


@pytest.mark.slow
def test_a_token_model_widens_its_embedding_exactly():
    ids = jnp.array([[1, 2, 3, 4, 5], [6, 0, 1, 2, 3]], jnp.int32)
    model = Tokens()
    variables = randomized(model.init(jax.random.key(0), ids))
    new_model, new_vars = jnet2net.widen(
        model, variables, key=jax.random.key(1), target=Tokens(dim=6, hidden=7), example_input=ids
    )
    assert new_vars["params"]["embed"]["embedding"].shape == (7, 6)
    err = jnet2net.output_error(model, variables, new_model, new_vars, ids[None])
    assert float(jnp.max(err)) < 1e-5


def test_uniform_mapping_copies_every_unit_equally():
    from jnet2net import surgery

    np.testing.assert_array_equal(surgery.uniform_mapping(3, 9), np.tile(np.arange(3), 3))
    with pytest.raises(ValueError, match=r"multiple of old_size, got 3 -> 7"):
        surgery.uniform_mapping(3, 7)


def test_nothing_passed_in_is_mutated():
    model, target = MLP(), MLP(widths=(6, 5))
    x = jnp.zeros((2, 3))
    variables = randomized(model.init(jax.random.key(0), x))
    before = jax.tree.map(np.array, variables)
    kwargs = {"mutable": False}
    jnet2net.widen(
        model,
        variables,
        key=jax.random.key(1),
        target=target,
        example_input=x,
        apply_kwargs=kwargs,
    )
    assert kwargs == {"mutable": False}
    assert jax.tree.structure(variables) == jax.tree.structure(before)
    jax.tree.map(np.testing.assert_array_equal, variables, before)
