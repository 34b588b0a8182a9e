"""jnet2net.couplings on attention: whole heads grow, head_dim of query/key does not, the
residual stream under LayerNorm is uniform_only, and the ViT's groups match grow_vit's."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_discover import member_sets  # tests/ is on sys.path

import jnet2net
from jnet2net.discover import discover
from jnet2net.models import ViT


class Attention(nn.Module):
    """A pre-LayerNorm transformer block on ``(n, tokens, features)`` inputs, then a mean
    over tokens and a head: the smallest module with attention, written out."""

    dim: int = 4
    heads: int = 2
    head_dim: int = 3
    mlp: int = 5

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Dense(self.dim, name="embed")(x)
        y = nn.LayerNorm(name="norm1")(x)
        shape = (self.heads, self.head_dim)
        q = nn.DenseGeneral(shape, name="query")(y)
        k = nn.DenseGeneral(shape, name="key")(y)
        v = nn.DenseGeneral(shape, name="value")(y)
        logits = jnp.einsum("nqhd,nkhd->nhqk", q, k) / np.sqrt(self.head_dim)
        attended = jnp.einsum("nhqk,nkhd->nqhd", jax.nn.softmax(logits, axis=-1), v)
        x = x + nn.DenseGeneral(self.dim, axis=(-2, -1), name="out")(attended)
        y = nn.gelu(nn.Dense(self.mlp, name="mlp_in")(nn.LayerNorm(name="norm2")(x)))
        x = x + nn.Dense(self.dim, name="mlp_out")(y)
        return nn.Dense(2, name="head")(jnp.mean(x, axis=1))


X = jnp.zeros((2, 3, 5))


def p(*path):
    return ("params", *path)


def test_attention_heads_mlp_value_width_and_a_uniform_stream():
    model = Attention()
    variables = model.init(jax.random.key(0), X)
    groups = jnet2net.couplings(model, variables, X)
    by_name = {g.name: g for g in groups}
    assert sorted(by_name) == ["embed", "mlp_in", "query", "value"]
    assert [n for n, g in by_name.items() if g.uniform_only] == ["embed"]
    heads = {(p(n, "kernel"), 1, "producer", False) for n in ("query", "key", "value")}
    heads |= {(p(n, "bias"), 0, "producer", False) for n in ("query", "key", "value")}
    heads.add((p("out", "kernel"), 0, "consumer", False))
    value_width = {
        (p("value", "kernel"), 2, "producer", False),
        (p("value", "bias"), 1, "producer", False),
        (p("out", "kernel"), 1, "consumer", False),
    }
    mlp = {
        (p("mlp_in", "kernel"), 1, "producer", False),
        (p("mlp_in", "bias"), 0, "producer", False),
        (p("mlp_out", "kernel"), 0, "consumer", False),
    }
    sets = member_sets(groups, variables)
    assert {frozenset(heads), frozenset(value_width), frozenset(mlp)} <= sets
    stream = member_sets([by_name["embed"]], variables).pop()
    assert (p("out", "kernel"), 2, "producer", False) in stream
    assert (p("query", "kernel"), 0, "consumer", False) in stream
    assert (p("norm2", "scale"), 0, "producer", False) in stream


def test_query_key_width_is_fixed_with_the_reason():
    model = Attention()
    variables = model.init(jax.random.key(0), X)
    found = discover(model, variables, X)
    assert found.groups == jnet2net.couplings(model, variables, X)
    (width, reason) = next(
        (g, why) for g, why in found.fixed if g.members[0].path == p("query", "kernel")
    )
    assert "contracted" in reason and "q·k" in reason
    assert member_sets([width], variables) == {
        frozenset(
            {
                (p("query", "kernel"), 2, "producer", False),
                (p("query", "bias"), 1, "producer", False),
                (p("key", "kernel"), 2, "producer", False),
                (p("key", "bias"), 1, "producer", False),
            }
        )
    }


def test_softmax_over_heads_is_refused():
    class HeadSoftmax(Attention):
        @nn.compact
        def __call__(self, x, train=False):
            q = nn.DenseGeneral((self.heads, self.head_dim), name="query")(x)
            k = nn.DenseGeneral((self.heads, self.head_dim), name="key")(x)
            logits = jnp.einsum("nqhd,nkhd->nqkh", q, k)
            return nn.Dense(2)(jax.nn.softmax(logits, axis=-1).mean(axis=(1, 2)))

    variables = HeadSoftmax().init(jax.random.key(0), X)
    with pytest.raises(ValueError, match=r"cannot grow through div.*sum over a unit axis.*query"):
        jnet2net.couplings(HeadSoftmax(), variables, X)


VIT = ViT(patch_size=4, embed_dim=8, depth=2, num_heads=2, mlp_dim=12, num_classes=3)


@pytest.mark.slow  # several seconds on a 2-core machine
@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_vit_discovery_agrees_with_grow_vit(pool):
    model = VIT.clone(pool=pool)
    x = jnp.zeros((1, 8, 8, 3))
    variables = model.init(jax.random.key(0), x)
    groups = jnet2net.couplings(model, variables, x)
    found, hand = member_sets(groups, variables), member_sets(model.unit_groups(), variables)
    assert hand <= found
    # The one kind of group grow_vit does not grow on its own: each block's value width
    # (head_dim of value), which the ViT ties to the query/key width by one field.
    extra = [g for g in groups if member_sets([g], variables) <= found - hand]
    assert sorted(g.name for g in extra) == ["block0/value", "block1/value"]
    uniform = [g.name for g in groups if g.uniform_only]
    assert uniform == ["patch_embed"]
    (stream,) = [g for g in groups if g.uniform_only]
    (embed,) = [g for g in model.unit_groups() if g.name == "embed"]
    assert member_sets([stream], variables) == member_sets([embed], variables)


@pytest.mark.slow
@pytest.mark.parametrize("noise", ["split", "none"])
def test_the_attention_block_widens_exactly_by_heads_mlp_and_a_multiple_stream(noise):
    from test_grow_any import randomized  # tests/ is on sys.path

    model, target = Attention(), Attention(dim=8, heads=3, mlp=7)
    x = jax.random.normal(jax.random.key(1), (2, 3, 5))
    variables = randomized(model.init(jax.random.key(0), x))
    new_model, new_vars = jnet2net.widen(
        model, variables, key=jax.random.key(2), target=target, example_input=x, noise=noise
    )
    assert new_vars["params"]["query"]["kernel"].shape == (8, 3, 3)
    xs = jax.random.normal(jax.random.key(3), (2, 2, 3, 5))
    assert float(jnp.max(jnet2net.output_error(model, variables, new_model, new_vars, xs))) < 1e-5
    with pytest.raises(ValueError, match=r"query/kernel axis 2: 3 -> 4.*q·k over head_dim"):
        jnet2net.widen(
            model, variables, key=jax.random.key(2), target=Attention(head_dim=4), example_input=x
        )
