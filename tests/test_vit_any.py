"""A ViT through the generic engine: widen(target=) and deepen(target=) are exact and agree
with the keyword forms (grow_vit)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_vit import MODEL, assert_exact, random_variables  # tests/ is on sys.path

import jnet2net
from jnet2net.variables import flatten

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

KEY = jax.random.key(7)


@pytest.mark.slow
@pytest.mark.parametrize(
    "sizes, noise",
    [
        ({"embed_dim": 16, "mlp_dim": 20, "num_heads": 3, "head_dim": 4}, "split"),
        ({"embed_dim": 16, "mlp_dim": 20, "num_heads": 3, "head_dim": 4}, "none"),
        ({"mlp_dim": 20, "num_heads": 3, "head_dim": 4}, "fresh"),
    ],
)
def test_widen_to_a_target_vit_is_exact(sizes, noise):
    variables = random_variables(MODEL)
    target = MODEL.clone(**sizes)
    new_model, new_vars = jnet2net.widen(MODEL, variables, key=KEY, target=target, noise=noise)
    assert new_model is target
    assert_exact(MODEL, variables, new_model, new_vars)


def test_widen_by_target_agrees_with_the_keyword_form():
    variables = random_variables(MODEL)
    # The stream alone grows by one uniform mapping: both forms make the same params.
    _, by_target = jnet2net.widen(
        MODEL, variables, key=KEY, target=MODEL.clone(embed_dim=16, head_dim=4), noise="none"
    )
    _, by_keyword = jnet2net.widen(MODEL, variables, key=KEY, embed_dim=16, noise="none")
    jax.tree.map(np.testing.assert_array_equal, by_target, by_keyword)
    # Heads and MLP units draw their mappings from other keys: same shapes, both exact.
    sizes = {"embed_dim": 16, "mlp_dim": 20, "num_heads": 3}
    target_model, by_target = jnet2net.widen(
        MODEL, variables, key=KEY, target=MODEL.clone(**sizes, head_dim=4)
    )
    keyword_model, by_keyword = jnet2net.widen(MODEL, variables, key=KEY, **sizes)
    assert target_model == keyword_model
    assert jax.tree.map(jnp.shape, by_target) == jax.tree.map(jnp.shape, by_keyword)
    assert_exact(MODEL, variables, keyword_model, by_keyword)


def test_a_target_with_another_head_dim_is_refused_naming_query_and_key():
    variables = random_variables(MODEL)
    with pytest.raises(ValueError, match=r"query/kernel axis 2: 4 -> 8.*contracted.*q·k"):
        jnet2net.widen(MODEL, variables, key=KEY, target=MODEL.clone(head_dim=8))


@pytest.mark.slow
def test_deepen_to_a_target_vit_is_exact_and_equals_the_keyword_form():
    variables = random_variables(MODEL)
    target = MODEL.clone(depth=4)
    new_model, by_target = jnet2net.deepen(MODEL, variables, key=KEY, target=target)
    assert new_model is target
    assert_exact(MODEL, variables, new_model, by_target)
    new = flatten(by_target)
    for layer in ("out", "mlp_out"):
        assert not np.any(new[("params", "block3", layer, "kernel")])
    assert np.any(new[("params", "block3", "query", "kernel")])
    _, by_keyword = jnet2net.deepen(MODEL, variables, key=KEY, depth=4)
    jax.tree.map(np.testing.assert_array_equal, by_target, by_keyword)


@pytest.mark.slow
def test_deepen_to_a_target_under_jit_equals_eager():
    """Traced variables: the rules are chosen on stand-ins, then applied to the real ones."""
    variables = random_variables(MODEL)
    target = MODEL.clone(depth=3)

    def deeper(variables, key):
        return jnet2net.deepen(MODEL, variables, key=key, target=target)[1]

    jitted = jax.jit(deeper)(variables, KEY)
    jax.tree.map(np.testing.assert_array_equal, jitted, deeper(variables, KEY))
