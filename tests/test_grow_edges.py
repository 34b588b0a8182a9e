"""Edge cases of widen / deepen: argument types, keys, jit, extra collections, odd shapes."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import RTOL, XS, leaves_equal, random_variables  # tests/ is on sys.path

import jnet2net
from jnet2net import VGG, ResNet

VGG_SMALL = VGG((1, 1), (3, 4), (5,), num_classes=3)
VGG_NO_BN = VGG((1,), (3,), num_classes=3, batch_norm=False)
RESNET_SMALL = ResNet((1, 1), (3, 4), num_classes=3)


@pytest.fixture(scope="module")
def vgg_vars():
    return random_variables(VGG_SMALL, 20)


@pytest.fixture(scope="module")
def resnet_vars():
    return random_variables(RESNET_SMALL, 21)


@pytest.mark.slow
def test_numpy_int_sizes_give_plain_int_fields(vgg_vars):
    key = jax.random.key(0)
    wide, _ = jnet2net.widen(VGG_SMALL, vgg_vars, key=key, widths=(np.int64(4), np.int32(5)))
    deep, _ = jnet2net.deepen(
        VGG_SMALL, vgg_vars, depths=(np.int64(2), 1), hidden_depths=np.int8(2)
    )
    assert wide.stage_widths == (4, 5) and deep.stage_depths == (2, 1)
    fields = (*wide.stage_widths, *deep.stage_depths, *deep.hidden_widths)
    assert all(type(v) is int for v in fields)
    json.dumps(jnet2net.model_config(wide))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"depths": (2.0, 1)}, r"depths must hold ints, got \(2.0, 1\)"),
        ({"depths": (True, 1)}, r"depths must hold ints, got \(True, 1\)"),
        ({"depths": (1, 1), "hidden_depths": np.float32(2)}, r"hidden_depths must be an int"),
    ],
)
def test_deepen_rejects_non_int_sizes_with_type_error(vgg_vars, kwargs, match):
    with pytest.raises(TypeError, match=match):
        jnet2net.deepen(VGG_SMALL, vgg_vars, **kwargs)


@pytest.mark.parametrize("key", [None, 0, np.zeros(3, np.uint32), jnp.ones(2, jnp.float32)])
def test_growth_rejects_what_is_not_a_prng_key(vgg_vars, resnet_vars, key):
    with pytest.raises(TypeError, match=r"widen needs key=jax.random.key\(seed\)"):
        jnet2net.widen(VGG_SMALL, vgg_vars, key=key, widths=(4, 5))
    if key is not None:
        with pytest.raises(TypeError, match=r"deepen needs key=jax.random.key\(seed\)"):
            jnet2net.deepen(RESNET_SMALL, resnet_vars, depths=(2, 1), key=key)


@pytest.mark.slow
def test_old_style_uint32_keys_work_like_new_style_keys(resnet_vars):
    old = jax.random.PRNGKey(3)
    wide_model, wide_vars = jnet2net.widen(RESNET_SMALL, resnet_vars, key=old, widths=(4, 6))
    _, again = jnet2net.widen(
        RESNET_SMALL, resnet_vars, key=jax.random.wrap_key_data(old), widths=(4, 6)
    )
    assert leaves_equal(wide_vars, again)
    deep_model, deep_vars = jnet2net.deepen(wide_model, wide_vars, depths=(2, 1), key=old)
    errors = jnet2net.output_error(RESNET_SMALL, resnet_vars, deep_model, deep_vars, XS)
    assert np.all(np.asarray(errors) < RTOL)


@pytest.mark.slow
def test_widen_under_jit_takes_a_traced_noise_scale(vgg_vars):
    grow = jax.jit(jnet2net.widen, static_argnames=("model", "widths"))
    key = jax.random.key(4)
    for scale in (0.0, 0.3):
        _, jitted = grow(VGG_SMALL, vgg_vars, key=key, widths=(5, 7), noise_scale=scale)
        _, eager = jnet2net.widen(VGG_SMALL, vgg_vars, key=key, widths=(5, 7), noise_scale=scale)
        chex.assert_trees_all_close(jitted, eager, atol=1e-6, rtol=1e-6)
    _, plain = jnet2net.widen(VGG_SMALL, vgg_vars, key=key, widths=(5, 7), noise="none")
    _, zero = grow(VGG_SMALL, vgg_vars, key=key, widths=(5, 7), noise_scale=0.0)
    assert leaves_equal(plain, zero)


@pytest.mark.parametrize(
    ("noise_scale", "error"),
    [(float("nan"), ValueError), (-0.5, ValueError), ("0.1", TypeError), (True, TypeError)],
)
def test_widen_rejects_noise_scales_that_are_not_finite_non_negative(vgg_vars, noise_scale, error):
    with pytest.raises(error, match="noise_scale must be a finite number >= 0"):
        jnet2net.widen(
            VGG_SMALL, vgg_vars, key=jax.random.key(0), widths=(5, 7), noise_scale=noise_scale
        )


def test_equal_sizes_are_a_no_op(vgg_vars, resnet_vars):
    model, same = jnet2net.widen(
        VGG_SMALL, vgg_vars, key=jax.random.key(0), widths=(3, 4), hidden_widths=(5,)
    )
    assert model == VGG_SMALL and leaves_equal(same, vgg_vars)
    model, same = jnet2net.deepen(RESNET_SMALL, resnet_vars, depths=(1, 1))
    assert model == RESNET_SMALL and leaves_equal(same, resnet_vars)


def test_growth_keeps_other_collections_and_empty_ones(vgg_vars):
    extra = {**vgg_vars, "intermediates": {"probe": jnp.arange(3.0)}}
    for _, grown in (
        jnet2net.widen(VGG_SMALL, extra, key=jax.random.key(0), widths=(4, 5)),
        jnet2net.deepen(VGG_SMALL, extra, depths=(2, 1), hidden_depths=2),
    ):
        assert sorted(grown) == ["batch_stats", "intermediates", "params"]
        assert grown["intermediates"]["probe"] is extra["intermediates"]["probe"]
    no_bn = {**random_variables(VGG_NO_BN, 0), "batch_stats": {}}
    for _, grown in (
        jnet2net.widen(VGG_NO_BN, no_bn, key=jax.random.key(0), widths=(5,)),
        jnet2net.deepen(VGG_NO_BN, no_bn, depths=(2,), hidden_depths=1),
    ):
        assert sorted(grown) == ["batch_stats", "params"] and grown["batch_stats"] == {}


@pytest.mark.parametrize("image", [(8, 16, 3), (16, 8, 3)])
def test_vgg_trained_on_rectangular_images_grows_exactly(image):
    model = VGG((1, 1), (3, 4), num_classes=3)
    variables = random_variables(model, 1, image=image)
    assert model.example_input(variables).shape[1:3] in ((8, 16), (16, 8))
    xs = np.random.default_rng(1).standard_normal((2, 4, *image)).astype(np.float32)
    wide_model, wide_vars = jnet2net.widen(model, variables, key=jax.random.key(0), widths=(4, 6))
    deep_model, deep_vars = jnet2net.deepen(wide_model, wide_vars, depths=(2, 1), hidden_depths=1)
    reference = jnet2net.output_error(model, variables, deep_model, deep_vars, xs)
    assert np.all(np.asarray(reference) < RTOL)


@pytest.mark.parametrize(
    ("batch", "match"),
    [
        (XS[0, 0], r"calibration_batch must be images \(n, h, w, c\), got \(8, 8, 3\)"),
        (
            XS[0][..., :2],
            r"calibration_batch of shape \(4, 8, 8, 2\) does not fit VGG: .*stage0_layer0",
        ),
        (XS[0][:, :4, :4], r"calibration_batch of shape \(4, 4, 4, 3\) does not fit VGG"),
    ],
)
def test_deepen_rejects_calibration_batches_that_do_not_fit(vgg_vars, batch, match):
    with pytest.raises(ValueError, match=match):
        jnet2net.deepen(VGG_SMALL, vgg_vars, depths=(2, 1), calibration_batch=batch)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"noise": "gaussian"}, ValueError, r"noise must be one of .*'gaussian'"),
        ({"key": 0}, TypeError, r"widen needs key=jax.random.key\(seed\)"),
        ({"noise_scale": -0.5}, ValueError, "noise_scale must be a finite number >= 0"),
    ],
)
def test_widen_checks_its_noise_options_with_sizes_and_with_a_target(
    vgg_vars, options, error, match
):
    kwargs = {"key": jax.random.key(0), **options}
    with pytest.raises(error, match=match):
        jnet2net.widen(VGG_SMALL, vgg_vars, widths=(4, 5), **kwargs)
    with pytest.raises(error, match=match):
        jnet2net.widen(VGG_SMALL, vgg_vars, target=VGG_SMALL.clone(stage_widths=(4, 5)), **kwargs)
