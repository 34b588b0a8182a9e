"""VGG and ResNet: presets, architecture configs, layer splits, dtypes and unit groups."""

import json
import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnet2net
from jnet2net import VGG, ResNet, model_config, model_from_config, preset
from jnet2net.models import PRESETS
from jnet2net.variables import flatten


def _shapes(model, image=(32, 32, 3)):
    """Flat ``{path: ShapeDtypeStruct}`` of ``model.init`` (traced, nothing computed)."""
    return flatten(jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *image))))


def _conv_kernels(shapes):
    return [p for p, s in shapes.items() if p[-1] == "kernel" and len(s.shape) == 4]


def _param_count(shapes):
    return sum(math.prod(s.shape) for p, s in shapes.items() if p[0] == "params")


# --- presets -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "blocks", "convs"),
    [
        ("resnet18", 8, 1 + 8 * 2 + 3),
        ("resnet34", 16, 1 + 16 * 2 + 3),
        ("resnet50", 16, 1 + 16 * 3 + 4),
        ("resnet101", 33, 1 + 33 * 3 + 4),
        ("resnet20", 9, 1 + 9 * 2 + 2),
        ("resnet110", 54, 1 + 54 * 2 + 2),
    ],
)
def test_resnet_presets_have_the_right_blocks_and_convs(name, blocks, convs):
    model = preset(name)
    assert len(model.block_names()) == blocks
    assert model.layer_names()[0] == "stem" and model.layer_names()[-1] == "head"
    assert len(model.layer_names()) == blocks + 2
    assert len(_conv_kernels(_shapes(model))) == convs  # incl. projection shortcuts


def test_resnet50_and_resnet18_match_the_reference_parameter_counts():
    # torchvision's resnet50 / resnet18 (ImageNet stem, 1000 classes)
    assert _param_count(_shapes(preset("resnet50", stem="imagenet", num_classes=1000))) == (
        25_557_032
    )
    assert _param_count(_shapes(preset("resnet18", stem="imagenet", num_classes=1000))) == (
        11_689_512
    )


@pytest.mark.parametrize(
    ("name", "convs"), [("vgg11", 8), ("vgg13", 10), ("vgg16", 13), ("vgg19", 16)]
)
def test_vgg_presets_have_the_right_number_of_convs(name, convs):
    model = preset(name)
    shapes = _shapes(model)
    assert len(_conv_kernels(shapes)) == convs
    assert model.layer_names() == (*(n for _, n in model.conv_layer_names()), "head")
    assert shapes[("params", "head", "kernel")].shape == (512, 10)  # 32x32 -> 1x1x512


def test_presets_take_overrides_and_reject_unknown_names():
    model = preset("vgg11", stage_widths=(8, 8, 16, 16, 16), num_classes=3)
    assert model.stage_widths == (8, 8, 16, 16, 16) and model.num_classes == 3
    assert jnet2net.models.resnet50(stem="imagenet").stem == "imagenet"
    assert preset("resnet50").stem_width == 64 and preset("resnet50").block == "bottleneck"
    with pytest.raises(ValueError, match=r"unknown architecture 'resnet51'; presets: .*resnet50"):
        preset("resnet51")
    assert set(PRESETS) >= {"vgg16", "resnet20", "resnet152"}


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: VGG((1, 2), (4,)), ValueError, r"VGG.stage_widths must have 2 entries, got 1"),
        (lambda: VGG((1, 0), (4, 4)), ValueError, r"VGG.stage_depths must be positive"),
        (lambda: VGG([1], [4]), TypeError, r"VGG.stage_depths must be a tuple of ints"),
        (lambda: VGG((1,), (4,), (0,)), ValueError, r"VGG.hidden_widths must be positive"),
        (lambda: ResNet((1,), (4,), block="wide"), ValueError, r"ResNet.block must be 'basic'"),
        (lambda: ResNet((1,), (4,), stem="tiny"), ValueError, r"ResNet.stem must be 'cifar'"),
        (lambda: ResNet((1,), (4,), stem_width=0), ValueError, r"ResNet.stem_width must be"),
        (lambda: ResNet((1,), (4,), inner_widths=(1, 2)), ValueError, r"inner_widths must have 1"),
    ],
)
def test_models_reject_bad_fields(build, error, match):
    with pytest.raises(error, match=match):
        build()


# --- configs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model",
    [
        preset("vgg16"),
        VGG((1, 2), (4, 6), (5, 7), num_classes=3, batch_norm=False, kernel_size=5),
        preset("resnet50", stem="imagenet"),
        ResNet((2, 1), (4, 8), inner_widths=(3, 5), stem_width=6, dtype=jnp.bfloat16),
    ],
    ids=["vgg16", "vgg-dense-head", "resnet50", "resnet-bf16"],
)
def test_model_config_round_trips_through_json(model):
    config = json.loads(json.dumps(model_config(model)))
    assert config["family"] == type(model).__name__
    rebuilt = model_from_config(config)
    assert rebuilt == model
    assert hash(rebuilt) == hash(model)  # equal modules are the same jit static argument
    assert model_config(rebuilt) == config


