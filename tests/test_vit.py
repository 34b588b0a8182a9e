"""The Vision Transformer: model contract, exact growth (widen/deepen), train state, fit.

Parameters are random (not ``init``: its zero biases and unit LayerNorm scales would hide a
mis-mapped bias or scale), images 8x8 with 4x4 patches, widths <= 16.
"""

from __future__ import annotations

import json
import math
import pathlib
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jnet2net
from jnet2net import data, models, train
from jnet2net.grow_vit import embed_vit_widening, stream_mapping
from jnet2net.models import ViT
from jnet2net.train.growth import deepen_train_state, widen_train_state
from jnet2net.train.state import TrainState
from jnet2net.variables import flatten

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

RTOL = 1e-5
IMAGE = (8, 8, 3)
XS = np.random.default_rng(0).standard_normal((2, 4, *IMAGE)).astype(np.float32)
MODEL = ViT(patch_size=4, embed_dim=8, depth=2, num_heads=2, mlp_dim=12, num_classes=5)
MEAN_POOL = MODEL.clone(pool="mean")


def random_variables(model: ViT, seed: int = 0) -> dict:
    """Random values of every leaf of ``model`` (kernels ~ fan-in scaled normals, LayerNorm
    scales around 1, biases and embeddings clearly non-zero)."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *IMAGE)))
    rng = np.random.default_rng(seed)

    def leaf(path, shape):
        name, size = path[-1].key, shape.shape
        if name == "kernel":  # q/k/v: (embed, heads, head_dim); others: (..., fan_in, out)
            qkv = path[-2].key in ("query", "key", "value")
            fan_in = size[0] if qkv else math.prod(size[:-1])
            value = rng.standard_normal(size) / math.sqrt(fan_in)
        elif name == "scale":
            value = 1.0 + 0.3 * rng.standard_normal(size)
        else:  # biases, cls_token, pos_embed
            value = 0.3 * rng.standard_normal(size)
        return jnp.asarray(value, jnp.float32)

    return jax.tree_util.tree_map_with_path(leaf, shapes)


def host_copy(tree):
    return jax.tree.map(lambda x: np.array(x), tree)


def assert_exact(model, variables, new_model, new_variables):
    """Eval and train mode outputs equal to ``RTOL``, and the new variables fit."""
    jnet2net.check_variables(new_model, new_variables)
    for mode in (False, True):
        error = np.asarray(
            jnet2net.output_error(model, variables, new_model, new_variables, XS, train=mode)
        )
        assert np.all(error < RTOL), (mode, error)


# --- the model ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("model", [MODEL, MEAN_POOL], ids=["cls", "mean"])
def test_logits_and_named_parameter_paths(model):
    variables = model.init(jax.random.key(0), jnp.zeros((1, *IMAGE)))
    assert set(variables) == {"params"}  # no batch_stats
    logits = model.apply(variables, jnp.asarray(XS[0]), train=True)
    assert logits.shape == (4, 5) and logits.dtype == jnp.float32
    params = variables["params"]
    top = {"patch_embed", "pos_embed", "block0", "block1", "norm", "head"}
    assert set(params) == (top | {"cls_token"} if model.pool == "cls" else top)
    block = params["block1"]
    assert set(block) == {"norm1", "query", "key", "value", "out", "norm2", "mlp_in", "mlp_out"}
    assert block["query"]["kernel"].shape == (8, 2, 4)  # (embed, heads, head_dim)
    assert block["out"]["kernel"].shape == (2, 4, 8)  # (heads, head_dim, embed)
    assert block["mlp_in"]["kernel"].shape == (8, 12)
    tokens = 4 + (model.pool == "cls")
    assert params["pos_embed"].shape == (1, tokens, 8)
    chex.assert_shape(model.example_input(variables), (1, 8, 8, 3))


@pytest.mark.parametrize(
    "fields, error, match",
    [
        ({"embed_dim": 10, "num_heads": 3}, ValueError, "not divisible by num_heads=3"),
        ({"pool": "max"}, ValueError, "ViT.pool"),
        ({"depth": 0}, ValueError, "ViT.depth"),
        ({"mlp_dim": 2.5}, TypeError, "ViT.mlp_dim"),
        ({"head_dim": 0}, ValueError, "ViT.head_dim"),
    ],
)
def test_bad_fields_are_named(fields, error, match):
    with pytest.raises(error, match=match):
        MODEL.clone(**fields)


@pytest.mark.slow
def test_explicit_head_dim_lifts_the_divisibility_rule():
    model = MODEL.clone(embed_dim=10, num_heads=3, head_dim=4)
    variables = model.init(jax.random.key(0), jnp.zeros((1, *IMAGE)))
    assert variables["params"]["block0"]["key"]["kernel"].shape == (10, 3, 4)


def test_images_must_tile_into_patches():
    with pytest.raises(ValueError, match="multiples of 4"):
        MODEL.init(jax.random.key(0), jnp.zeros((1, 6, 8, 3)))


def test_presets_and_config_round_trip():
    tiny = models.preset("vit_tiny", num_classes=100)
    assert isinstance(tiny, ViT) and tiny.patch_size == 4 and tiny.num_classes == 100
    assert (tiny.embed_dim, tiny.depth, tiny.num_heads, tiny.mlp_dim) == (192, 12, 3, 768)
    assert models.vit_small().embed_dim == 384
    assert {"vit_tiny", "vit_small"} <= set(models.PRESETS)
    for model in (MODEL, MEAN_POOL, MODEL.clone(head_dim=3, dtype=jnp.bfloat16)):
        config = jnet2net.model_config(model)
        assert config["family"] == "ViT"
        assert jnet2net.model_from_config(config) == model


@pytest.mark.slow
def test_fit_trains_a_vit_without_batch_stats():
    train_set = data.load("digits", "train").take(64)
    test_set = data.load("digits", "test").take(16)
    model = ViT(patch_size=4, embed_dim=8, depth=1, num_heads=2, mlp_dim=8, num_classes=10)
    config = train.TrainConfig(
        epochs=1, batch_size=32, learning_rate=0.01, eval_batch_size=16, progress=False
    )
    result = train.fit(model, train_set, test_set, config)
    assert int(result.state.step) == 2
    assert not result.state.batch_stats
    assert math.isfinite(result.history[-1]["train_loss"])
    jnet2net.check_variables(model, result.state.variables)


# --- widen -------------------------------------------------------------------------------

WIDENINGS = {
    "mlp": {"mlp_dim": 16},
    "heads": {"num_heads": 4},
    "embed": {"embed_dim": 16},
    "embed_x3_heads_mlp": {"embed_dim": 24, "num_heads": 3, "mlp_dim": 15},
}


@pytest.mark.slow
@pytest.mark.parametrize("noise", ["none", "split", "fresh"])
@pytest.mark.parametrize("sizes", WIDENINGS.values(), ids=WIDENINGS.keys())
def test_widen_is_exact(sizes, noise):
    model = MODEL if "num_heads" in sizes else MEAN_POOL  # both pools across the cases
    variables = random_variables(model, 2)
    before = host_copy(variables)
    new_model, new_variables = jnet2net.widen(
        model, variables, key=jax.random.key(3), noise=noise, **sizes
    )
    chex.assert_trees_all_equal(variables, before)  # nothing passed in is mutated
    for name, value in sizes.items():
        assert getattr(new_model, name) == value
    assert new_model.resolved_head_dim() == model.resolved_head_dim() == 4
    assert_exact(model, variables, new_model, new_variables)
    params = new_variables["params"]
    embed, heads = new_model.embed_dim, new_model.num_heads
    assert params["block1"]["value"]["kernel"].shape == (embed, heads, 4)
    assert params["block1"]["out"]["kernel"].shape == (heads, 4, embed)
    assert params["block0"]["mlp_out"]["kernel"].shape == (new_model.mlp_dim, embed)
    assert params["norm"]["scale"].shape == (embed,)


def test_widened_stream_is_replicated_uniformly_and_consumers_divided():
    variables = random_variables(MODEL, 4)
    new_model, new_variables = jnet2net.widen(
        MODEL, variables, key=jax.random.key(0), embed_dim=24, noise="none"
    )
    old, new = variables["params"], new_variables["params"]
    np.testing.assert_array_equal(new["pos_embed"], np.tile(old["pos_embed"], (1, 1, 3)))
    np.testing.assert_array_equal(new["cls_token"], np.tile(old["cls_token"], (1, 1, 3)))
    np.testing.assert_array_equal(
        new["block0"]["norm2"]["scale"], np.tile(old["block0"]["norm2"]["scale"], 3)
    )
    np.testing.assert_allclose(
        new["block0"]["query"]["kernel"],
        np.tile(old["block0"]["query"]["kernel"], (3, 1, 1)) / 3,
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        new["head"]["kernel"], np.tile(old["head"]["kernel"], (3, 1)) / 3, rtol=1e-6
    )
    assert new_model.num_heads == 2 and new_model.head_dim == 4  # pinned: 24 / 2 != 4


def test_replicated_heads_copy_query_key_value_and_split_out_rows():
    variables = random_variables(MODEL, 5)
    _, new_variables = jnet2net.widen(
        MODEL, variables, key=jax.random.key(1), num_heads=3, noise="none"
    )
    old, new = variables["params"]["block0"], new_variables["params"]["block0"]
    query = np.asarray(new["query"]["kernel"][:, 2])
    source = next(h for h in range(2) if np.array_equal(query, old["query"]["kernel"][:, h]))
    for name in ("key", "value"):
        np.testing.assert_array_equal(new[name]["kernel"][:, 2], old[name]["kernel"][:, source])
        np.testing.assert_array_equal(new[name]["bias"][2], old[name]["bias"][source])
    out = np.asarray(new["out"]["kernel"])
    np.testing.assert_allclose(out[2], old["out"]["kernel"][source] / 2, rtol=1e-6)
    np.testing.assert_allclose(out[source] + out[2], old["out"]["kernel"][source], rtol=1e-6)


@pytest.mark.slow
def test_fresh_units_have_zero_outgoing_rows_and_fresh_incoming_weights():
    variables = random_variables(MODEL, 6)
    _, new_variables = jnet2net.widen(
        MODEL, variables, key=jax.random.key(2), num_heads=3, mlp_dim=14, noise="fresh"
    )
    old, new = variables["params"]["block1"], new_variables["params"]["block1"]
    np.testing.assert_array_equal(new["out"]["kernel"][2], 0.0)  # new head writes nothing
    np.testing.assert_array_equal(new["out"]["kernel"][:2], old["out"]["kernel"])
    np.testing.assert_array_equal(new["mlp_out"]["kernel"][12:], 0.0)
    np.testing.assert_array_equal(new["mlp_in"]["kernel"][:, :12], old["mlp_in"]["kernel"])
    assert float(jnp.abs(new["query"]["kernel"][:, 2]).max()) > 0  # its own query
    assert float(jnp.abs(new["mlp_in"]["kernel"][:, 12:]).max()) > 0


@pytest.mark.slow
def test_widen_under_jit_matches_eager():
    variables = random_variables(MODEL, 7)
    grow = jax.jit(jnet2net.widen, static_argnames=("model", "embed_dim", "mlp_dim", "noise"))
    key = jax.random.key(4)
    _, jitted = grow(MODEL, variables, key=key, embed_dim=16, mlp_dim=13, noise="split")
    _, eager = jnet2net.widen(MODEL, variables, key=key, embed_dim=16, mlp_dim=13)
    chex.assert_trees_all_close(jitted, eager, rtol=1e-6)


@pytest.mark.slow
def test_paper_noise_warns_and_is_not_exact():
    variables = random_variables(MODEL, 8)
    with pytest.warns(UserWarning, match="not compute exactly") as record:
        new_model, new_variables = jnet2net.widen(
            MODEL, variables, key=jax.random.key(0), mlp_dim=16, noise="paper", noise_scale=0.5
        )
    assert record[0].filename == __file__  # the caller's line, not the library's
    error = jnet2net.output_error(MODEL, variables, new_model, new_variables, XS)
    assert float(np.max(error)) > RTOL


def test_stream_mapping_copies_every_unit_k_times():
    mapping, counts = stream_mapping(3, 9)
    np.testing.assert_array_equal(mapping, [0, 1, 2] * 3)
    np.testing.assert_array_equal(counts, [3, 3, 3])


@pytest.mark.parametrize(
    "sizes, error, match",
    [
        ({"mlp_dim": 8}, ValueError, "cannot shrink a ViT's mlp_dim from 12 to 8"),
        ({"num_heads": 1}, ValueError, "cannot shrink a ViT's num_heads"),
        ({"embed_dim": 12}, ValueError, r"only to a multiple of it \(8 -> 12"),
        ({"embed_dim": 4}, ValueError, "cannot shrink a ViT's embed_dim"),
        ({"mlp_dim": 16.0}, TypeError, "mlp_dim must be an int"),
        ({"widths": (8,)}, ValueError, "widths does not apply to a ViT; it grows with embed_dim"),
        ({"stem_width": 4, "inner_widths": (4,)}, ValueError, "do not apply to a ViT"),
    ],
)
def test_bad_widen_requests_are_named(sizes, error, match):
    variables = random_variables(MODEL, 0)
    with pytest.raises(error, match=match):
        jnet2net.widen(MODEL, variables, key=jax.random.key(0), **sizes)


def test_unknown_keywords_and_other_families_are_refused():
    variables = random_variables(MODEL, 0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'hidden_dim'"):
        jnet2net.widen(MODEL, variables, key=jax.random.key(0), hidden_dim=16)
    with pytest.raises(TypeError, match="unexpected keyword argument 'depths_'"):
        jnet2net.deepen(MODEL, variables, key=jax.random.key(0), depths_=3)
    resnet = models.ResNet((1,), (4,))
    resnet_vars = resnet.init(jax.random.key(0), jnp.zeros((1, *IMAGE)))
    with pytest.raises(ValueError, match="mlp_dim does not apply to a ResNet"):
        jnet2net.widen(resnet, resnet_vars, key=jax.random.key(0), mlp_dim=8)
    with pytest.raises(ValueError, match="depth does not apply to a ResNet"):
        jnet2net.deepen(resnet, resnet_vars, key=jax.random.key(0), depth=3)


def test_variables_of_another_vit_are_refused():
    variables = random_variables(MODEL.clone(mlp_dim=10), 0)
    with pytest.raises(ValueError, match=r"params/block0/mlp_in/\w+ has shape"):
        jnet2net.widen(MODEL, variables, key=jax.random.key(0), mlp_dim=16)


# --- deepen ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("model", [MODEL, MEAN_POOL], ids=["cls", "mean"])
def test_deepen_appends_blocks_that_add_nothing(model):
    variables = random_variables(model, 9)
    before = host_copy(variables)
    new_model, new_variables = jnet2net.deepen(model, variables, depth=4, key=jax.random.key(5))
    chex.assert_trees_all_equal(variables, before)
    assert new_model.depth == 4 and new_model == model.clone(depth=4)
    assert_exact(model, variables, new_model, new_variables)
    old, new = flatten(variables), flatten(new_variables)
    for path, leaf in old.items():
        np.testing.assert_array_equal(new[path], leaf, err_msg=str(path))
    for block in ("block2", "block3"):
        params = new_variables["params"][block]
        for layer in ("out", "mlp_out"):
            for leaf in params[layer].values():
                np.testing.assert_array_equal(leaf, 0.0)
        assert float(jnp.abs(params["query"]["kernel"]).max()) > 0


@pytest.mark.slow
def test_widen_then_deepen_is_exact():
    variables = random_variables(MODEL, 10)
    key_w, key_d = jax.random.split(jax.random.key(6))
    wide_model, wide = jnet2net.widen(
        MODEL, variables, key=key_w, embed_dim=16, num_heads=3, mlp_dim=16, noise="fresh"
    )
    deep_model, deep = jnet2net.deepen(wide_model, wide, depth=3, key=key_d)
    assert (deep_model.embed_dim, deep_model.num_heads, deep_model.depth) == (16, 3, 3)
    assert_exact(MODEL, variables, deep_model, deep)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"depth": 1, "key": jax.random.key(0)}, ValueError, "cannot shrink a ViT's depth"),
        ({"depth": 3}, ValueError, "pass key=jax.random.key"),
        ({"depth": "3", "key": jax.random.key(0)}, TypeError, "depth must be an int"),
        ({"depths": (3,), "key": jax.random.key(0)}, ValueError, "depths does not apply"),
        ({"calibration_batch": np.zeros((1, *IMAGE))}, ValueError, "calibration_batch does not"),
    ],
)
def test_bad_deepen_requests_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        jnet2net.deepen(MODEL, random_variables(MODEL, 0), **kwargs)


# --- train state and fit -----------------------------------------------------------------


def make_state(model: ViT, tx: optax.GradientTransformation, seed: int = 0) -> TrainState:
    """A state at step 4 whose params-shaped optimizer trees all equal the params."""
    variables = random_variables(model, seed)
    state = TrainState.create(
        apply_fn=model.apply, params=variables["params"], tx=tx, batch_stats={}
    )
    moments = optax.tree_map_params(tx, lambda _, p: p, state.opt_state, state.params)
    return state.replace(step=jnp.int32(4), opt_state=moments)


@pytest.mark.slow
@pytest.mark.parametrize("noise", ["split", "fresh"])
def test_widened_train_state_maps_moments_like_params(noise):
    tx = optax.adam(1e-3)
    state = make_state(MODEL, tx)
    key = jax.random.key(7)
    sizes = {"embed_dim": 16, "num_heads": 3, "mlp_dim": 14}
    new_model, grown = widen_train_state(state, MODEL, key=key, noise=noise, **sizes)
    _, expected = jnet2net.widen(MODEL, state.variables, key=key, noise=noise, **sizes)
    chex.assert_trees_all_equal(grown.params, expected["params"])
    if noise == "fresh":
        mapped = embed_vit_widening({"params": state.params}, MODEL, new_model)["params"]
    else:  # moments follow the same replicas, without noise
        _, plain = jnet2net.widen(MODEL, state.variables, key=key, noise="none", **sizes)
        mapped = plain["params"]
    for tree in (grown.opt_state[0].mu, grown.opt_state[0].nu):
        chex.assert_trees_all_close(tree, mapped, rtol=1e-6)
    if noise == "fresh":  # new head and MLP units start with zero moments
        mu = grown.opt_state[0].mu["block0"]
        np.testing.assert_array_equal(mu["query"]["kernel"][:, 2], 0.0)
        np.testing.assert_array_equal(mu["mlp_in"]["kernel"][:, 12:], 0.0)
        np.testing.assert_array_equal(mu["mlp_out"]["kernel"][12:], 0.0)
    assert int(grown.step) == 4 and int(grown.opt_state[0].count) == 0
    assert grown.apply_fn == new_model.apply


def test_deepened_train_state_keeps_old_moments_and_zeroes_new_blocks():
    tx = optax.sgd(0.1, momentum=0.9)
    state = make_state(MODEL, tx, seed=1)
    new_model, grown = deepen_train_state(state, MODEL, depth=3, key=jax.random.key(0))
    trace = flatten(grown.opt_state[0].trace)
    old = flatten(state.params)
    for path, leaf in trace.items():
        if path in old:
            np.testing.assert_array_equal(leaf, old[path], err_msg=str(path))
        else:
            assert path[0] == "block2", path
            np.testing.assert_array_equal(leaf, 0.0)
    jnet2net.check_variables(new_model, grown.variables)


def test_grow_events_carry_vit_sizes():
    event = train.Grow(1, embed_dim=16, num_heads=3, depth=3)
    assert event.widens and event.deepens
    assert event.to_dict() == {"at_epoch": 1.0, "embed_dim": 16, "num_heads": 3, "depth": 3}
    with pytest.raises(ValueError, match=r"Grow\.mlp_dim must hold ints"):
        train.Grow(1, mlp_dim=0)


@pytest.mark.slow
def test_fit_grows_a_vit_exactly_at_its_events():
    train_set = data.load("digits", "train").take(64)
    test_set = data.load("digits", "test").take(16)
    model = ViT(patch_size=4, embed_dim=4, depth=1, num_heads=1, mlp_dim=4, num_classes=10)
    config = train.TrainConfig(
        epochs=2,
        batch_size=32,
        learning_rate=0.01,
        eval_batch_size=16,
        progress=False,
        optimizer="adamw",
    )
    seen = []
    result = train.fit(
        model,
        train_set,
        test_set,
        config,
        growth=(train.Grow(1, embed_dim=8, num_heads=2, mlp_dim=6, depth=2),),
        growth_key=jax.random.key(0),
        on_grow=lambda m, state, record: seen.append((m, record)),
    )
    expected = model.clone(embed_dim=8, num_heads=2, mlp_dim=6, depth=2)  # head_dim 8 / 2
    assert result.model == expected and int(result.state.step) == 4
    ((grown, record),) = seen
    assert grown == expected
    assert record["model"]["family"] == "ViT" and record["output_error"] < RTOL
    jnet2net.check_variables(expected, result.state.variables)


@pytest.mark.slow
def test_readme_vit_block_runs_and_preserves_the_function():
    readme = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
    (block,) = [
        b for b in re.findall(r"^```python\n(.*?)^```$", readme, flags=re.S | re.M) if "ViT(" in b
    ]
    namespace: dict = {"__name__": "readme"}
    exec(compile(block, "README.md", "exec"), namespace)  # asserts the function is preserved
    big = namespace["big"]
    assert (big.embed_dim, big.num_heads, big.mlp_dim, big.depth, big.head_dim) == (32, 3, 48, 4, 8)
    assert namespace["wide_vars"]["params"]["block0"]["query"]["kernel"].shape == (16, 4, 8)
    report = namespace["report"]
    assert not report.function_preserving and f"{report.reused_fraction:.0%}" == "100%"


def test_param_count_sizes_a_vit_from_shapes():
    from jnet2net.models.size import param_count

    for depth in (1, 2, 5):
        model = MODEL.clone(depth=depth)
        variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *IMAGE)))
        expected = sum(x.size for x in jax.tree.leaves(variables["params"]))
        assert param_count(model, IMAGE) == expected


@pytest.mark.slow
def test_cli_trains_a_vit_preset_and_evaluates_its_checkpoint(tmp_path, capsys):
    from jnet2net import cli

    run = str(tmp_path / "vit")
    tiny = '{"embed_dim": 8, "depth": 1, "num_heads": 2, "mlp_dim": 8}'
    args = ["train", "--arch", "vit_tiny", "--arch-json", tiny, "--train-subset", "64"]
    args += ["--epochs", "1", "--batch-size", "32", "--optimizer", "adamw", "--lr", "0.001"]
    assert cli.main([*args, "--no-progress", "--out", run]) == 0
    out = capsys.readouterr().out
    assert "new network: ViT(patch_size=4, embed_dim=8, depth=1, num_heads=2, mlp_dim=8)" in out
    assert cli.main(["eval", "--from", run, "--json"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 <= record["accuracy"] <= 1.0


@pytest.mark.slow
def test_frozen_variables_grow_into_frozen_variables():
    from flax.core import FrozenDict, freeze

    variables = freeze(random_variables(MODEL, 11))
    wide_model, wide = jnet2net.widen(
        MODEL, variables, key=jax.random.key(0), embed_dim=16, mlp_dim=14, noise="fresh"
    )
    deep_model, deep = jnet2net.deepen(wide_model, wide, depth=3, key=jax.random.key(1))
    assert isinstance(wide, FrozenDict) and isinstance(deep, FrozenDict)
    assert_exact(MODEL, variables, deep_model, deep)
