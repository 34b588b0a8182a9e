"""Tests of jnet2net.reuse: transfer between similar VGGs and ResNets, and its report."""

from __future__ import annotations

import functools
import json

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from flax.core import FrozenDict, freeze
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jnet2net
from jnet2net.models import VGG, ResNet
from jnet2net.reuse import stage_slots, transfer, transfer_plan
from jnet2net.variables import flatten

SIZE = 8  # images are SIZE x SIZE x 3
FEW = settings(
    max_examples=3,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def randomized(variables, seed: int = 0):
    """Variables with every parameter perturbed and non-trivial BatchNorm statistics."""
    flat = flatten(variables)
    keys = jax.random.split(jax.random.key(seed), len(flat))
    out = {}
    for key, (path, leaf) in zip(keys, flat.items(), strict=True):
        noise = jax.random.normal(key, leaf.shape)
        if path[-1] == "var":
            out[path] = jax.random.uniform(key, leaf.shape, minval=0.5, maxval=1.5)
        elif path[-1] == "mean":
            out[path] = 0.1 * noise
        elif path[-1] == "scale":
            out[path] = leaf + 0.2 * noise
        else:
            out[path] = leaf + 0.1 * noise
    return traverse_util.unflatten_dict(out)


def init(model, seed: int = 0):
    """Randomised variables of ``model`` for SIZE x SIZE x 3 images."""
    variables = jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, SIZE, SIZE, 3)))
    return randomized(variables, seed)


@functools.cache
def images() -> jax.Array:
    """Two batches of four random images: ``(2, 4, SIZE, SIZE, 3)``."""
    return jax.random.normal(jax.random.key(42), (2, 4, SIZE, SIZE, 3))


# Compiled growth (one program each instead of hundreds of eager ops).
widen = jax.jit(
    jnet2net.widen, static_argnames=("model", "widths", "hidden_widths", "inner_widths", "noise")
)
deepen = jax.jit(jnet2net.deepen, static_argnames=("model", "depths", "hidden_depths"))


def max_error(src, src_vars, dst, dst_vars) -> float:
    return float(jnp.max(jnet2net.output_error(src, src_vars, dst, dst_vars, images())))


def check_result(src, src_vars, dst, dst_vars, report) -> None:
    """Shapes fit, values finite, and the report accounts for every leaf and value."""
    jnet2net.check_variables(dst, dst_vars)
    chex.assert_tree_all_finite(dst_vars)
    flat = flatten(dst_vars)
    src_flat = flatten(src_vars)
    assert sorted(row.path for row in report.rows) == sorted("/".join(p) for p in flat)
    by_path = {"/".join(p): leaf for p, leaf in flat.items()}
    for row in report.rows:
        assert row.shape == by_path[row.path].shape, row
        assert 0.0 <= row.fraction <= 1.0, row
        if row.status == "fresh":
            assert row.source is None and row.fraction == 0.0, row
        else:
            assert row.source is not None and row.fraction > 0.0, row
        if row.status == "exact":
            source = src_flat[tuple(row.source.split("/"))]
            np.testing.assert_array_equal(by_path[row.path], source, err_msg=row.path)
        if row.status == "transformed":
            assert row.fraction == 1.0, row
        if row.status == "partial":
            assert row.fraction < 1.0, row
    total = sum(leaf.size for leaf in flat.values())
    params = sum(leaf.size for p, leaf in flat.items() if p[0] == "params")
    totals = report.totals()
    assert sum(leaves for leaves, _ in totals.values()) == len(flat)
    assert sum(values for _, values in totals.values()) == total
    assert report.parameter_count == params
    assert 0.0 <= report.reused_fraction <= 1.0
    assert report.function_preserving == (not report.approximations)


# --- stage slots ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, m, depth_map, shrink, expected",
    [
        (2, 4, "proportional", "evenly", (0, None, 1, None)),
        (3, 4, "proportional", "evenly", (0, 1, 2, None)),
        (1, 3, "proportional", "evenly", (0, None, None)),
        (2, 4, "append", "evenly", (0, 1, None, None)),
        (5, 3, "proportional", "evenly", (0, 2, 4)),
        (5, 3, "proportional", "first", (0, 1, 2)),
        (5, 3, "proportional", "last", (0, 3, 4)),
        (4, 1, "proportional", "last", (0,)),
        (3, 3, "append", "first", (0, 1, 2)),
        (0, 2, "proportional", "evenly", (None, None)),
        (2, 0, "proportional", "evenly", ()),
    ],
)
def test_stage_slots(n, m, depth_map, shrink, expected):
    assert stage_slots(n, m, depth_map=depth_map, shrink=shrink) == expected


