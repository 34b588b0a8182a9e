"""jnet2net.transfer between ViTs of other depth, embed_dim, mlp_dim, num_heads, head_dim."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_vit import MODEL, XS, assert_exact, random_variables  # tests/ is on sys.path

import jnet2net
from jnet2net.models import ResNet
from jnet2net.reuse import TransferReport
from jnet2net.reuse.vit import resize_patch_kernel, resize_pos_embed
from jnet2net.variables import flatten

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

KEY = jax.random.key(3)


def rows(report):
    return {row.path: row for row in report.rows}


def test_the_same_architecture_is_copied_exactly():
    variables = random_variables(MODEL)
    new_vars, report = jnet2net.transfer(MODEL, variables, MODEL, key=KEY)
    jax.tree.map(np.testing.assert_array_equal, new_vars, variables)
    assert isinstance(report, TransferReport) and report.function_preserving
    assert {row.status for row in report.rows} == {"exact"}
    assert report.reused_fraction == 1.0
    assert report.src.startswith("ViT(") and "embed_dim=8" in report.src


@pytest.mark.slow
@pytest.mark.parametrize(
    "sizes",
    [
        {"depth": 3, "embed_dim": 16, "mlp_dim": 20, "num_heads": 3, "head_dim": 4},
        {"depth": 4, "mlp_dim": 16},
        {"num_heads": 3, "head_dim": 6},  # wider heads: zero-padded, query rescaled
        {"pool": None, "depth": 3},  # pool: mean (no class token)
    ],
)
def test_a_larger_vit_computes_the_same_function(sizes):
    sizes = dict(sizes)
    src = MODEL.clone(pool="mean") if sizes.pop("pool", "cls") is None else MODEL
    variables = random_variables(src)
    dst = src.clone(**sizes)
    new_vars, report = jnet2net.transfer(src, variables, dst, key=KEY)
    assert report.function_preserving, report.approximations
    assert_exact(src, variables, dst, new_vars)
    table = rows(report)
    assert table["params/block0/out/kernel"].source == "params/block0/out/kernel"
    if dst.depth > src.depth:
        assert any(row.status == "fresh" and "new block" in row.note for row in report.rows)


def test_a_smaller_vit_runs_and_reports_what_it_reused():
    big = MODEL.clone(depth=3, embed_dim=16, mlp_dim=20, num_heads=4)
    variables = random_variables(big)
    dst = MODEL.clone(num_heads=2, head_dim=3, num_classes=3)
    new_vars, report = jnet2net.transfer(big, variables, dst, key=KEY)
    jnet2net.check_variables(dst, new_vars)
    logits = dst.apply(new_vars, jnp.asarray(XS[0]))
    assert logits.shape == (4, 3) and bool(jnp.all(jnp.isfinite(logits)))
    assert not report.function_preserving
    text = "\n".join(report.approximations)
    for expected in ("dropped block1", "embed: 16 -> 8", "block0_heads: 4 -> 2",
                     "block1_mlp: 20 -> 12", "head_dim 4 -> 3", "num_classes 5 -> 3"):  # fmt: skip
        assert expected in text, (expected, text)
    table = rows(report)
    assert table["params/block1/mlp_in/kernel"].source == "params/block2/mlp_in/kernel"
    assert table["params/head/kernel"].status == "transformed"
    assert report.reused_fraction == 1.0  # narrower: every value comes from the source
    assert table["params/block0/query/kernel"].status == "transformed"


@pytest.mark.slow  # several seconds on a 2-core machine
def test_an_embed_dim_that_is_not_a_multiple_is_reported_as_inexact():
    variables = random_variables(MODEL)
    dst = MODEL.clone(embed_dim=12, head_dim=4)
    new_vars, report = jnet2net.transfer(MODEL, variables, dst, key=KEY)
    jnet2net.check_variables(dst, new_vars)
    assert any("LayerNorm" in line for line in report.approximations)


def test_fill_repeat_copies_a_block():
    variables = random_variables(MODEL)
    dst = MODEL.clone(depth=3)
    new_vars, report = jnet2net.transfer(MODEL, variables, dst, key=KEY, fill="repeat")
    assert rows(report)["params/block2/query/kernel"].note == "repeated layer"
    np.testing.assert_array_equal(
        new_vars["params"]["block2"]["query"]["kernel"],
        variables["params"]["block1"]["query"]["kernel"],
    )
    assert not report.function_preserving


@pytest.mark.slow  # several seconds on a 2-core machine
def test_moments_follow_the_params():
    variables = random_variables(MODEL)
    dst = MODEL.clone(depth=3, embed_dim=16, head_dim=4, num_heads=3, mlp_dim=14)
    plan = jnet2net.transfer_plan(MODEL, variables, dst, key=KEY, noise="none")
    moments = plan.map_params(variables["params"])
    assert jax.tree.map(jnp.shape, moments) == jax.tree.map(jnp.shape, plan.variables["params"])
    assert not np.any(moments["block2"]["query"]["kernel"])  # a new block: zero
    np.testing.assert_allclose(  # replicated stream, replicated moments (noise='none')
        moments["pos_embed"], plan.variables["params"]["pos_embed"], rtol=1e-6
    )


@pytest.mark.parametrize(
    "src, dst, error, match",
    [
        (MODEL, ResNet((1,), (4,)), ValueError, r"a ViT and a ResNet have no layers in common"),
        (ResNet((1,), (4,)), MODEL, ValueError, r"a ResNet and a ViT have no layers in common"),
        (MODEL, MODEL.clone(patch_size=3), ValueError, r"8x8 images do not cut into 3x3 patch"),
        (MODEL, MODEL.clone(pool="mean"), ValueError, r"pool 'cls' -> 'mean'"),
    ],
)
def test_bad_pairs_are_named(src, dst, error, match):
    x = jnp.zeros((1, 8, 8, 3))
    variables = src.init(jax.random.key(0), x)
    with pytest.raises(error, match=match):
        jnet2net.transfer(src, variables, dst, key=KEY)


def test_source_variables_are_not_changed():
    variables = random_variables(MODEL)
    before = jax.tree.map(np.array, variables)
    jnet2net.transfer(MODEL, variables, MODEL.clone(embed_dim=4, num_heads=1), key=KEY)
    for path, leaf in flatten(before).items():
        np.testing.assert_array_equal(flatten(variables)[path], leaf)


# --- another token grid: position embedding interpolated, patch embedding resized ----------


def _ramp(grid, embed=2):
    """``(1, gh * gw, embed)``: channel 0 rises along rows, channel 1 along columns."""
    rows, cols = np.meshgrid(np.arange(grid[0]), np.arange(grid[1]), indexing="ij")
    return np.stack([rows, cols], -1).reshape(1, -1, 2)[..., :embed].astype(np.float32)


def _half_pixel(n_old, n_new):
    """Bilinear sample positions (half-pixel centres, clamped at the border) of a resize."""
    return np.clip((np.arange(n_new) + 0.5) * n_old / n_new - 0.5, 0, n_old - 1)


def test_resize_pos_embed_interpolates_the_grid_and_keeps_the_class_token():
    constant = np.full((1, 1 + 6, 3), 0.7, np.float32)
    constant[0, 0] = -2.0  # the class token's row
    out = resize_pos_embed(constant, (2, 3), (4, 5), class_token=True)
    assert out.shape == (1, 1 + 20, 3)
    np.testing.assert_array_equal(out[0, 0], constant[0, 0])
    np.testing.assert_allclose(out[0, 1:], 0.7, rtol=1e-6)
    ramp = resize_pos_embed(_ramp((2, 3)), (2, 3), (4, 6), class_token=False)
    rows, cols = np.meshgrid(_half_pixel(2, 4), _half_pixel(3, 6), indexing="ij")
    expected = np.stack([rows, cols], -1).reshape(1, -1, 2)  # still a ramp, clamped at the ends
    np.testing.assert_allclose(ramp, expected, atol=1e-6)
    down = resize_pos_embed(_ramp((4, 4)), (4, 4), (2, 2), class_token=False)
    np.testing.assert_allclose(down, _ramp((2, 2)) * 2 + 0.5, atol=1e-6)  # pairs' means
    same = _ramp((2, 2))
    assert resize_pos_embed(same, (2, 2), (2, 2), class_token=False) is same


@pytest.mark.parametrize(
    "shape, src_grid, dst_grid, class_token, match",
    [
        ((1, 6, 4), (2, 2), (3, 3), False, r"params/pos_embed has shape \(1, 6, 4\).*2x2 grid"),
        ((1, 4, 4), (2, 2), (3, 3), True, r"2x2 grid and a class token: \(1, 5, d\)"),
        ((4, 4), (2, 2), (3, 3), False, r"params/pos_embed has shape \(4, 4\)"),
        (
            (1, 4, 4),
            (2, 2),
            (0, 3),
            False,
            r"dst_grid must be two positive ints \(rows, columns\); got \(0, 3\)",
        ),
    ],
)
def test_resize_pos_embed_refuses_bad_shapes(shape, src_grid, dst_grid, class_token, match):
    with pytest.raises(ValueError, match=match):
        resize_pos_embed(jnp.zeros(shape), src_grid, dst_grid, class_token=class_token)


def test_resize_patch_kernel_keeps_the_embedding_of_upsampled_patches():
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((2, 2, 3, 5)).astype(np.float32)
    patches = rng.standard_normal((7, 2, 2, 3)).astype(np.float32)
    big = resize_patch_kernel(kernel, 4)
    assert big.shape == (4, 4, 3, 5)
    upsampled = jax.image.resize(patches, (7, 4, 4, 3), "linear")  # the same patches, finer
    np.testing.assert_allclose(
        jnp.einsum("nhwc,hwcd->nd", upsampled, big),
        jnp.einsum("nhwc,hwcd->nd", patches, kernel),
        rtol=1e-5, atol=1e-5,
    )  # fmt: skip
    assert resize_patch_kernel(kernel, 1).shape == (1, 1, 3, 5)
    assert resize_patch_kernel(kernel, 2) is kernel
    with pytest.raises(ValueError, match=r"params/patch_embed/kernel has shape \(2, 3, 3, 5\)"):
        resize_patch_kernel(jnp.zeros((2, 3, 3, 5)), 4)


@pytest.mark.slow  # several seconds on a 2-core machine
def test_larger_images_interpolate_pos_embed_and_report_it():
    variables = random_variables(MODEL)
    new_vars, report = jnet2net.transfer(
        MODEL, variables, MODEL, key=KEY, input_shape=(1, 16, 16, 3)
    )
    old, new = variables["params"]["pos_embed"], new_vars["params"]["pos_embed"]
    assert new.shape == (1, 1 + 16, 8)
    np.testing.assert_array_equal(new[0, 0], old[0, 0])  # the class token's position
    expected = resize_pos_embed(old, (2, 2), (4, 4), class_token=True)
    np.testing.assert_allclose(new, expected, rtol=1e-6)
    table = rows(report)
    assert table["params/pos_embed"].status == "transformed"
    assert "token grid 2x2 -> 4x4" in table["params/pos_embed"].note
    assert "approximate" in table["params/pos_embed"].note
    assert table["params/block0/query/kernel"].status == "exact"
    assert not report.function_preserving
    assert any("params/pos_embed" in line for line in report.approximations)
    logits = MODEL.apply(new_vars, jnp.zeros((2, 16, 16, 3)))
    assert logits.shape == (2, 5) and bool(jnp.all(jnp.isfinite(logits)))


def test_another_patch_size_resizes_the_patch_kernel_and_the_grid():
    src = MODEL.clone(pool="mean")
    variables = random_variables(src)
    dst = src.clone(patch_size=2, depth=3)
    plan = jnet2net.transfer_plan(src, variables, dst, key=KEY)
    assert plan.input_shape == (1, 8, 8, 3)  # the source's images, cut into 4x4 patches of 2
    params = plan.variables["params"]
    np.testing.assert_allclose(
        params["patch_embed"]["kernel"],
        resize_patch_kernel(variables["params"]["patch_embed"]["kernel"], 2),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        params["pos_embed"],
        resize_pos_embed(variables["params"]["pos_embed"], (2, 2), (4, 4), class_token=False),
        rtol=1e-6,
    )
    table = rows(plan.report)
    assert "patch_size 4 -> 2" in table["params/patch_embed/kernel"].note
    assert table["params/patch_embed/bias"].status == "exact"
    text = "\n".join(plan.report.approximations)
    assert "params/patch_embed/kernel" in text and "params/pos_embed" in text
    moments = plan.map_params(variables["params"])
    assert not np.any(moments["patch_embed"]["kernel"])  # no moments for a resized kernel
    np.testing.assert_allclose(moments["pos_embed"], params["pos_embed"], rtol=1e-6)
