"""Property tests of the array-level surgery ops (hypothesis over shapes, axes and keys)."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jnet2net import surgery

pytestmark = pytest.mark.usefixtures("strict_promotion")

FEW = settings(max_examples=10, deadline=None)
SEEDS = st.integers(0, 2**31 - 1)


# Jitted once per shape: a handful of compiles instead of one per primitive per shape.
_random_mapping = jax.jit(surgery.random_mapping, static_argnums=(1, 2))
_split = jax.jit(surgery.split_among_replicas, static_argnames=("axis", "noise_scale"))
_select = jax.jit(surgery.select_units, static_argnames=("axis", "keep"))


def _mapping(seed: int, old: int, extra: int) -> np.ndarray:
    return np.asarray(_random_mapping(jax.random.key(seed), old, old + extra))


def _normal(seed: int, *shape: int) -> np.ndarray:
    """float32 test data from numpy (no per-shape jax.random compile)."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _per_old_unit_sum(values: np.ndarray, g: np.ndarray, old: int) -> np.ndarray:
    """Sums rows ``values[j]`` into ``out[g[j]]``."""
    out = np.zeros((old, *values.shape[1:]), values.dtype)
    np.add.at(out, g, values)
    return out


def _conv_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Stride-1 'SAME' convolution through flax: x (n, h, w, c_in), kernel (kh, kw, c_in, c_out)."""
    layer = nn.Conv(kernel.shape[-1], kernel.shape[:2], padding="SAME", use_bias=False)
    return layer.apply({"params": {"kernel": kernel}}, x)


# --- random_mapping / replication_counts --------------------------------------------------


@pytest.mark.slow
@FEW
@given(seed=SEEDS, old=st.integers(1, 12), extra=st.integers(0, 12))
def test_random_mapping_keeps_old_units_and_covers_them(seed, old, extra):
    g = _random_mapping(jax.random.key(seed), old, old + extra)
    counts = surgery.replication_counts(g, old)
    chex.assert_shape(g, (old + extra,))
    chex.assert_type(g, jnp.int32)
    g = np.asarray(g)
    np.testing.assert_array_equal(g[:old], np.arange(old))
    assert g.min() >= 0 and g.max() < old
    chex.assert_shape(counts, (old,))
    np.testing.assert_array_equal(counts, np.bincount(g, minlength=old))
    assert int(counts.min()) >= 1


def test_random_mapping_same_key_same_mapping_other_key_other_mapping():
    a = surgery.random_mapping(jax.random.key(3), 4, 40)
    b = surgery.random_mapping(jax.random.key(3), 4, 40)
    c = surgery.random_mapping(jax.random.key(4), 4, 40)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize(
    ("old", "new", "error", "match"),
    [
        (5, 3, ValueError, r"cannot shrink: new_size=3 < old_size=5"),
        (0, 3, ValueError, r"old_size must be positive, got 0"),
        (2, -1, ValueError, r"new_size must be positive, got -1"),
        (2.0, 3, TypeError, r"old_size must be an int, got 2.0"),
        (2, True, TypeError, r"new_size must be an int, got True"),
    ],
)
def test_random_mapping_rejects_bad_sizes(old, new, error, match):
    with pytest.raises(error, match=match):
        surgery.random_mapping(jax.random.key(0), old, new)


# --- replicate ----------------------------------------------------------------------------


@pytest.mark.slow
@FEW
@given(
    seed=SEEDS,
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    data=st.data(),
    extra=st.integers(0, 6),
)
def test_replicate_gathers_units_along_axis(seed, shape, data, extra):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1), label="axis")
    x = _normal(seed, *shape)
    old = shape[axis]
    g = _mapping(seed, old, extra)
    y = surgery.replicate(x, g, axis)
    expected_shape = list(shape)
    expected_shape[axis] = old + extra
    chex.assert_shape(y, expected_shape)
    np.testing.assert_array_equal(y, np.take(x, g, axis=axis))


def test_replicate_rejects_axis_out_of_range():
    with pytest.raises(ValueError, match=r"axis 2 is out of range for array of shape \(3, 4\)"):
        surgery.replicate(jnp.zeros((3, 4)), jnp.zeros((2,), jnp.int32), 2)


# --- split_among_replicas -----------------------------------------------------------------


def _shares(seed: int, old: int, extra: int, noise_scale: float):
    """Split a weight of ones ``(old, 3)`` along axis 0: the result *is* the shares."""
    g = _mapping(seed, old, extra)
    counts = np.bincount(g, minlength=old).astype(np.int32)
    key = jax.random.key(seed + 1) if noise_scale else None
    shares = _split(jnp.ones((old, 3)), g, counts, axis=0, key=key, noise_scale=noise_scale)
    return g, counts, np.asarray(shares)


@pytest.mark.slow
@FEW
@given(
    seed=SEEDS,
    old=st.integers(1, 5),
    extra=st.integers(0, 5),
    noise_scale=st.sampled_from([0.0, 0.1, 0.5]),
)
def test_split_shares_sum_to_one_per_old_unit(seed, old, extra, noise_scale):
    g, _, shares = _shares(seed, old, extra, noise_scale)
    np.testing.assert_allclose(_per_old_unit_sum(shares, g, old), 1.0, atol=1e-6)


@pytest.mark.slow
@FEW
@given(seed=SEEDS, old=st.integers(1, 5), extra=st.integers(1, 5))
def test_split_noise_is_centred_and_spares_single_copies(seed, old, extra):
    g, counts, shares = _shares(seed, old, extra, 0.3)
    relative = shares * counts[g][:, None] - 1.0  # the noise e of each replica
    mean_noise = _per_old_unit_sum(relative, g, old) / counts[:, None]
    np.testing.assert_allclose(mean_noise, 0.0, atol=1e-5)
    single = counts[g] == 1
    np.testing.assert_array_equal(shares[single], 1.0)  # untouched, bitwise
    replicated = counts[g] > 1
    if replicated.any():  # symmetry is broken: replicas get different shares
        assert np.abs(relative[replicated]).max() > 1e-3


@pytest.mark.slow
@FEW
@given(seed=SEEDS, old=st.integers(1, 6), extra=st.integers(0, 6))
def test_split_without_noise_is_one_over_count(seed, old, extra):
    g, counts, shares = _shares(seed, old, extra, 0.0)
    expected = np.broadcast_to(
        (np.float32(1.0) / counts[g].astype(np.float32))[:, None], (len(g), 3)
    )
    np.testing.assert_array_equal(shares, expected)
    key_but_no_noise = _split(
        jnp.ones((old, 3)), g, counts, axis=0, key=jax.random.key(1), noise_scale=0.0
    )
    np.testing.assert_array_equal(key_but_no_noise, shares)


@functools.partial(jax.jit, static_argnames=("noise_scale",))
def _consumer_outputs(x, kernel, dense, g, counts, key, noise_scale):
    """Outputs of a conv and a dense consumer before and after widening their input."""
    wide_x = surgery.replicate(x, g, axis=-1)
    wide_kernel = surgery.split_among_replicas(
        kernel, g, counts, axis=2, key=key, noise_scale=noise_scale
    )
    wide_dense = surgery.split_among_replicas(
        dense, g, counts, axis=-2, key=key, noise_scale=noise_scale
    )
    return (
        (_conv_same(wide_x, wide_kernel), _conv_same(x, kernel)),
        (wide_x[:, 0, 0] @ wide_dense, x[:, 0, 0] @ dense),
    )


@pytest.mark.slow
@FEW
@given(
    seed=SEEDS,
    c_in=st.integers(1, 4),
    extra=st.integers(0, 4),
    noise_scale=st.sampled_from([0.0, 0.2]),
    kernel_size=st.sampled_from([1, 3]),
)
def test_consumer_output_unchanged_on_replicated_inputs(
    seed, c_in, extra, noise_scale, kernel_size
):
    x = _normal(seed, 2, 5, 5, c_in)
    kernel = _normal(seed + 1, kernel_size, kernel_size, c_in, 3)
    dense = _normal(seed + 2, c_in, 3)
    g = _mapping(seed, c_in, extra)
    counts = np.bincount(g, minlength=c_in).astype(np.int32)
    conv_out, dense_out = _consumer_outputs(
        x, kernel, dense, g, counts, jax.random.key(seed), noise_scale
    )
    chex.assert_trees_all_close(*conv_out, atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(*dense_out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("mapping", "counts", "match"),
    [
        (jnp.array([0, 1, 2, 0]), jnp.array([2, 1], jnp.int32), r"counts of shape \(2,\)"),
        (jnp.array([[0, 1, 2]]), jnp.ones(3, jnp.int32), r"mapping of shape \(1, 3\)"),
        (jnp.array([0.0, 1.0, 2.0]), jnp.ones(3, jnp.int32), r"mapping of dtype float32"),
    ],
)
def test_split_and_replicate_reject_mappings_and_counts_of_other_shapes(mapping, counts, match):
    w = jnp.ones((3, 2))
    with pytest.raises((ValueError, TypeError), match=match):
        surgery.split_among_replicas(w, mapping, counts, 0)
    if "counts" not in match:
        with pytest.raises((ValueError, TypeError), match=match):
            surgery.replicate(w, mapping, 0)


def test_split_rejects_axis_out_of_range():
    with pytest.raises(ValueError, match=r"axis -3 is out of range for consumer weight"):
        surgery.split_among_replicas(jnp.ones((3, 4)), jnp.arange(3), jnp.ones((3,), jnp.int32), -3)


# --- add_paper_noise ----------------------------------------------------------------------


@pytest.mark.slow
@FEW
@given(seed=SEEDS, shape=st.lists(st.integers(2, 6), min_size=1, max_size=3))
def test_paper_noise_changes_weights_at_the_requested_scale(seed, shape):
    w = _normal(seed, *shape)
    noisy = surgery.add_paper_noise(jnp.asarray(w), jax.random.key(seed + 1), 0.1)
    chex.assert_shape(noisy, w.shape)
    chex.assert_type(noisy, jnp.float32)
    delta = np.abs(np.asarray(noisy) - w)
    assert delta.max() > 0
    assert delta.max() < 10 * 0.1 * w.std()


def test_paper_noise_on_constant_weights_uses_unit_spread():
    noisy = surgery.add_paper_noise(jnp.zeros((1000,)), jax.random.key(0), 0.1)
    assert 0.08 < float(jnp.std(noisy)) < 0.12


# --- identity layers ----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kernel_size", [1, 3, 5, (1, 3), (5, 3)])
def test_identity_conv_kernel_reproduces_input_under_same_padding(kernel_size):
    x = _normal(0, 2, 7, 5, 3)
    kernel = surgery.identity_conv_kernel(kernel_size, 3)
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    chex.assert_shape(kernel, (kh, kw, 3, 3))
    chex.assert_trees_all_close(jax.jit(_conv_same)(x, kernel), x, atol=1e-6)


@pytest.mark.parametrize(
    ("kernel_size", "channels", "error", "match"),
    [
        (2, 3, ValueError, r"odd kernel sizes .* got \(2, 2\)"),
        ((3, 4), 3, ValueError, r"odd kernel sizes .* got \(3, 4\)"),
        (0, 3, ValueError, r"kernel height must be positive, got 0"),
        (3, 0, ValueError, r"channels must be positive, got 0"),
        (3.0, 3, TypeError, r"kernel height must be an int, got 3.0"),
    ],
)
def test_identity_conv_kernel_rejects_bad_sizes(kernel_size, channels, error, match):
    with pytest.raises(error, match=match):
        surgery.identity_conv_kernel(kernel_size, channels)


@pytest.mark.slow
@FEW
@given(seed=SEEDS, features=st.integers(1, 12))
def test_identity_dense_kernel_is_the_identity(seed, features):
    x = _normal(seed, 3, features)
    kernel = surgery.identity_dense_kernel(features)
    np.testing.assert_array_equal(x @ np.asarray(kernel), x)
    with pytest.raises(ValueError, match=r"features must be positive, got 0"):
        surgery.identity_dense_kernel(0)


@pytest.mark.slow
@FEW
@given(seed=SEEDS, c=st.sampled_from([1, 4]))
def test_identity_batch_norm_is_identity_in_eval_mode(seed, c):
    x = 2.0 * _normal(seed, 4, 3, 3, c) + 1.0
    mean = jnp.asarray(_normal(seed + 1, c))
    var = jnp.asarray(np.random.default_rng(seed).uniform(0.1, 3.0, c).astype(np.float32))
    norm = surgery.identity_batch_norm(mean, var, 1e-5)
    layer = nn.BatchNorm(use_running_average=True, epsilon=1e-5)
    variables = {
        "params": {"scale": norm["scale"], "bias": norm["bias"]},
        "batch_stats": {"mean": norm["mean"], "var": norm["var"]},
    }
    chex.assert_trees_all_close(jax.jit(layer.apply)(variables, x), x, atol=1e-5, rtol=1e-5)


def test_identity_batch_norm_takes_array_likes():
    norm = surgery.identity_batch_norm([0.5, -1.0], np.array([4.0, 1.0], np.float32), 0.0)
    chex.assert_trees_all_close(norm["scale"], jnp.array([2.0, 1.0]))
    chex.assert_trees_all_close(norm["bias"], jnp.array([0.5, -1.0]))


def test_identity_batch_norm_rejects_mismatched_statistics():
    with pytest.raises(ValueError, match=r"got \(3,\) and \(4,\)"):
        surgery.identity_batch_norm(jnp.zeros(3), jnp.ones(4), 1e-5)


# --- resize_kernel ------------------------------------------------------------------------


@pytest.mark.slow
@FEW
@given(seed=SEEDS, c_in=st.integers(1, 3), c_out=st.integers(1, 3), small=st.sampled_from([1, 3]))
def test_resize_kernel_pad_is_exact_and_crop_inverts_it(seed, c_in, c_out, small):
    x = _normal(seed, 2, 6, 6, c_in)
    kernel = jnp.asarray(_normal(seed + 1, small, small, c_in, c_out))
    padded = surgery.resize_kernel(kernel, 5)
    chex.assert_shape(padded, (5, 5, c_in, c_out))
    conv = jax.jit(_conv_same)
    chex.assert_trees_all_close(conv(x, padded), conv(x, kernel), atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_equal(surgery.resize_kernel(padded, small), kernel)


def test_resize_kernel_crop_keeps_the_centre_taps():
    kernel = jnp.arange(5 * 5 * 2 * 3, dtype=jnp.float32).reshape(5, 5, 2, 3)
    chex.assert_trees_all_equal(surgery.resize_kernel(kernel, 3), kernel[1:4, 1:4])
    chex.assert_trees_all_equal(surgery.resize_kernel(kernel, (1, 5)), kernel[2:3])


@pytest.mark.parametrize(
    ("kernel", "size", "error", "match"),
    [
        (jnp.zeros((3, 3, 2)), 5, ValueError, r"\(kh, kw, c_in, c_out\) kernel, got \(3, 3, 2\)"),
        (jnp.zeros((3, 3, 2, 2)), 0, ValueError, r"kernel height must be positive, got 0"),
        (jnp.zeros((3, 3, 2, 2)), (3, -1), ValueError, r"kernel width must be positive"),
    ],
)
def test_resize_kernel_rejects_bad_inputs(kernel, size, error, match):
    with pytest.raises(error, match=match):
        surgery.resize_kernel(kernel, size)


# --- select_units / fold_dropped_units ----------------------------------------------------


@functools.partial(jax.jit, static_argnames=("hidden", "noise_scale"))
def _widened_and_folded_back(x, w1, b1, w2, g, key, hidden, noise_scale):
    """A ReLU MLP ``x @ w1 + b1 -> relu -> @ w2``: widened by ``g``, then folded back."""
    counts = surgery.replication_counts(g, hidden)
    wide = (
        surgery.replicate(w1, g, 1),
        surgery.replicate(b1, g, 0),
        surgery.split_among_replicas(w2, g, counts, 0, key=key, noise_scale=noise_scale),
    )
    kept, assignment = surgery.select_units(wide[0], axis=1, keep=hidden)
    narrow = (
        surgery.replicate(wide[0], kept, 1),
        surgery.replicate(wide[1], kept, 0),
        surgery.fold_dropped_units(wide[2], assignment, hidden, axis=0),
    )
    outputs = [jax.nn.relu(x @ a + b) @ c for a, b, c in ((w1, b1, w2), narrow)]
    return outputs, kept, assignment


@pytest.mark.slow
@FEW
@given(
    seed=SEEDS,
    hidden=st.integers(1, 5),
    extra=st.integers(0, 5),
    noise_scale=st.sampled_from([0.0, 0.3]),
)
def test_folding_replicas_back_recovers_the_original_mlp(seed, hidden, extra, noise_scale):
    x, w1, b1, w2 = (
        _normal(seed + i, *shape)
        for i, shape in enumerate([(5, 4), (4, hidden), (hidden,), (hidden, 3)])
    )
    g = _mapping(seed, hidden, extra)
    (original, recovered), kept, assignment = _widened_and_folded_back(
        x, w1, b1, w2, g, jax.random.key(seed), hidden, noise_scale
    )
    chex.assert_shape(kept, (hidden,))
    chex.assert_shape(assignment, (hidden + extra,))
    kept, assignment = np.asarray(kept), np.asarray(assignment)
    np.testing.assert_array_equal(assignment[kept], np.arange(hidden))
    np.testing.assert_array_equal(np.sort(g[kept]), np.arange(hidden))  # one copy of each unit
    chex.assert_trees_all_close(recovered, original, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@FEW
@given(seed=SEEDS, n=st.integers(2, 8), data=st.data())
def test_select_units_keeps_the_largest_units_and_assigns_the_rest(seed, n, data):
    keep = data.draw(st.integers(1, n), label="keep")
    producer = _normal(seed, 3, 3, 2, n)
    kept, assignment = _select(producer, axis=-1, keep=keep)
    norms = np.linalg.norm(producer.reshape(-1, n), axis=0)
    np.testing.assert_array_equal(kept, np.sort(np.argsort(-norms)[:keep]))
    assignment = np.asarray(assignment)
    assert assignment.min() >= 0 and assignment.max() < keep
    consumer = _normal(seed + 1, 1, 1, n, 4)
    folded = surgery.fold_dropped_units(jnp.asarray(consumer), assignment, keep, axis=2)
    chex.assert_shape(folded, (1, 1, keep, 4))
    np.testing.assert_allclose(np.asarray(folded).sum(axis=2), consumer.sum(axis=2), atol=1e-5)


def test_select_units_rejects_keeping_more_than_there_are():
    with pytest.raises(ValueError, match=r"cannot keep 5 of 4 units \(producer of shape \(3, 4\)"):
        surgery.select_units(jnp.ones((3, 4)), axis=1, keep=5)
    with pytest.raises(ValueError, match=r"keep must be positive, got 0"):
        surgery.select_units(jnp.ones((3, 4)), axis=1, keep=0)