@given(
    n=st.integers(1, 12),
    m=st.integers(1, 12),
    depth_map=st.sampled_from(("proportional", "append")),
    shrink=st.sampled_from(("evenly", "first", "last")),
)
def test_stage_slots_properties(n, m, depth_map, shrink):
    slots = stage_slots(n, m, depth_map=depth_map, shrink=shrink)
    assert len(slots) == m
    assert slots[0] == 0  # the first layer (width / resolution change) always stays first
    kept = [j for j in slots if j is not None]
    assert kept == sorted(set(kept))  # increasing, no layer twice
    assert set(kept) == set(range(min(n, m) if m >= n else n)) or m < n
    if m >= n:
        assert kept == list(range(n))
    elif shrink == "evenly" and m > 1:
        assert kept[-1] == n - 1


def test_stage_slots_rejects_bad_arguments():
    with pytest.raises(ValueError, match="depth_map must be one of"):
        stage_slots(2, 3, depth_map="middle")
    with pytest.raises(ValueError, match="shrink must be one of"):
        stage_slots(3, 2, shrink="random")
    with pytest.raises(ValueError, match="dst_depth must be an int >= 0"):
        stage_slots(2, -1)


# --- bad pairs -----------------------------------------------------------------------------


@functools.cache
def small_vgg():
    model = VGG((1, 1), (4, 6))
    return model, init(model)


@functools.cache
def small_resnet():
    model = ResNet((1, 1), (4, 6))
    return model, init(model)


@pytest.mark.slow
@pytest.mark.parametrize(
    "family, dst, message",
    [
        ("vgg", ResNet((1, 1), (4, 6)), r"cannot transfer VGG\(.*\) -> ResNet\(.*\): a VGG and a "),
        ("resnet", VGG((1, 1), (4, 6)), r"a ResNet and a VGG have no layers in common"),
        ("vgg", VGG((1, 1, 1), (4, 6, 8)), r"the source has 2 stages and the destination 3"),
        ("resnet", ResNet((1,), (4,)), r"the source has 2 stages and the destination 1"),
        ("vgg", VGG((1, 1), (4, 6), batch_norm=False), r"batch_norm=True -> False"),
        (
            "resnet",
            ResNet((1, 1), (4, 6), block="bottleneck"),
            r"block='basic' -> 'bottleneck'",
        ),
        ("resnet", ResNet((1, 1), (4, 6), stem_width=4), r"incompatible stems in ResNet\(.*"),
    ],
)
def test_bad_pairs_are_named(family, dst, message):
    src, variables = small_vgg() if family == "vgg" else small_resnet()
    with pytest.raises(ValueError, match=message):
        transfer(src, variables, dst, key=jax.random.key(0))


@pytest.mark.slow  # several seconds on a 2-core machine
def test_bad_inputs_are_named():
    src, variables = small_vgg()
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"reads 3 input channels but input_shape .* has 1"):
        transfer(src, variables, VGG((2, 1), (4, 6)), key=key, input_shape=(1, SIZE, SIZE, 1))
    with pytest.raises(ValueError, match=r"features of 8x8 images but input_shape .* is 16x16"):
        transfer(src, variables, VGG((2, 1), (4, 6)), key=key, input_shape=(1, 16, 16, 3))
    for shape in (8, (1, 8, 8), (1, 8.0, 8, 3)):
        with pytest.raises(ValueError, match=r"input_shape must be \(n, h, w, c\) of positive"):
            transfer(src, variables, src, key=key, input_shape=shape)
    resnet, resnet_vars = small_resnet()
    _, report = transfer(resnet, resnet_vars, resnet, key=key, input_shape=np.array([2, 8, 8, 3]))
    assert report.function_preserving
    with pytest.raises(ValueError, match="reads 3 input channels"):
        transfer(resnet, resnet_vars, resnet, key=key, input_shape=(1, 8, 8, 4))
    with pytest.raises(TypeError, match="the destination is a Dense"):
        transfer(src, variables, nn.Dense(3), key=key)
    for option, value in (("fill", "zeros"), ("shrink", "middle"), ("noise", "loud")):
        with pytest.raises(ValueError, match=f"{option} must be one of"):
            transfer(src, variables, src, key=key, **{option: value})
    flat = flatten(variables)
    flat[("params", "stage0_layer0", "conv", "kernel")] = jnp.zeros((3, 3, 3, 5))
    with pytest.raises(ValueError, match="params/stage0_layer0/conv/kernel has shape"):
        transfer(src, traverse_util.unflatten_dict(flat), src, key=key)


