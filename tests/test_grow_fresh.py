"""``widen(noise='fresh')``: old units kept in place, new units freshly initialised.

New units get the wide network's own initial incoming weights and zero outgoing weights to
old units, so the widened network computes the old function exactly in eval and train mode,
and the new units are diverse (not replicas) and start learning at once.
"""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import random_variables  # tests/ is on sys.path

import jnet2net
from jnet2net import VGG, ResNet
from jnet2net.variables import flatten

RTOL = 1e-5
IMAGE = (8, 8, 3)
XS = np.random.default_rng(1).standard_normal((2, 4, *IMAGE)).astype(np.float32)

VGG_BN = VGG((1, 1), (3, 4), (5,), num_classes=3)
VGG_WIDEN = {"widths": (5, 7), "hidden_widths": (8,)}
RESNET = ResNet((2, 1), (4, 6), block="basic", stem="cifar", num_classes=3)
RESNET_WIDEN = {"widths": (6, 9)}

CASES = {
    "resnet_basic": (RESNET, RESNET_WIDEN),
    "resnet_basic_identity_shortcuts": (
        ResNet((2, 2), (4, 4), block="basic", num_classes=3, inner_widths=(2, 3)),
        {"widths": (7, 5), "inner_widths": (4, 3)},
    ),
    "resnet_bottleneck_inner_stem": (
        ResNet((1, 2), (8, 8), block="bottleneck", stem="imagenet", num_classes=3, stem_width=3),
        {"widths": (12, 10), "inner_widths": (3, 4), "stem_width": 5},
    ),
    "vgg_bn_hidden": (VGG_BN, VGG_WIDEN),
    "vgg_no_bn_two_hidden": (
        VGG((2, 1), (4, 3), (2, 4), num_classes=3, batch_norm=False),
        {"widths": (6, 5), "hidden_widths": (3, 6)},
    ),
}


def _init_key(key: jax.Array) -> jax.Array:
    """The key ``widen`` initialises the wide network with: the second half of its split."""
    return jax.random.split(key)[1]


def _fresh_init(model, new_model, variables, key):
    """Flat variables of the wide network's own initialisation, as ``widen`` draws them."""
    example = model.example_input(variables)
    return flatten(new_model.init(_init_key(key), example, train=False))


def _different(a, b) -> bool:
    return not np.array_equal(np.asarray(a), np.asarray(b))


# --- exactness ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_fresh_widening_is_exact_in_eval_and_train_mode(name):
    model, sizes = CASES[name]
    variables = random_variables(model, 3, image=IMAGE)
    wide_model, wide_vars = jnet2net.widen(
        model, variables, key=jax.random.key(1), noise="fresh", **sizes
    )
    jnet2net.check_variables(wide_model, wide_vars)
    for train in (False, True):
        jnet2net.assert_function_preserved(
            model, variables, wide_model, wide_vars, XS, train=train, rtol=RTOL
        )


def test_fresh_widening_of_nothing_returns_the_variables_unchanged():
    variables = random_variables(VGG_BN, 0)
    model, same = jnet2net.widen(VGG_BN, variables, key=jax.random.key(0), noise="fresh")
    assert model == VGG_BN
    for path, leaf in flatten(variables).items():
        np.testing.assert_array_equal(flatten(same)[path], leaf, err_msg=str(path))


# --- the blocks of each leaf ----------------------------------------------------------------


@pytest.fixture(scope="module")
def vgg_grown():
    """``(old flat, wide flat, fresh flat)`` of VGG_BN widened with ``noise='fresh'``."""
    variables = random_variables(VGG_BN, 4)
    key = jax.random.key(2)
    wide_model, wide_vars = jnet2net.widen(VGG_BN, variables, key=key, noise="fresh", **VGG_WIDEN)
    fresh = _fresh_init(VGG_BN, wide_model, variables, key)
    return flatten(variables), flatten(wide_vars), fresh


def test_producers_keep_old_units_first_and_take_fresh_new_units(vgg_grown):
    old, wide, fresh = vgg_grown
    for path, units in [
        (("params", "stage0_layer0", "conv", "kernel"), 3),
        (("params", "stage0_layer0", "bn", "scale"), 3),
        (("params", "stage0_layer0", "bn", "bias"), 3),
        (("batch_stats", "stage0_layer0", "bn", "mean"), 3),
        (("batch_stats", "stage0_layer0", "bn", "var"), 3),
        (("params", "hidden0", "bias"), 5),
    ]:
        np.testing.assert_array_equal(wide[path][..., :units], old[path], err_msg=str(path))
        np.testing.assert_array_equal(
            wide[path][..., units:], fresh[path][..., units:], err_msg=str(path)
        )
    np.testing.assert_array_equal(wide[("batch_stats", "stage1_layer0", "bn", "mean")][4:], 0.0)
    np.testing.assert_array_equal(wide[("batch_stats", "stage1_layer0", "bn", "var")][4:], 1.0)