def test_model_from_config_rejects_bad_configs():
    with pytest.raises(
        ValueError, match=r"needs 'family' in \['ResNet', 'VGG', 'ViT'\], got 'MLP'"
    ):
        model_from_config({"family": "MLP"})
    with pytest.raises(ValueError, match=r"unknown VGG fields \['depth'\]"):
        model_from_config({"family": "VGG", "depth": 3})
    with pytest.raises(
        TypeError, match=r"model_config knows \['ResNet', 'VGG', 'ViT'\], got Dense"
    ):
        model_config(nn.Dense(3))


# --- start / stop splits, dtypes ----------------------------------------------------------

SPLIT_MODELS = [
    VGG((1, 2), (3, 4), (5,), num_classes=3),
    ResNet((1, 2), (4, 6), block="bottleneck", stem="imagenet", stem_width=3, num_classes=3),
]


@pytest.mark.slow
@pytest.mark.parametrize("model", SPLIT_MODELS, ids=["vgg", "resnet"])
def test_start_stop_split_gives_the_full_logits(model):
    x = np.random.default_rng(0).standard_normal((2, 16, 16, 3)).astype(np.float32)
    variables = model.init(jax.random.key(0), x)
    names = model.layer_names()

    @jax.jit
    def splits(variables, x):
        full = model.apply(variables, x)
        parts = []
        for i in range(len(names) + 1):
            prefix = model.apply(variables, x, stop=i) if i else x
            parts.append(model.apply(variables, prefix, start=i) if i < len(names) else prefix)
        return full, parts

    full, parts = splits(variables, x)
    chex.assert_shape(full, (2, 3))
    chex.assert_type(full, jnp.float32)
    for part in parts:
        chex.assert_trees_all_close(part, full, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    "model",
    [VGG((1, 1), (3, 4), (5,), dtype=jnp.bfloat16), ResNet((1,), (4,), dtype=jnp.bfloat16)],
    ids=["vgg", "resnet"],
)
def test_bf16_models_keep_float32_params_and_logits(model):
    x = jnp.ones((2, 8, 8, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    dtypes = {leaf.dtype for leaf in jax.tree.leaves(variables)}
    assert dtypes == {jnp.dtype(jnp.float32)}
    features = jax.eval_shape(lambda v: model.apply(v, x, stop=1), variables)
    logits = jax.eval_shape(lambda v: model.apply(v, x), variables)
    assert features.dtype == jnp.bfloat16
    assert logits.dtype == jnp.float32
    assert model.dtype == jnp.bfloat16


def test_models_are_hashable_jit_static_arguments_and_outputs():
    model = SPLIT_MODELS[0]
    assert hash(model) == hash(model.clone()) and model == model.clone()
    assert jax.tree.leaves(model) == []  # a static pytree: no leaves

    @jax.jit
    def wider(m):
        return m.clone(stage_widths=(5, 6))

    assert wider(model).stage_widths == (5, 6)


# --- unit groups and example inputs --------------------------------------------------------

GROUP_MODELS = [
    VGG((1, 2), (3, 4), (5, 6), num_classes=3),
    VGG((2,), (3,), num_classes=3, batch_norm=False),
    ResNet((2, 1), (4, 6), num_classes=3),
    ResNet((1, 2), (8, 8), block="bottleneck", stem="imagenet", stem_width=3, num_classes=3),
]


@pytest.mark.parametrize("model", GROUP_MODELS, ids=["vgg", "vgg-nobn", "resnet", "bottleneck"])
def test_unit_groups_cover_every_channel_axis_once(model):
    shapes = _shapes(model, (16, 16, 3))
    produced, consumed = {}, {}
    for group in model.unit_groups():
        width = model.width_of(group.field)
        for member in group.members:
            assert member.path in shapes, (group.name, member.path)
            size = shapes[member.path].shape[member.axis]
            assert size % width == 0 if member.flattened else size == width, (group.name, member)
            seen = produced if member.role == "producer" else consumed
            assert member.path not in seen, (member.path, seen.get(member.path), group.name)
            seen[member.path] = group.name
    first_layer = "stem" if isinstance(model, ResNet) else "stage0_layer0"
    for path in shapes:
        if path[1] != "head":
            assert path in produced, path  # every unit-indexed leaf grows with some group
        if path[-1] == "kernel" and path != ("params", first_layer, "conv", "kernel"):
            assert path in consumed, path  # every kernel but the first reads some group


@pytest.mark.parametrize("model", GROUP_MODELS, ids=["vgg", "vgg-nobn", "resnet", "bottleneck"])
def test_example_input_fits_the_variables(model):
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 2)))
    example = model.example_input(variables)
    assert example.shape[-1] == 2
    if isinstance(model, VGG):
        assert example.shape == (1, 16, 16, 2)
    jnet2net.check_variables(model, variables)


@pytest.mark.parametrize(("image", "expected"), [((8, 24, 3), (8, 24)), ((24, 8, 3), (8, 24))])
def test_vgg_example_input_fits_rectangular_feature_maps(image, expected):
    model = VGG((1, 1, 1), (3, 4, 5), num_classes=3)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *image)))
    assert model.example_input(variables).shape == (1, *expected, 3)
    jnet2net.check_variables(model, variables)


def test_example_input_rejects_foreign_variables():
    with pytest.raises(ValueError, match=r"variables do not hold params/stem/conv/kernel"):
        GROUP_MODELS[2].example_input({"params": {}})
    with pytest.raises(ValueError, match=r"params/stage0_layer0/conv/kernel and params/hidden0"):
        GROUP_MODELS[0].example_input({"params": {}})