@pytest.mark.slow
def test_even_kernel_cannot_take_identity_layers():
    src = VGG((1, 1), (4, 6), kernel_size=2)
    variables = init(src)
    with pytest.raises(ValueError, match="kernel_size=2 is even, so a conv kernel has no centre"):
        transfer(src, variables, VGG((2, 1), (4, 6), kernel_size=2), key=jax.random.key(0))
    # Stage 0's only layer reads the 3 image channels: no layer of the stage fits its gap.
    with pytest.raises(ValueError, match=r"no layer of the stage has their shapes to repeat"):
        transfer(
            src, variables, VGG((2, 1), (4, 6), kernel_size=2), key=jax.random.key(0), fill="repeat"
        )


# --- function-preserving transfers ---------------------------------------------------------


@pytest.mark.slow
def test_vgg_superset_matches_widen_then_deepen():
    src = VGG((1, 2), (4, 6), hidden_widths=(5,))
    dst = VGG((3, 3), (7, 9), hidden_widths=(8, 8))
    variables = init(src)
    key = jax.random.key(1)
    dst_vars, report = transfer(src, variables, dst, key=key)
    check_result(src, variables, dst, dst_vars, report)
    assert report.function_preserving, report
    wide_model, wide = widen(src, variables, key=key, widths=(7, 9), hidden_widths=(8,))
    grown_model, grown = deepen(wide_model, wide, depths=(3, 3), hidden_depths=2)
    assert grown_model == dst
    error = max_error(src, variables, dst, dst_vars)
    print(f"VGG superset: relative error {error:.2e}")
    assert error < 1e-5
    assert max_error(grown_model, grown, dst, dst_vars) < 1e-5  # transfer == widen + deepen
    statuses = {row.path: row.status for row in report.rows}
    assert statuses["params/stage0_layer1/conv/kernel"] == "fresh"  # identity layer
    assert statuses["params/head/bias"] == "exact"
    assert statuses["params/stage0_layer0/conv/kernel"] == "transformed"  # replicated
    # A head without hidden layers gains identity Dense layers as wide as its 4 * 6 inputs.
    small, small_vars = small_vgg()
    headed = small.clone(hidden_widths=(30, 30))
    headed_vars, report = transfer(small, small_vars, headed, key=key)
    check_result(small, small_vars, headed, headed_vars, report)
    assert report.function_preserving
    assert max_error(small, small_vars, headed, headed_vars) < 1e-5


@pytest.mark.slow
def test_resnet_bottleneck_superset_with_larger_kernel_is_exact():
    src = ResNet((1, 2), (8, 12), block="bottleneck", stem="imagenet", stem_width=4)
    dst = ResNet((2, 3), (12, 12), block="bottleneck", stem="imagenet", stem_width=6, kernel_size=5)
    variables = init(src)
    dst_vars, report = transfer(src, variables, dst, key=jax.random.key(2))
    check_result(src, variables, dst, dst_vars, report)
    assert report.function_preserving, report
    error = max_error(src, variables, dst, dst_vars)
    print(f"ResNet bottleneck superset, kernel 3 -> 5: relative error {error:.2e}")
    assert error < 1e-5
    rows = {row.path: row for row in report.rows}
    padded = rows["params/stage0_block0/conv2/kernel"]
    assert padded.status == "partial" and padded.fraction == pytest.approx(9 / 25)
    assert rows["params/stage0_block1/bn3/scale"].note.startswith("new block, scale 0")
    np.testing.assert_array_equal(dst_vars["params"]["stage0_block1"]["bn3"]["scale"], 0.0)


@pytest.mark.slow
def test_widening_transfer_maps_params_like_variables_and_keeps_frozen_dicts():
    src, variables = small_resnet()
    dst = ResNet((1, 1), (6, 9), inner_widths=(5, 7))
    plan = transfer_plan(src, freeze(variables), dst, key=jax.random.key(3), noise="none")
    assert isinstance(plan.variables, FrozenDict)
    assert plan.report.function_preserving
    # No new leaves and no noise: moments are mapped exactly like the parameters.
    chex.assert_trees_all_close(
        plan.map_params(freeze(variables["params"])), plan.variables["params"]
    )
    flat = flatten(variables["params"])
    with pytest.raises(ValueError, match="params/stem/conv/kernel has shape"):
        plan.map_params(traverse_util.unflatten_dict({**flat, ("stem", "conv", "kernel"): flat[
            ("head", "kernel")]}))  # fmt: skip
    del flat[("head", "bias")]
    with pytest.raises(ValueError, match="params/head/bias is missing"):
        plan.map_params(traverse_util.unflatten_dict(flat))


# --- approximate transfers -----------------------------------------------------------------