def test_consumer_and_producer_leaf_has_four_blocks(vgg_grown):
    old, wide, fresh = vgg_grown
    path = ("params", "stage1_layer0", "conv", "kernel")  # (3, 3, 3 -> 5 in, 4 -> 7 out)
    kernel, fresh_kernel = wide[path], fresh[path]
    assert kernel.shape == (3, 3, 5, 7)
    np.testing.assert_array_equal(kernel[:, :, :3, :4], old[path])  # old -> old
    np.testing.assert_array_equal(kernel[:, :, 3:, :4], 0.0)  # new -> old
    np.testing.assert_array_equal(kernel[:, :, :, 4:], fresh_kernel[:, :, :, 4:])  # * -> new
    assert np.all(kernel[:, :, 3:, 4:] != 0.0)


def test_flattened_dense_input_zeroes_new_channels_at_every_position(vgg_grown):
    old, wide, fresh = vgg_grown
    path = ("params", "hidden0", "kernel")  # (positions * 4 -> 7 channels, 5 -> 8 units)
    positions = old[path].shape[0] // 4
    kernel = wide[path].reshape(positions, 7, 8)
    fresh_kernel = fresh[path].reshape(positions, 7, 8)
    np.testing.assert_array_equal(kernel[:, :4, :5], old[path].reshape(positions, 4, 5))
    np.testing.assert_array_equal(kernel[:, 4:, :5], 0.0)
    np.testing.assert_array_equal(kernel[:, :, 5:], fresh_kernel[:, :, 5:])


def test_pure_consumer_gets_zero_rows_for_new_units(vgg_grown):
    old, wide, _ = vgg_grown
    head = ("params", "head", "kernel")
    np.testing.assert_array_equal(wide[head][:5], old[head])
    np.testing.assert_array_equal(wide[head][5:], 0.0)
    np.testing.assert_array_equal(wide[("params", "head", "bias")], old[("params", "head", "bias")])


@pytest.mark.slow  # several seconds on a 2-core machine
def test_resnet_stream_members_have_the_same_blocks():
    variables = random_variables(RESNET, 5)
    key = jax.random.key(3)
    wide_model, wide_vars = jnet2net.widen(RESNET, variables, key=key, noise="fresh", widths=(6, 9))
    old, wide = flatten(variables), flatten(wide_vars)
    fresh = _fresh_init(RESNET, wide_model, variables, key)
    # stage-0 stream 4 -> 6, stage-1 stream 6 -> 9; block-0 inner width follows the stage
    proj = ("params", "stage1_block0", "proj_conv", "kernel")  # stream0 -> stream1
    np.testing.assert_array_equal(wide[proj][:, :, :4, :6], old[proj])
    np.testing.assert_array_equal(wide[proj][:, :, 4:, :6], 0.0)
    np.testing.assert_array_equal(wide[proj][..., 6:], fresh[proj][..., 6:])
    shortcut_consumer = ("params", "stage0_block1", "conv1", "kernel")  # stream0 -> inner0
    np.testing.assert_array_equal(wide[shortcut_consumer][:, :, 4:, :4], 0.0)
    np.testing.assert_array_equal(
        wide[shortcut_consumer][..., 4:], fresh[shortcut_consumer][..., 4:]
    )
    head = ("params", "head", "kernel")
    np.testing.assert_array_equal(wide[head][:6], old[head])
    np.testing.assert_array_equal(wide[head][6:], 0.0)
    stem = ("params", "stem", "conv", "kernel")
    np.testing.assert_array_equal(wide[stem][..., :4], old[stem])
    np.testing.assert_array_equal(wide[stem][..., 4:], fresh[stem][..., 4:])


def test_new_units_are_not_replicas(vgg_grown):
    _, wide, _ = vgg_grown
    for path in [("params", "stage0_layer0", "conv", "kernel"), ("params", "hidden0", "kernel")]:
        columns = np.asarray(wide[path]).reshape(-1, wide[path].shape[-1]).T
        for i in range(len(columns)):
            for j in range(i + 1, len(columns)):
                assert _different(columns[i], columns[j]), (path, i, j)


# --- keys, purity, jit -----------------------------------------------------------------------


def test_same_key_same_result_other_key_other_new_units_same_old_units():
    variables = random_variables(RESNET, 6)

    def grow(seed):
        return flatten(
            jnet2net.widen(
                RESNET, variables, key=jax.random.key(seed), noise="fresh", **RESNET_WIDEN
            )[1]
        )

    a, b, c = grow(0), grow(0), grow(1)
    for path in a:
        np.testing.assert_array_equal(a[path], b[path], err_msg=str(path))
    stem = ("params", "stem", "conv", "kernel")
    np.testing.assert_array_equal(a[stem][..., :4], c[stem][..., :4])
    assert _different(a[stem][..., 4:], c[stem][..., 4:])


