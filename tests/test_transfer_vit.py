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
        (MODEL, MODEL.clone(patch_size=2), ValueError, r"patch_size 4 -> 2"),
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