@pytest.mark.slow
def test_narrowing_a_widened_resnet_recovers_the_source():
    """Exact replicas fold back into their originals: shrinking undoes a Net2Net widening.

    (With ``noise='split'`` the replicas' incoming weights differ, so the weights no longer
    show which units are replicas.)
    """
    src, variables = small_resnet()
    wide_model, wide = widen(src, variables, key=jax.random.key(4), widths=(7, 10), noise="none")
    grown_model, grown = deepen(wide_model, wide, depths=(2, 3), key=jax.random.key(5))
    back, report = transfer(grown_model, grown, src, key=jax.random.key(6), shrink="first")
    check_result(grown_model, grown, src, back, report)
    assert not report.function_preserving
    assert any("stage0_stream: 7 -> 4 units" in reason for reason in report.approximations)
    error = max_error(src, variables, src, back)
    print(f"widened + deepened ResNet narrowed back: relative error {error:.2e}")
    assert error < 1e-4


@pytest.mark.slow
def test_shrinking_a_random_vgg_is_approximate_and_reported():
    src = VGG((3, 2), (9, 12), hidden_widths=(8, 6))
    dst = VGG((2, 1), (6, 8), hidden_widths=(5,))
    variables = init(src)
    dst_vars, report = transfer(src, variables, dst, key=jax.random.key(7))
    check_result(src, variables, dst, dst_vars, report)
    print(report)
    reasons = "\n".join(report.approximations)
    assert "stage 0: 3 -> 2 layers (shrink='evenly'): dropped stage0_layer1" in reasons
    assert "hidden1 multiplied into head" in reasons
    assert "stage0_layer0: 9 -> 6 units" in reasons
    error = max_error(src, variables, dst, dst_vars)
    print(f"random VGG shrunk: relative output error {error:.3f}")
    assert np.isfinite(error)


@pytest.mark.slow
def test_dropped_dense_layers_are_multiplied_into_the_next():
    src = VGG((1, 1), (4, 6), hidden_widths=(5, 7))
    variables = init(src)
    p = variables["params"]
    dst = VGG((1, 1), (4, 6), hidden_widths=(5,))
    dst_vars, report = transfer(src, variables, dst, key=jax.random.key(8), shrink="first")
    check_result(src, variables, dst, dst_vars, report)
    head = dst_vars["params"]["head"]
    chex.assert_trees_all_close(head["kernel"], p["hidden1"]["kernel"] @ p["head"]["kernel"])
    chex.assert_trees_all_close(
        head["bias"], p["hidden1"]["bias"] @ p["head"]["kernel"] + p["head"]["bias"], rtol=1e-5
    )
    assert {row.path: row.status for row in report.rows}["params/head/kernel"] == "transformed"
    # Without hidden layers everything is multiplied into the head.
    none_vars, _ = transfer(src, variables, VGG((1, 1), (4, 6)), key=jax.random.key(8))
    chex.assert_trees_all_close(
        none_vars["params"]["head"]["kernel"],
        p["hidden0"]["kernel"] @ p["hidden1"]["kernel"] @ p["head"]["kernel"],
        rtol=1e-5,
    )


@pytest.mark.slow
def test_num_classes_change_keeps_shared_columns():
    src, variables = small_vgg()
    head = variables["params"]["head"]
    more, report = transfer(src, variables, src.clone(num_classes=13), key=jax.random.key(9))
    check_result(src, variables, src.clone(num_classes=13), more, report)
    np.testing.assert_array_equal(more["params"]["head"]["kernel"][:, :10], head["kernel"])
    np.testing.assert_array_equal(more["params"]["head"]["bias"][:10], head["bias"])
    assert float(jnp.abs(more["params"]["head"]["kernel"][:, 10:]).sum()) > 0  # initialised
    row = {row.path: row for row in report.rows}["params/head/kernel"]
    assert row.status == "partial" and row.fraction == pytest.approx(10 / 13)
    assert report.approximations == (
        "num_classes 10 -> 13: the head keeps the first 10 classes' columns, the other "
        "classes are initialised",
    )
    fewer, report = transfer(src, variables, src.clone(num_classes=4), key=jax.random.key(9))
    np.testing.assert_array_equal(fewer["params"]["head"]["kernel"], head["kernel"][:, :4])
    logits = src.apply(variables, images()[0])
    np.testing.assert_allclose(src.clone(num_classes=4).apply(fewer, images()[0]), logits[:, :4])


@pytest.mark.slow
def test_smaller_kernel_is_centre_cropped_and_reported():
    src = VGG((1, 1), (4, 6), kernel_size=5)
    variables = init(src)
    dst = src.clone(kernel_size=3)
    dst_vars, report = transfer(src, variables, dst, key=jax.random.key(10))
    check_result(src, variables, dst, dst_vars, report)
    np.testing.assert_array_equal(
        dst_vars["params"]["stage0_layer0"]["conv"]["kernel"],
        variables["params"]["stage0_layer0"]["conv"]["kernel"][1:4, 1:4],
    )
    assert report.approximations == ("kernel_size 5 -> 3: kernels centre-cropped",)
    print(f"kernel 5 -> 3: relative error {max_error(src, variables, dst, dst_vars):.3f}")


