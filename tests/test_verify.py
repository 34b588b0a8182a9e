"""output_error / assert_function_preserved: vmapped comparison of two networks."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnet2net
from jnet2net import VGG

MODEL = VGG((1, 1), (3, 4), (5,), num_classes=3)
XS = np.random.default_rng(0).standard_normal((3, 4, 8, 8, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def variables():
    trained = MODEL.init(jax.random.key(0), XS[0])
    # non-trivial running statistics, so eval and train mode differ
    stats = jax.tree.map(lambda s: s + 0.3, trained["batch_stats"])
    return {"params": trained["params"], "batch_stats": stats}


def _perturbed(variables, scale=0.05):
    """A copy whose first conv kernel moved by ``scale`` relative to its size."""
    params = jax.tree.map(lambda p: p, variables["params"])
    kernel = params["stage0_layer0"]["conv"]["kernel"]
    noise = np.random.default_rng(1).standard_normal(kernel.shape).astype(np.float32)
    params["stage0_layer0"]["conv"]["kernel"] = kernel + scale * float(jnp.std(kernel)) * noise
    return {"params": params, "batch_stats": variables["batch_stats"]}


@pytest.mark.slow
@pytest.mark.parametrize("train", [False, True])
def test_identical_networks_have_zero_error(variables, train):
    err = jnet2net.output_error(MODEL, variables, MODEL, variables, XS, train=train)
    chex.assert_shape(err, (XS.shape[0],))
    chex.assert_type(err, jnp.float32)
    np.testing.assert_array_equal(err, 0.0)
    jnet2net.assert_function_preserved(MODEL, variables, MODEL, variables, XS, train=train)


@pytest.mark.parametrize("train", [False, True])
def test_a_perturbed_copy_is_detected(variables, train):
    other = _perturbed(variables)
    err = np.asarray(jnet2net.output_error(MODEL, variables, MODEL, other, XS, train=train))
    assert np.all(err > 1e-3), err
    with pytest.raises(
        AssertionError, match=rf"outputs differ: max relative error .* train={train}"
    ):
        jnet2net.assert_function_preserved(MODEL, variables, MODEL, other, XS, train=train)


@pytest.mark.parametrize("train", [False, True])
def test_errors_are_per_batch_like_a_python_loop(variables, train):
    """vmap over the stack == one call per batch (train mode: statistics of each batch)."""
    other = _perturbed(variables, scale=0.2)

    def logits(v, x):
        if train:
            return MODEL.apply(v, x, train=True, mutable=["batch_stats"])[0]
        return MODEL.apply(v, x)

    expected = []
    for x in XS:
        a, b = np.asarray(logits(variables, x)), np.asarray(logits(other, x))
        expected.append(np.max(np.abs(a - b)) / np.max(np.abs(a)))
    err = jnet2net.output_error(MODEL, variables, MODEL, other, XS, train=train)
    np.testing.assert_allclose(err, expected, rtol=1e-4)


def test_train_and_eval_comparisons_differ(variables):
    """Same weights, different running statistics: eval mode sees it, train mode does not."""
    shifted = {
        "params": variables["params"],
        "batch_stats": jax.tree.map(lambda s: s * 2.0, variables["batch_stats"]),
    }
    assert np.all(np.asarray(jnet2net.output_error(MODEL, variables, MODEL, shifted, XS)) > 1e-3)
    np.testing.assert_array_equal(
        jnet2net.output_error(MODEL, variables, MODEL, shifted, XS, train=True), 0.0
    )


def test_works_for_any_flax_module():
    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            return nn.Dense(2)(x.reshape(x.shape[0], -1))

    a = Tiny().init(jax.random.key(0), XS[0])
    b = jax.tree.map(lambda p: p * 1.5, a)
    err = jnet2net.output_error(Tiny(), a, Tiny(), b, XS)
    assert np.all(np.asarray(err) > 0.1)


@pytest.mark.parametrize("shape", [(4, 8, 8, 3), (2, 3, 4, 8, 8, 3), (8, 3)])
def test_rejects_inputs_that_are_not_a_stack_of_image_batches(variables, shape):
    with pytest.raises(ValueError, match=rf"\(n_batches, batch, h, w, c\), got \({shape[0]}, "):
        jnet2net.output_error(MODEL, variables, MODEL, variables, np.zeros(shape, np.float32))


@pytest.mark.parametrize("shape", [(0, 4, 8, 8, 3), (2, 0, 8, 8, 3), (2, 4, 0, 8, 3)])
def test_an_empty_stack_proves_nothing_and_is_refused(variables, shape):
    """Two different networks would otherwise pass on no inputs at all."""
    other = _perturbed(variables, scale=1.0)
    xs = jnp.ones(shape)
    with pytest.raises(ValueError, match=r"at least one batch of at least one input.*\(0|, 0"):
        jnet2net.output_error(MODEL, variables, MODEL, other, xs)
    with pytest.raises(ValueError, match="at least one batch"):
        jnet2net.assert_function_preserved(MODEL, variables, MODEL, other, xs)


def test_takes_array_likes_of_any_numeric_dtype(variables):
    """Nested lists, float64 and integer images are compared like float32 arrays."""
    reference = jnet2net.output_error(MODEL, variables, MODEL, _perturbed(variables), XS)
    as_list = jnet2net.output_error(MODEL, variables, MODEL, _perturbed(variables), XS.tolist())
    as_f64 = jnet2net.output_error(
        MODEL, variables, MODEL, _perturbed(variables), XS.astype(np.float64)
    )
    np.testing.assert_allclose(as_list, reference, rtol=1e-6)
    np.testing.assert_allclose(as_f64, reference, rtol=1e-6)
    pixels = np.random.default_rng(2).integers(0, 256, XS.shape).astype(np.uint8)
    err = jnet2net.output_error(MODEL, variables, MODEL, variables, pixels)
    chex.assert_type(err, jnp.float32)
    np.testing.assert_array_equal(err, 0.0)


def test_rejects_networks_with_different_output_shapes(variables):
    other_model = MODEL.clone(num_classes=4)
    other = other_model.init(jax.random.key(1), XS[0])
    with pytest.raises(
        ValueError, match=r"outputs of different shapes: \(4, 3\) and \(4, 4\) per batch"
    ):
        jnet2net.output_error(MODEL, variables, other_model, other, XS)


def test_rejects_variables_that_do_not_fit_naming_the_network(variables):
    wider = MODEL.clone(stage_widths=(4, 4))
    with pytest.raises(
        ValueError, match=r"model_b does not run on xs of shape .*/stage0_layer0/conv"
    ):
        jnet2net.output_error(MODEL, variables, wider, variables, XS)
    with pytest.raises(ValueError, match=r"model_a does not run on xs of shape \(3, 4, 8, 8, 2\)"):
        jnet2net.output_error(MODEL, variables, MODEL, variables, XS[..., :2])


class _Vectors(nn.Module):
    """A module without a ``train`` argument: (batch, features) -> (batch, 2)."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(2)(nn.relu(nn.Dense(5)(x)))


