"""The README's "Growing your own Flax network with jnet2net.surgery" example, verbatim.

Everything between the markers is the README code block; the tests below check what it claims.
"""

# --- README code block begins ---
import flax.linen as nn
import jax
import jax.numpy as jnp

from jnet2net import surgery


class MLP(nn.Module):
    """Your own network: ``depth`` hidden ReLU layers of ``hidden`` units, then 3 outputs."""

    hidden: int
    depth: int = 1

    @nn.compact
    def __call__(self, x):
        for i in range(self.depth):
            x = nn.relu(nn.Dense(self.hidden, name=f"hidden{i}")(x))
        return nn.Dense(3, name="out")(x)


model = MLP(hidden=8)
x = jax.random.normal(jax.random.key(0), (16, 4))
params = model.init(jax.random.key(1), x)["params"]

# Net2WiderNet: 8 -> 12 hidden units. New unit j copies old unit g[j]; the consumer ("out")
# splits each old unit's outgoing weights among its copies, with zero-sum noise so the
# copies differ (symmetry broken) while the function stays exactly the same.
map_key, noise_key = jax.random.split(jax.random.key(2))
g = surgery.random_mapping(map_key, 8, 12)  # (12,): g[:8] == arange(8)
counts = surgery.replication_counts(g, 8)  # (8,): copies of each old unit
wide_model = model.clone(hidden=12)
wide_params = {
    "hidden0": {  # producer: gather the output axis
        "kernel": surgery.replicate(params["hidden0"]["kernel"], g, axis=1),
        "bias": surgery.replicate(params["hidden0"]["bias"], g, axis=0),
    },
    "out": {  # consumer: gather the input axis and split among replicas
        "kernel": surgery.split_among_replicas(
            params["out"]["kernel"], g, counts, axis=0, key=noise_key, noise_scale=0.1
        ),
        "bias": params["out"]["bias"],
    },
}

# Net2DeeperNet: insert hidden1 = relu(identity @ h + 0), which is h because h >= 0.
deep_model = wide_model.clone(depth=2)
deep_params = {
    **wide_params,
    "hidden1": {"kernel": surgery.identity_dense_kernel(12), "bias": jnp.zeros(12)},
}

before = model.apply({"params": params}, x)
after = deep_model.apply({"params": deep_params}, x)
assert jnp.max(jnp.abs(after - before)) <= 1e-5 * jnp.max(jnp.abs(before))
# --- README code block ends ---

import chex  # noqa: E402
import numpy as np  # noqa: E402


def test_the_grown_mlp_computes_the_same_function():
    chex.assert_shape(after, (16, 3))
    chex.assert_trees_all_close(after, before, atol=1e-5, rtol=1e-5)
    other = jax.random.normal(jax.random.key(9), (32, 4))
    chex.assert_trees_all_close(
        deep_model.apply({"params": deep_params}, other),
        model.apply({"params": params}, other),
        atol=1e-5,
        rtol=1e-5,
    )


def test_the_widened_layer_has_replicas_that_differ_downstream():
    kernel = np.asarray(wide_params["out"]["kernel"])
    chex.assert_shape(kernel, (12, 3))
    g_np = np.asarray(g)
    np.testing.assert_array_equal(g_np[:8], np.arange(8))
    np.testing.assert_array_equal(np.asarray(counts), np.bincount(g_np, minlength=8))
    for j in range(8, 12):  # copies share the producer weights but not the outgoing ones
        original = g_np[j]
        np.testing.assert_array_equal(
            wide_params["hidden0"]["kernel"][:, j], wide_params["hidden0"]["kernel"][:, original]
        )
        assert not np.allclose(kernel[j], kernel[original])
    # the outgoing weights of each original unit still sum to what they were
    summed = np.zeros((8, 3), np.float32)
    np.add.at(summed, g_np, kernel)
    np.testing.assert_allclose(summed, params["out"]["kernel"], atol=1e-6)


def test_the_identity_layer_is_really_inserted():
    assert deep_model.depth == 2 and deep_model.hidden == 12
    chex.assert_trees_all_equal(deep_params["hidden1"]["kernel"], jnp.eye(12))
    assert set(deep_params) == {"hidden0", "hidden1", "out"}