@pytest.mark.slow
def test_padding_a_strided_1x1_kernel_is_reported():
    """A strided 1x1 conv reads the top-left pixel of each 2x2 window of an even-sized input;
    a centre-padded 3x3 kernel under 'SAME' padding reads the bottom-right one."""
    src = ResNet((1, 1), (4, 6), kernel_size=1)
    variables = init(src)
    dst = src.clone(kernel_size=3)
    dst_vars, report = transfer(src, variables, dst, key=jax.random.key(10))
    check_result(src, variables, dst, dst_vars, report)
    assert not report.function_preserving
    assert report.approximations[0].startswith("kernel_size 1 -> 3: kernels padded, but ")
    assert max_error(src, variables, dst, dst_vars) > 1e-3
    # Without a strided stage (one stage only) padding a 1x1 kernel is exact.
    single = ResNet((1,), (4,), kernel_size=1)
    single_vars = init(single)
    padded, report = transfer(
        single, single_vars, single.clone(kernel_size=3), key=jax.random.key(10)
    )
    assert report.function_preserving
    assert max_error(single, single_vars, single.clone(kernel_size=3), padded) < 1e-5


@pytest.mark.slow
def test_repeat_fill_copies_neighbours_and_falls_back_to_new_blocks():
    src = ResNet((2, 1), (4, 6))
    variables = init(src)
    dst = ResNet((4, 2), (4, 6))
    dst_vars, report = transfer(src, variables, dst, key=jax.random.key(11), fill="repeat")
    check_result(src, variables, dst, dst_vars, report)
    p, q = variables["params"], dst_vars["params"]
    # Stage 0 (slots 0, -, 1, -): each gap repeats the nearest earlier block of its shape.
    chex.assert_trees_all_equal(q["stage0_block1"], p["stage0_block0"])
    chex.assert_trees_all_equal(q["stage0_block3"], p["stage0_block1"])
    # Stage 1 has only its projection block, which cannot fill an identity-shortcut slot.
    assert {row.path: row.note for row in report.rows}["params/stage1_block1/bn2/scale"] == (
        "new block, scale 0: the block adds nothing"
    )
    assert report.approximations == (
        "stage 0 (fill='repeat'): stage0_block1 repeats stage0_block0, stage0_block3 repeats "
        "stage0_block1",
    )
    print(f"repeat fill: relative error {max_error(src, variables, dst, dst_vars):.3f}")


@pytest.mark.slow
def test_output_dtypes_follow_the_destination_for_bfloat16_source_variables():
    src, variables = small_vgg()
    half = jax.tree.map(lambda leaf: leaf.astype(jnp.bfloat16), variables)
    dst = VGG((2, 1), (5, 6), num_classes=12)
    dst_vars, _ = transfer(src, half, dst, key=jax.random.key(0))
    expected = flatten(jax.eval_shape(dst.init, jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3))))
    got = flatten(dst_vars)
    assert {p: (v.shape, v.dtype) for p, v in got.items()} == {
        p: (v.shape, v.dtype) for p, v in expected.items()
    }


def test_key_must_be_one_prng_key():
    src, variables = small_vgg()
    dst = src.clone(stage_widths=(5, 6))
    batch = jax.random.split(jax.random.key(0), 2)
    for key in (0, None, jnp.zeros((2, 2), jnp.uint32), batch):
        with pytest.raises(TypeError, match=r"transfer needs key=jax.random.key\(seed\)"):
            transfer(src, variables, dst, key=key)


@pytest.mark.slow
def test_compute_dtype_change_is_reported():
    src, variables = small_resnet()
    dst = ResNet((2, 1), (6, 8), dtype=jnp.bfloat16)
    dst_vars, report = transfer(src, variables, dst, key=jax.random.key(0), noise="none")
    assert report.approximations == (
        "dtype float32 -> bfloat16: the destination computes at another precision",
    )
    assert max_error(src, variables, dst, dst_vars) > 1e-5
    # The claim is of the weights: computed in float32 the destination is exact.
    assert max_error(src, variables, dst.clone(dtype=jnp.float32), dst_vars) < 1e-5


@pytest.mark.parametrize(
    "noise_scale, error",
    [(float("nan"), ValueError), (float("inf"), ValueError), (-1.0, ValueError), ("1", TypeError)],
)
def test_noise_scale_must_be_a_finite_non_negative_number(noise_scale, error):
    src, variables = small_vgg()
    key = jax.random.key(0)
    with pytest.raises(error, match=r"noise_scale must be a finite number >= 0, got"):
        transfer(src, variables, src.clone(stage_widths=(6, 8)), key=key, noise_scale=noise_scale)


