"""The library's convolution lowering: pixel-wise matrix products on CPU for tiny maps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jnet2net
from jnet2net.models import resnet18
from jnet2net.models.lowering import conv_general_dilated, plain_convs
from jnet2net.train.cost import jaxpr_flops

NHWC = ("NHWC", "HWIO", "NHWC")


def _assert_close(got, want):
    """Relative error against the largest magnitude well under 1e-5 (float32 sums)."""
    assert np.shape(got) == np.shape(want)
    scale = max(float(np.max(np.abs(want))), 1e-30)
    assert float(np.max(np.abs(np.asarray(got) - np.asarray(want)))) / scale < 1e-5


def _reference(x, k, padding):
    return lax.conv_general_dilated(x, k, (1, 1), padding, dimension_numbers=NHWC)


def _ours(x, k, padding):
    return conv_general_dilated(x, k, (1, 1), padding, dimension_numbers=NHWC)


def _primitives(fn, *args) -> set[str]:
    return {eqn.primitive.name for eqn in jax.make_jaxpr(fn)(*args).jaxpr.eqns}


@pytest.mark.parametrize(
    ("shape", "kernel", "padding"),
    [
        ((5, 2, 2, 6), (3, 3), "SAME"),
        ((5, 1, 1, 6), (3, 3), "SAME"),
        ((5, 2, 1, 6), (3, 3), "SAME"),
        ((5, 1, 2, 6), (5, 3), "SAME"),
        ((5, 2, 2, 6), (3, 3), ((2, 0), (0, 1))),
        ((5, 4, 4, 6), (3, 3), "VALID"),
    ],
)
def test_pixelwise_equals_the_convolution_with_its_gradients(shape, kernel, padding):
    x = jax.random.normal(jax.random.key(0), shape)
    k = jax.random.normal(jax.random.key(1), (*kernel, shape[-1], 7))
    ref = _reference(x, k, padding)
    out = _ours(x, k, padding)
    assert out.shape == ref.shape
    _assert_close(out, ref)

    def loss(conv):
        return lambda x, k: jnp.sum(jnp.sin(conv(x, k, padding)))

    for got, want in zip(
        jax.grad(loss(_ours), (0, 1))(x, k), jax.grad(loss(_reference), (0, 1))(x, k), strict=True
    ):
        _assert_close(got, want)


def test_tiny_maps_lower_to_matrix_products_on_cpu_and_the_rest_stays_a_convolution():
    k = jnp.ones((3, 3, 4, 8))
    tiny, large = jnp.ones((2, 2, 2, 4)), jnp.ones((2, 4, 4, 4))
    assert jax.default_backend() == "cpu"
    assert "conv_general_dilated" not in _primitives(lambda x: _ours(x, k, "SAME"), tiny)
    assert "conv_general_dilated" in _primitives(lambda x: _ours(x, k, "SAME"), large)
    strided = lambda x: conv_general_dilated(x, k, (2, 2), "SAME", dimension_numbers=NHWC)  # noqa: E731
    assert "conv_general_dilated" in _primitives(strided, tiny)
    pointwise = jnp.ones((1, 1, 4, 8))
    assert "conv_general_dilated" in _primitives(lambda x: _ours(x, pointwise, "SAME"), tiny)
    with plain_convs():
        assert "conv_general_dilated" in _primitives(lambda x: _ours(x, k, "SAME"), tiny)
    assert "conv_general_dilated" not in _primitives(lambda x: _ours(x, k, "SAME"), tiny)


def test_flops_count_the_valid_taps_like_the_convolution():
    x, k = jnp.ones((3, 2, 2, 4)), jnp.ones((3, 3, 4, 8))
    with plain_convs():
        want = jaxpr_flops(lambda x, k: _ours(x, k, "SAME"), x, k)
    assert jaxpr_flops(lambda x, k: _ours(x, k, "SAME"), x, k) == want == 2 * 3 * 4 * 4 * 4 * 8


@pytest.mark.parametrize("train", [False, True])
def test_networks_with_tiny_maps_compute_the_same_function(train):
    model = resnet18(stage_widths=(4, 8, 8, 16), num_classes=10)
    x = jax.random.normal(jax.random.key(0), (6, 16, 16, 3))  # stage 3 runs on 2x2 maps
    variables = model.init(jax.random.key(1), x, train=False)
    kwargs = {"mutable": ["batch_stats"]} if train else {}
    ours = model.apply(variables, x, train=train, **kwargs)
    with plain_convs():
        ref = model.apply(variables, x, train=train, **kwargs)
    for got, want in zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True):
        _assert_close(got, want)
    assert "dot_general" in _primitives(lambda v, x: model.apply(v, x, train=False), variables, x)


def test_discovery_sees_the_convolutions_of_networks_with_tiny_maps():
    model = resnet18(stage_widths=(4, 4, 8, 8), num_classes=10)
    tiny, large = jnp.ones((2, 16, 16, 3)), jnp.ones((2, 64, 64, 3))  # stage 3: 2x2 and 8x8
    variables = model.init(jax.random.key(0), large, train=False)
    assert jnet2net.couplings(model, variables, tiny) == jnet2net.couplings(model, variables, large)