class _Tokens(nn.Module):
    """Token ids (batch, seq) -> logits (batch, seq, vocab): outputs of rank 3."""

    @nn.compact
    def __call__(self, ids, train=False):
        h = nn.Embed(7, 4)(ids)
        h = nn.BatchNorm(use_running_average=not train)(h)
        return nn.Dense(7)(h)


@pytest.mark.slow
@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize(
    "module, xs",
    [
        (_Vectors(), np.random.default_rng(3).standard_normal((3, 4, 6)).astype(np.float32)),
        (_Tokens(), np.random.default_rng(4).integers(0, 7, (2, 3, 5)).astype(np.int32)),
    ],
    ids=["vectors", "tokens"],
)
def test_inputs_and_outputs_of_any_rank(module, xs, train):
    a = module.init(jax.random.key(0), xs[0])
    err = jnet2net.output_error(module, a, module, a, xs, train=train)
    chex.assert_shape(err, (xs.shape[0],))
    np.testing.assert_array_equal(err, 0.0)
    b = jax.tree.map(lambda p: p * 1.5, a)
    err = np.asarray(jnet2net.output_error(module, a, module, b, xs, train=train))
    assert np.all(err > 0.1), err
    with pytest.raises(AssertionError, match="outputs differ"):
        jnet2net.assert_function_preserved(module, a, module, b, xs, train=train)


def test_a_stack_must_have_a_batch_axis():
    variables = _Vectors().init(jax.random.key(0), np.zeros((4, 6), np.float32))
    with pytest.raises(ValueError, match=r"\(n_batches, batch, \.\.\.\), got \(6,\)"):
        jnet2net.output_error(_Vectors(), variables, _Vectors(), variables, np.zeros(6))