@pytest.mark.slow
def test_large_split_noise_is_reported():
    """Split shares ``(1 + e) / count`` with a large ``e`` cancel only up to float32 rounding."""
    src, variables = small_resnet()
    dst = ResNet((1, 1), (8, 12))
    dst_vars, report = transfer(src, variables, dst, key=jax.random.key(1), noise_scale=1e4)
    assert report.approximations == (
        "noise='split' with noise_scale=10000.0 > 2.0: the replicas' shares are large and "
        "of both signs, so float32 rounding can exceed 1e-5",
    )
    assert max_error(src, variables, dst, dst_vars) > 1e-5
    dst_vars, report = transfer(src, variables, dst, key=jax.random.key(1), noise_scale=2.0)
    assert report.function_preserving
    assert max_error(src, variables, dst, dst_vars) < 1e-5


@pytest.mark.slow
def test_report_table_and_json():
    src, variables = small_vgg()
    dst = VGG((2, 1), (5, 4), num_classes=12)
    _, report = transfer(src, variables, dst, key=jax.random.key(12))
    table = str(report)
    assert table == report.table()
    lines = table.splitlines()
    assert lines[0].startswith("transfer VGG(stage_depths=(1, 1)")
    assert lines[2].split() == ["leaf", "shape", "status", "reused", "from", "/", "how"]
    assert sum(line.startswith(("params/", "batch_stats/")) for line in lines) == len(report.rows)
    assert "params/stage0_layer1/conv/kernel   3x3x5x5" in table
    assert lines[-1 - len(report.approximations)] == "function-preserving: no"
    assert any(line.startswith("totals: exact ") for line in lines)
    data = json.loads(report.to_json())
    assert data["function_preserving"] is False
    assert len(data["rows"]) == len(report.rows)
    assert data["parameter_count"] == report.parameter_count
    assert sum(row["size"] for row in data["rows"]) == sum(v[1] for v in data["totals"].values())
    assert {row["status"] for row in data["rows"]} <= {"exact", "transformed", "partial", "fresh"}


# --- random pairs --------------------------------------------------------------------------


def _grown(draw, values, superset: bool, low: int, high: int):
    deltas = st.integers(0, 2) if superset else st.integers(-2, 2)
    return tuple(min(high, max(low, v + draw(deltas))) for v in values)


@st.composite
def vgg_pairs(draw):
    superset = draw(st.booleans())
    depths = tuple(draw(st.integers(1, 3)) for _ in range(2))
    widths = tuple(draw(st.integers(2, 10)) for _ in range(2))
    hidden = tuple(draw(st.integers(2, 10)) for _ in range(draw(st.integers(0, 2))))
    kernel = draw(st.sampled_from((1, 3, 5)))
    src = VGG(depths, widths, hidden_widths=hidden, num_classes=5, kernel_size=kernel)
    extra = draw(st.integers(0, 1)) if superset else draw(st.integers(-len(hidden), 1))
    dst_hidden = _grown(draw, hidden + hidden[-1:] * extra, superset, 2, 12)[: len(hidden) + extra]
    dst = VGG(
        _grown(draw, depths, superset, 1, 4),
        _grown(draw, widths, superset, 2, 12),
        hidden_widths=dst_hidden,
        num_classes=5 if superset else draw(st.sampled_from((3, 5, 7))),
        kernel_size=kernel if superset else draw(st.sampled_from((1, 3, 5))),
    )
    return src, dst, superset


@st.composite
def resnet_pairs(draw):
    superset = draw(st.booleans())
    block = draw(st.sampled_from(("basic", "bottleneck")))
    stem = draw(st.sampled_from(("cifar", "imagenet")))
    depths = tuple(draw(st.integers(1, 3)) for _ in range(2))
    widths = tuple(draw(st.integers(2, 10)) for _ in range(2))
    stem_width = draw(st.one_of(st.none(), st.integers(2, 8)))
    src = ResNet(depths, widths, block=block, stem=stem, stem_width=stem_width, num_classes=5)
    dst = ResNet(
        _grown(draw, depths, superset, 1, 4),
        _grown(draw, widths, superset, 2, 12),
        block=block,
        stem=stem if superset else draw(st.sampled_from(("cifar", "imagenet"))),
        stem_width=None if stem_width is None else _grown(draw, (stem_width,), superset, 2, 12)[0],
        num_classes=5 if superset else draw(st.sampled_from((3, 5, 7))),
        kernel_size=draw(st.sampled_from((3, 5))) if superset else draw(st.sampled_from((1, 3))),
    )
    return src, dst, superset


options = st.fixed_dictionaries(
    {
        "depth_map": st.sampled_from(("proportional", "append")),
        "fill": st.sampled_from(("identity", "identity", "repeat")),
        "shrink": st.sampled_from(("evenly", "first", "last")),
        "noise": st.sampled_from(("split", "none")),
    }
)


