"""The README's "Grow your own module" example, verbatim.

Everything between the markers is the README code block; the tests below check what it claims.
"""

# --- README code block begins ---
import flax.linen as nn
import jax

import jnet2net


class MLP(nn.Module):
    widths: tuple[int, ...] = (8, 8)

    @nn.compact
    def __call__(self, x):
        for i, width in enumerate(self.widths):  # explicit names: new layers shift no name
            x = nn.relu(nn.Dense(width, name=f"hidden{i}")(x))
        return nn.Dense(3, name="out")(x)


model = MLP()
x = jax.random.normal(jax.random.key(0), (16, 4))
variables = model.init(jax.random.key(1), x)

# Which axes share units, found by tracing the computation (a layer's outputs, next inputs).
print([group.name for group in jnet2net.couplings(model, variables, x)])  # ['hidden0', 'hidden1']

# Net2WiderNet to the same class with more units; exactness is checked on random inputs.
wide, wide_vars = jnet2net.widen(
    model, variables, key=jax.random.key(2), target=MLP(widths=(12, 16)), example_input=x
)
# Net2DeeperNet: the new layer starts as the identity (a ReLU layer after a ReLU).
deep, deep_vars = jnet2net.deepen(
    wide, wide_vars, key=jax.random.key(3), target=MLP(widths=(12, 16, 16)), example_input=x
)
jnet2net.assert_function_preserved(model, variables, deep, deep_vars, x[None], rtol=1e-5)
# --- README code block ends ---

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402


def test_the_groups_are_the_two_hidden_layers():
    groups = jnet2net.couplings(model, variables, x)
    assert [g.name for g in groups] == ["hidden0", "hidden1"]


def test_the_grown_mlp_has_the_target_shapes_and_function():
    assert deep == MLP(widths=(12, 16, 16))
    assert deep_vars["params"]["hidden1"]["kernel"].shape == (12, 16)
    np.testing.assert_array_equal(deep_vars["params"]["hidden2"]["kernel"], np.eye(16))
    other = jax.random.normal(jax.random.key(9), (2, 32, 4))
    assert float(jnp.max(jnet2net.output_error(model, variables, deep, deep_vars, other))) < 1e-5