def test_init_key_is_independent_of_the_plan_key():
    """The fresh units come from the second half of ``split(key)``, not from ``key`` itself."""
    variables = random_variables(VGG_BN, 7)
    key = jax.random.key(4)
    wide_model, wide_vars = jnet2net.widen(VGG_BN, variables, key=key, noise="fresh", **VGG_WIDEN)
    example = VGG_BN.example_input(variables)
    same_key = flatten(wide_model.init(key, example, train=False))
    path = ("params", "stage0_layer0", "conv", "kernel")
    assert _different(flatten(wide_vars)[path][..., 3:], same_key[path][..., 3:])


def test_inputs_are_not_mutated():
    variables = random_variables(VGG_BN, 8)
    before, model_before = copy.deepcopy(variables), VGG_BN.clone()
    jnet2net.widen(VGG_BN, variables, key=jax.random.key(0), noise="fresh", **VGG_WIDEN)
    for path, leaf in flatten(before).items():
        np.testing.assert_array_equal(flatten(variables)[path], leaf)
    assert model_before == VGG_BN


def test_fresh_widening_under_jit_matches_eager():
    variables = random_variables(RESNET, 9)
    key = jax.random.key(5)
    grow = jax.jit(jnet2net.widen, static_argnames=("model", "widths", "noise"))
    jit_model, jit_vars = grow(RESNET, variables, key=key, widths=(6, 9), noise="fresh")
    eager_model, eager_vars = jnet2net.widen(
        RESNET, variables, key=key, widths=(6, 9), noise="fresh"
    )
    assert jit_model == eager_model
    jit_flat, eager_flat = flatten(jit_vars), flatten(eager_vars)
    for path, leaf in eager_flat.items():
        np.testing.assert_allclose(jit_flat[path], leaf, rtol=1e-6, atol=1e-6, err_msg=str(path))


def test_noise_scale_is_ignored():
    variables = random_variables(VGG_BN, 10)
    key = jax.random.key(6)
    _, small = jnet2net.widen(VGG_BN, variables, key=key, noise="fresh", noise_scale=0.0)
    _, large = jnet2net.widen(VGG_BN, variables, key=key, noise="fresh", noise_scale=5.0)
    for path, leaf in flatten(small).items():
        np.testing.assert_array_equal(flatten(large)[path], leaf)


# --- the new units learn --------------------------------------------------------------------


def _one_sgd_step(model, variables, x):
    labels = jnp.arange(x.shape[0]) % 3

    def loss(params):
        logits, _ = model.apply(
            {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    grads = jax.grad(loss)(variables["params"])
    return flatten({"params": jax.tree.map(lambda p, g: p - 0.1 * g, variables["params"], grads)})


@pytest.mark.slow
def test_new_units_outgoing_weights_learn_after_one_step():
    variables = random_variables(VGG_BN, 11)
    wide_model, wide_vars = jnet2net.widen(
        VGG_BN, variables, key=jax.random.key(7), noise="fresh", **VGG_WIDEN
    )
    stepped = _one_sgd_step(wide_model, wide_vars, XS[0])
    # every new channel (after BatchNorm + ReLU, active on the batch) feeds old units
    conv = np.asarray(stepped[("params", "stage1_layer0", "conv", "kernel")])
    assert np.all(np.any(conv[:, :, 3:, :4] != 0.0, axis=(0, 1, 3)))
    dense = np.asarray(stepped[("params", "hidden0", "kernel")]).reshape(-1, 7, 8)
    assert np.all(np.any(dense[:, 4:, :5] != 0.0, axis=(0, 2)))
    # hidden units have no BatchNorm: a fresh one may be a dead ReLU on the whole batch
    head = np.asarray(stepped[("params", "head", "kernel")])
    assert np.any(head[5:] != 0.0)


@pytest.mark.slow
def test_resnet_new_stream_channels_learn_after_one_step():
    variables = random_variables(RESNET, 12)
    wide_model, wide_vars = jnet2net.widen(
        RESNET, variables, key=jax.random.key(8), noise="fresh", **RESNET_WIDEN
    )
    stepped = _one_sgd_step(wide_model, wide_vars, XS[1])
    assert np.all(np.any(np.asarray(stepped[("params", "head", "kernel")][6:]) != 0.0, axis=1))


# --- where 'fresh' does not apply -----------------------------------------------------------


def test_transfer_refuses_fresh():
    variables = random_variables(VGG_BN, 13)
    wider = VGG((1, 1), (5, 7), (8,), num_classes=3)
    with pytest.raises(ValueError, match=r"noise='fresh' is supported by widen"):
        jnet2net.transfer(VGG_BN, variables, wider, key=jax.random.key(0), noise="fresh")


def test_apply_widening_refuses_fresh():
    variables = random_variables(VGG_BN, 14)
    plan = jnet2net.widening_plan(VGG_BN, VGG_BN.clone(stage_widths=(5, 7)), jax.random.key(0))
    with pytest.raises(ValueError, match=r"apply_widening .*noise='fresh'"):
        jnet2net.apply_widening(variables, plan, noise="fresh")