def shared_class_error(src, src_vars, dst, dst_vars) -> float:
    """Relative difference of the logits of the classes both networks have."""
    shared = min(src.num_classes, dst.num_classes)
    a = src.apply(src_vars, images()[0])[:, :shared]
    b = dst.apply(dst_vars, images()[0])[:, :shared]
    chex.assert_tree_all_finite(b)
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a)))


def check_random_pair(pair, opts) -> None:
    src, dst, superset = pair
    variables = init(src)
    dst_vars, report = transfer(src, variables, dst, key=jax.random.key(13), **opts)
    check_result(src, variables, dst, dst_vars, report)
    if superset and opts["fill"] == "identity":
        assert report.function_preserving, report.approximations
    error = shared_class_error(src, variables, dst, dst_vars)
    if report.function_preserving:
        assert max_error(src, variables, dst, dst_vars) < 1e-5
        assert error < 1e-5
    else:  # an inexact transfer names what it approximated
        assert report.approximations, f"{report.src} -> {report.dst} {opts}: error {error:.2e}"


@pytest.mark.slow
@FEW
@given(pair=vgg_pairs(), opts=options)
def test_random_vgg_pairs(pair, opts):
    check_random_pair(pair, opts)


@pytest.mark.slow
@FEW
@given(pair=resnet_pairs(), opts=options)
def test_random_resnet_pairs(pair, opts):
    check_random_pair(pair, opts)


# --- stage slots, exhaustively ---------------------------------------------------------------


@pytest.mark.parametrize("depth_map", ["proportional", "append"])
@pytest.mark.parametrize("shrink", ["evenly", "first", "last"])
def test_stage_slots_exhaustive_small_depths(depth_map, shrink):
    for n in range(1, 7):
        for m in range(1, 7):
            slots = stage_slots(n, m, depth_map=depth_map, shrink=shrink)
            case = (n, m, depth_map, shrink, slots)
            assert len(slots) == m and slots[0] == 0, case
            kept = [j for j in slots if j is not None]
            assert all(0 <= j < n for j in kept), case
            gaps = [kept[k + 1] - kept[k] for k in range(len(kept) - 1)]
            assert all(gap > 0 for gap in gaps), case
            if m >= n:  # every source layer kept, placed as documented
                assert kept == list(range(n)), case
                for i in range(n):
                    slot = i * m // n if depth_map == "proportional" else i
                    assert slots[slot] == i, case
                continue
            assert None not in slots, case  # a shrink keeps exactly dst_depth layers
            if shrink == "first":
                assert kept == list(range(m)), case
            elif shrink == "last":
                assert kept == [0, *range(n - m + 1, n)], case
            elif m > 1:  # evenly: first and last kept, gaps differ by at most one
                assert kept[-1] == n - 1 and max(gaps) - min(gaps) <= 1, case
    assert stage_slots(0, 0) == () and stage_slots(3, 0, shrink=shrink) == ()


# --- report arithmetic, table and JSON -----------------------------------------------------


def _report(rows, approximations=()):
    from jnet2net.reuse import LeafReport, TransferReport

    return TransferReport(
        "VGG(a)", "VGG(b)", tuple(LeafReport(*row) for row in rows), tuple(approximations)
    )


REPORT_ROWS = [
    ("params/l0/conv/kernel", (3, 3, 2, 4), "transformed", 1.0, "params/l0/conv/kernel", "x"),
    ("params/l0/bn/scale", (4,), "exact", 1.0, "params/l0/bn/scale", ""),
    ("params/head/kernel", (4, 3), "partial", 2 / 3, "params/head/kernel", "classes 2 -> 3"),
    ("params/head/bias", (3,), "partial", 0.999, "params/head/bias", ""),
    ("params/l1/conv/kernel", (1, 1, 4, 4), "fresh", 0.0, None, "identity layer"),
    ("batch_stats/l0/bn/mean", (4,), "transformed", 1.0, "batch_stats/l0/bn/mean", ""),
    ("params/scalar", (), "partial", 0.004, "params/scalar", ""),
]


def test_report_arithmetic_and_totals():
    report = _report(REPORT_ROWS, ["dropped a layer"])
    params = [row for row in report.rows if row.path.startswith("params/")]
    assert report.parameter_count == 72 + 4 + 12 + 3 + 16 + 1
    assert report.reused_parameters == pytest.approx(72 + 4 + 8 + 2.997 + 0.004)
    assert report.reused_parameters == pytest.approx(sum(r.fraction * r.size for r in params))
    assert report.reused_fraction == pytest.approx(report.reused_parameters / 108)
    assert report.totals() == {
        "exact": (1, 4),
        "transformed": (2, 76),
        "partial": (3, 16),
        "fresh": (1, 16),
    }
    assert not report.function_preserving
    empty = _report([])
    assert empty.parameter_count == 0 and empty.reused_fraction == 0.0
    assert empty.totals() == {
        status: (0, 0) for status in ("exact", "transformed", "partial", "fresh")
    }


