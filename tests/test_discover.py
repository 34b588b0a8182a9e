"""jnet2net.couplings: unit groups discovered from the jaxpr match the hand-written ones."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnet2net
from jnet2net.models import VGG, ResNet
from jnet2net.variables import flatten


def member_sets(groups, variables):
    """Each group as a frozenset of ``(path, axis >= 0, role, flattened)``."""
    flat = flatten(variables)
    return {
        frozenset(
            (m.path, m.axis % np.ndim(flat[m.path]), m.role, m.flattened) for m in group.members
        )
        for group in groups
    }


PRESETS = {
    "vgg_bn_dense_head": (VGG((1, 2), (4, 6), (5,), num_classes=3), 8),
    "vgg_bias_no_hidden": (VGG((2, 1), (3, 5), (), num_classes=2, batch_norm=False), 8),
    "resnet_basic_cifar": (ResNet((1, 2), (4, 6), num_classes=3), 8),
    "resnet_bottleneck_cifar": (ResNet((2, 1), (8, 12), block="bottleneck", num_classes=2), 8),
    "resnet_basic_imagenet_stem_width": (
        ResNet((1, 1), (4, 6), stem="imagenet", stem_width=3, inner_widths=(2, 5)),
        16,
    ),
    "resnet_bottleneck_imagenet": (
        ResNet((1, 2), (8, 12), block="bottleneck", stem="imagenet", num_classes=2),
        16,
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("train", [False, True])
def test_discovery_agrees_with_every_presets_hand_written_groups(name, train):
    model, size = PRESETS[name]
    x = jnp.zeros((2, size, size, 3))
    variables = model.init(jax.random.key(0), x)
    kwargs = {"train": True, "mutable": ["batch_stats"]} if train else {}
    groups = jnet2net.couplings(model, variables, x, **kwargs)
    assert all(g.field is None and not g.uniform_only for g in groups)
    assert len({g.name for g in groups}) == len(groups)
    assert member_sets(groups, variables) == member_sets(model.unit_groups(), variables)


class MLP(nn.Module):
    widths: tuple[int, ...] = (8, 6)
    named: bool = False

    @nn.compact
    def __call__(self, x):
        for i, width in enumerate(self.widths):
            x = nn.relu(nn.Dense(width, name=f"hidden{i}" if self.named else None)(x))
        return nn.Dense(3, name="out" if self.named else None)(x)


@pytest.mark.parametrize("named", [False, True])
def test_mlp_groups_are_named_after_their_producers(named):
    model = MLP(named=named)
    x = jnp.zeros((2, 4))
    variables = model.init(jax.random.key(0), x)
    groups = jnet2net.couplings(model, variables, x)
    names = ("hidden0", "hidden1", "out") if named else ("Dense_0", "Dense_1", "Dense_2")
    assert [g.name for g in groups] == list(names[:2])
    p = [("params", n) for n in names]
    assert member_sets(groups, variables) == {
        frozenset(
            {
                ((*p[i], "kernel"), 1, "producer", False),
                ((*p[i], "bias"), 0, "producer", False),
                ((*p[i + 1], "kernel"), 0, "consumer", False),
            }
        )
        for i in range(2)
    }


class ResidualCNN(nn.Module):
    """stem conv -> BN -> relu, one residual block (conv-BN-relu-conv-BN + identity), a
    global mean and a dense head."""

    width: int = 4
    inner: int = 6

    @nn.compact
    def __call__(self, x, train=False):
        norm = lambda name: nn.BatchNorm(use_running_average=not train, name=name)  # noqa: E731
        x = nn.relu(norm("stem_bn")(nn.Conv(self.width, (3, 3), name="stem")(x)))
        y = nn.relu(norm("bn_a")(nn.Conv(self.inner, (3, 3), use_bias=False, name="conv_a")(x)))
        y = norm("bn_b")(nn.Conv(self.width, (3, 3), use_bias=False, name="conv_b")(y))
        x = nn.relu(x + y)
        return nn.Dense(3, name="head")(jnp.mean(x, axis=(1, 2)))


def bn(layer):
    return {
        (("params", layer, "scale"), 0, "producer", False),
        (("params", layer, "bias"), 0, "producer", False),
        (("batch_stats", layer, "mean"), 0, "producer", False),
        (("batch_stats", layer, "var"), 0, "producer", False),
    }


@pytest.mark.parametrize("train", [False, True])
def test_residual_cnn_stream_spans_stem_block_output_and_head(train):
    model = ResidualCNN()
    x = jnp.zeros((2, 8, 8, 3))
    variables = model.init(jax.random.key(0), x)
    kwargs = {"train": True, "mutable": ["batch_stats"]} if train else {}
    groups = jnet2net.couplings(model, variables, x, **kwargs)
    assert [g.name for g in groups] == ["stem", "conv_a"]
    stream = {
        (("params", "stem", "kernel"), 3, "producer", False),
        (("params", "stem", "bias"), 0, "producer", False),
        *bn("stem_bn"),
        (("params", "conv_a", "kernel"), 2, "consumer", False),
        (("params", "conv_b", "kernel"), 3, "producer", False),
        *bn("bn_b"),
        (("params", "head", "kernel"), 0, "consumer", False),
    }
    inner = {
        (("params", "conv_a", "kernel"), 3, "producer", False),
        *bn("bn_a"),
        (("params", "conv_b", "kernel"), 2, "consumer", False),
    }
    assert member_sets(groups, variables) == {frozenset(stream), frozenset(inner)}


class ConvFlattenDense(nn.Module):
    width: int = 4
    hidden: int = 5

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(self.width, (3, 3), strides=(2, 2))(x))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(self.hidden)(x))
        return nn.Dense(2)(x)


def test_conv_flatten_dense_marks_the_consumer_flattened():
    model = ConvFlattenDense()
    x = jnp.zeros((2, 8, 8, 3))
    variables = model.init(jax.random.key(0), x)
    groups = jnet2net.couplings(model, variables, x)
    assert member_sets(groups, variables) == {
        frozenset(
            {
                (("params", "Conv_0", "kernel"), 3, "producer", False),
                (("params", "Conv_0", "bias"), 0, "producer", False),
                (("params", "Dense_0", "kernel"), 0, "consumer", True),
            }
        ),
        frozenset(
            {
                (("params", "Dense_0", "kernel"), 1, "producer", False),
                (("params", "Dense_0", "bias"), 0, "producer", False),
                (("params", "Dense_1", "kernel"), 0, "consumer", False),
            }
        ),
    }


class NormedMLP(nn.Module):
    width: int = 4

    @nn.compact
    def __call__(self, x):
        x = nn.gelu(nn.LayerNorm()(nn.Dense(self.width)(x)))
        return nn.Dense(2)(x)


def test_layer_norm_marks_the_group_uniform_only():
    model = NormedMLP()
    x = jnp.zeros((2, 3))
    variables = model.init(jax.random.key(0), x)
    (group,) = jnet2net.couplings(model, variables, x)
    assert group.uniform_only and group.name == "Dense_0"
    assert {(m.path[1:], m.role) for m in group.members} == {
        (("Dense_0", "kernel"), "producer"),
        (("Dense_0", "bias"), "producer"),
        (("LayerNorm_0", "scale"), "producer"),
        (("LayerNorm_0", "bias"), "producer"),
        (("Dense_1", "kernel"), "consumer"),
    }


class Lambda(nn.Module):
    """Dense(4) -> ``fn`` -> Dense(2)."""

    fn: object

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(4)(x)
        return nn.Dense(2)(self.fn(h))


def test_softmax_over_features_is_refused_naming_the_op_and_the_layer():
    model = Lambda(lambda h: jax.nn.softmax(h, axis=-1))
    x = jnp.zeros((2, 3))
    variables = model.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"cannot grow through div.*sum over a unit axis.*Dense_0"):
        jnet2net.couplings(model, variables, x)


def test_a_channels_first_flatten_is_refused():
    class ChannelsFirst(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(4, (3, 3))(x).transpose(0, 3, 1, 2)
            return nn.Dense(2)(x.reshape(x.shape[0], -1))

    x = jnp.zeros((2, 4, 4, 3))
    variables = ChannelsFirst().init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"reshape.*\(2, 4, 4, 4\) -> \(2, 64\).*Conv_0"):
        jnet2net.couplings(ChannelsFirst(), variables, x)


def test_units_added_to_the_input_or_reaching_the_output_are_left_out():
    class InputResidual(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.relu(nn.Dense(5, name="inner")(x))
            x = x + nn.Dense(x.shape[-1], name="back")(h)
            return nn.Dense(2, name="out")(x)

    x = jnp.zeros((2, 3))
    variables = InputResidual().init(jax.random.key(0), x)
    (group,) = jnet2net.couplings(InputResidual(), variables, x)
    assert group.name == "inner"


def test_a_mixing_op_on_units_is_refused_with_its_name():
    model = Lambda(lambda h: jnp.cumsum(h, axis=-1))
    x = jnp.zeros((2, 3))
    variables = model.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"cannot grow through cumsum.*units of Dense_0"):
        jnet2net.couplings(model, variables, x)


def test_a_bad_example_input_is_a_clear_error():
    model = MLP()
    variables = model.init(jax.random.key(0), jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"MLP.apply does not run on example_input \(2, 7\)"):
        jnet2net.couplings(model, variables, jnp.zeros((2, 7)))


def one_position_unflattened(groups, variables):
    """``member_sets``, with a flattened axis of one position (a 1x1 map) counted as plain."""
    flat = flatten(variables)
    out = set()
    for group in groups:
        units = next(np.shape(flat[m.path])[m.axis] for m in group.members if not m.flattened)
        out.add(
            frozenset(
                (
                    m.path,
                    m.axis % np.ndim(flat[m.path]),
                    m.role,
                    m.flattened and np.shape(flat[m.path])[m.axis] != units,
                )
                for m in group.members
            )
        )
    return out


@pytest.mark.parametrize("seed", range(8))
def test_discovery_agrees_on_random_presets_with_one_unit_groups(seed):
    """Widths 1..4, kernel sizes 1/3/5, optional stems and inner widths (test_coupling's)."""
    from test_coupling import random_model  # tests/ is on sys.path

    model = random_model(seed)
    x = jnp.zeros((1, 8, 8, 2))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    groups = jnet2net.couplings(model, variables, x)
    assert one_position_unflattened(groups, variables) == one_position_unflattened(
        model.unit_groups(), variables
    )


class Tokens(nn.Module):
    """Token ids -> embedding -> Dense -> mean over the sequence -> Dense."""

    dim: int = 4
    hidden: int = 5

    @nn.compact
    def __call__(self, ids):
        x = nn.Embed(7, self.dim, name="embed")(ids)
        x = nn.relu(nn.Dense(self.hidden, name="mix")(x))
        return nn.Dense(3, name="out")(jnp.mean(x, axis=1))


def test_an_embedding_table_produces_units():
    ids = jnp.zeros((2, 5), jnp.int32)
    variables = Tokens().init(jax.random.key(0), ids)
    groups = jnet2net.couplings(Tokens(), variables, ids)
    assert [g.name for g in groups] == ["embed", "mix"]
    assert member_sets(groups[:1], variables) == {
        frozenset(
            {
                (("params", "embed", "embedding"), 1, "producer", False),
                (("params", "mix", "kernel"), 0, "consumer", False),
            }
        )
    }


@jax.custom_vjp
def _clipped_grad_identity(x):
    return x


_clipped_grad_identity.defvjp(lambda x: (x, None), lambda _, g: (jnp.clip(g, -1, 1),))


class Wrapped(nn.Module):
    """Units through jit, custom_vjp, checkpoint, avg_pool, transpose and a slice."""

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), name="conv")(x)
        x = jax.jit(nn.gelu)(x)
        x = _clipped_grad_identity(x)
        x = jax.checkpoint(lambda h: nn.avg_pool(h, (2, 2), (2, 2)))(x)
        x = jnp.transpose(x, (0, 2, 1, 3))[:, 1:]
        return nn.Dense(2, name="out")(jnp.max(x, axis=(1, 2)))


def test_units_pass_through_calls_pools_transposes_and_slices():
    x = jnp.zeros((2, 8, 8, 3))
    variables = Wrapped().init(jax.random.key(0), x)
    (group,) = jnet2net.couplings(Wrapped(), variables, x)
    assert member_sets([group], variables) == {
        frozenset(
            {
                (("params", "conv", "kernel"), 3, "producer", False),
                (("params", "conv", "bias"), 0, "producer", False),
                (("params", "out", "kernel"), 0, "consumer", False),
            }
        )
    }