def test_report_table_lines_and_totals_line():
    report = _report(REPORT_ROWS, ["dropped a layer"])
    lines = str(report).splitlines()
    assert lines[0] == "transfer VGG(a)" and lines[1] == "      -> VGG(b)"
    body = {line.split()[0]: line.split() for line in lines[3 : 3 + len(REPORT_ROWS)]}
    assert set(body) == {row[0] for row in REPORT_ROWS}
    assert body["params/l0/conv/kernel"][1:4] == ["3x3x2x4", "transformed", "100%"]
    assert body["params/scalar"][1] == "()"
    assert body["params/head/kernel"][3] == "67%"
    # A partial leaf never reads as all or nothing reused.
    assert body["params/head/bias"][3] == ">99%"
    assert body["params/scalar"][3] == "<1%"
    assert (
        "totals: exact 1 leaves / 4 values, transformed 2 leaves / 76 values, partial 3 leaves"
        " / 16 values, fresh 1 leaves / 16 values"
    ) in lines
    assert "parameters: 87 of 108 from the source (80.6%)" in lines
    assert lines[-2:] == ["function-preserving: no", "  - dropped a layer"]
    assert str(_report(REPORT_ROWS[:2])).splitlines()[-1] == "function-preserving: yes"


def test_report_json_round_trip():
    report = _report(REPORT_ROWS, ["dropped a layer"])
    data = json.loads(report.to_json())
    assert data == report.to_dict()
    assert data["totals"]["partial"] == [3, 16]
    assert data["reused_parameters"] == pytest.approx(report.reused_parameters)
    assert data["function_preserving"] is False
    assert data["approximations"] == ["dropped a layer"]
    for row, original in zip(data["rows"], report.rows, strict=True):
        assert tuple(row["shape"]) == original.shape and row["size"] == original.size
        assert (row["path"], row["status"], row["source"], row["note"]) == (
            original.path,
            original.status,
            original.source,
            original.note,
        )
        assert row["fraction"] == original.fraction


@pytest.mark.parametrize(
    "row, match",
    [
        (("params/a", (2,), "exact", 0.5, "params/a", ""), "exact.*fraction 1"),
        (("params/a", (2,), "transformed", 0.5, "params/a", ""), "transformed.*fraction 1"),
        (("params/a", (2,), "partial", 1.0, "params/a", ""), "partial.*between 0 and 1"),
        (("params/a", (2,), "partial", 0.0, "params/a", ""), "partial.*between 0 and 1"),
        (("params/a", (2,), "fresh", 0.5, None, ""), "fresh.*fraction 0"),
        (("params/a", (2,), "fresh", 0.0, "params/a", ""), "fresh.*no source"),
        (("params/a", (2,), "exact", 1.0, None, ""), "exact.*needs a source"),
        (("params/a", (2,), "copied", 1.0, "params/a", ""), "status must be one of"),
        (("params/a", (2,), "partial", float("nan"), "params/a", ""), "between 0 and 1"),
    ],
)
def test_report_rejects_inconsistent_rows(row, match):
    with pytest.raises(ValueError, match=match) as info:
        _report([row])
    assert "params/a" in str(info.value)


@pytest.mark.slow
def test_report_of_a_real_transfer_adds_up():
    src = VGG((1,), (2,), (), num_classes=2, kernel_size=3)
    dst = VGG((2,), (3,), (), num_classes=3, kernel_size=5)
    variables = init(src)
    dst_vars, report = transfer(src, variables, dst, key=jax.random.key(0))
    check_result(src, variables, dst, dst_vars, report)
    params = {"/".join(p): leaf for p, leaf in flatten(dst_vars).items() if p[0] == "params"}
    reused = sum(r.fraction * params[r.path].size for r in report.rows if r.path in params)
    assert report.reused_parameters == pytest.approx(reused)
    assert {r.status for r in report.rows} >= {"partial", "fresh"}
    assert json.loads(report.to_json()) == report.to_dict()


def test_report_json_accepts_numpy_numbers():
    row = ("params/a", (np.int64(2), np.int32(3)), "partial", np.float32(0.5), "params/a", "")
    data = json.loads(_report([row]).to_json())
    assert data["rows"][0]["shape"] == [2, 3] and data["rows"][0]["size"] == 6
    assert data["rows"][0]["fraction"] == 0.5 and data["reused_parameters"] == 3.0
