"""Net2WiderNet / Net2DeeperNet on VGG and ResNet variable trees: exactness and contracts.

Parameters are random (not ``init``) and BatchNorm running statistics are far from mean 0 /
var 1, so an eval-mode comparison really exercises the statistics. Compiling dominates the
cost of these tests, so every network is compiled once per architecture (``_outputs`` is jitted
with the module static) and hypothesis draws only a few tiny architectures.
"""

import copy
import dataclasses
import functools
import warnings

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.core import FrozenDict, freeze
from helpers import RTOL, XS, leaves_equal, random_variables  # tests/ on sys.path
from hypothesis import example, given, settings
from hypothesis import strategies as st

import jnet2net
from jnet2net import VGG, ResNet

grow_wider = jax.jit(
    jnet2net.widen,
    static_argnames=("model", "widths", "hidden_widths", "inner_widths", "stem_width", "noise"),
)
grow_deeper = jax.jit(jnet2net.deepen, static_argnames=("model", "depths", "hidden_depths"))


@functools.partial(jax.jit, static_argnums=0)
def _outputs(model: nn.Module, variables, xs):
    """Logits ``(n_batches, batch, classes)`` in eval mode and in train mode, vmapped."""
    evaluated = jax.vmap(lambda x: model.apply(variables, x, train=False))(xs)
    trained = jax.vmap(lambda x: model.apply(variables, x, train=True, mutable=["batch_stats"])[0])(
        xs
    )
    return evaluated, trained


def relative_errors(reference, other) -> tuple[float, float]:
    """``max|a - b| / max|a|`` for the eval and the train logits."""
    return tuple(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(a))))
        for a, b in zip(reference, other, strict=True)
    )


# --- exactness over random architectures and growth targets --------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    """A network, how to widen it and how to deepen it."""

    model: nn.Module
    widen: dict
    deepen: dict
    seed: int = 0


@st.composite
def vgg_cases(draw) -> Case:
    stages = draw(st.integers(1, 3))
    depths = tuple(draw(st.integers(1, 2)) for _ in range(stages))
    widths = tuple(draw(st.integers(2, 6)) for _ in range(stages))
    hidden = draw(st.sampled_from([(), (3,), (2, 4)]))
    model = VGG(depths, widths, hidden, num_classes=3, batch_norm=draw(st.booleans()))
    widen = {"widths": tuple(w + draw(st.integers(0, 4)) for w in widths)}
    if hidden:
        widen["hidden_widths"] = tuple(h + draw(st.integers(0, 3)) for h in hidden)
    deepen = {
        "depths": tuple(d + draw(st.integers(0, 1)) for d in depths),
        "hidden_depths": len(hidden) + draw(st.integers(0, 1)),
    }
    return Case(model, widen, deepen, draw(st.integers(0, 2**16)))


@st.composite
def resnet_cases(draw) -> Case:
    stages = draw(st.integers(1, 3))
    depths = tuple(draw(st.integers(1, 2)) for _ in range(stages))
    widths = tuple(draw(st.integers(2, 8)) for _ in range(stages))
    inner = draw(st.none() | st.tuples(*(st.integers(1, 5) for _ in range(stages))))
    stem_width = draw(st.none() | st.integers(2, 6))
    model = ResNet(
        depths,
        widths,
        block=draw(st.sampled_from(["basic", "bottleneck"])),
        stem=draw(st.sampled_from(["cifar", "imagenet"])),
        num_classes=3,
        inner_widths=inner,
        stem_width=stem_width,
    )
    widen = {"widths": tuple(w + draw(st.integers(0, 4)) for w in widths)}
    if inner is not None or draw(st.booleans()):
        widen["inner_widths"] = tuple(
            w + draw(st.integers(0, 3)) for w in model.resolved_inner_widths()
        )
    if stem_width is not None:
        widen["stem_width"] = stem_width + draw(st.integers(0, 3))
    deepen = {"depths": tuple(d + draw(st.integers(0, 1)) for d in depths)}
    return Case(model, widen, deepen, draw(st.integers(0, 2**16)))


def check_growth(case: Case, *, deepen_exact_in_train: bool) -> None:
    """widen, deepen, and widen-then-deepen all compute the old function (< 1e-5)."""
    model, variables = case.model, random_variables(case.model, case.seed)
    key_widen, key_deepen = jax.random.split(jax.random.key(case.seed))
    reference = _outputs(model, variables, XS)
    assert np.max(np.abs(reference[0])) > 0

    wide_model, wide_vars = grow_wider(model, variables, key=key_widen, **case.widen)
    jnet2net.check_variables(wide_model, wide_vars)
    eval_err, train_err = relative_errors(reference, _outputs(wide_model, wide_vars, XS))
    assert eval_err < RTOL and train_err < RTOL, ("widen", eval_err, train_err)

    deep_model, deep_vars = grow_deeper(model, variables, key=key_deepen, **case.deepen)
    jnet2net.check_variables(deep_model, deep_vars)
    eval_err, train_err = relative_errors(reference, _outputs(deep_model, deep_vars, XS))
    assert eval_err < RTOL, ("deepen", eval_err)
    assert train_err < RTOL or not deepen_exact_in_train, ("deepen, train", train_err)

    both_model, both_vars = grow_deeper(wide_model, wide_vars, key=key_deepen, **case.deepen)
    eval_err, train_err = relative_errors(reference, _outputs(both_model, both_vars, XS))
    assert eval_err < RTOL, ("widen + deepen", eval_err)
    assert train_err < RTOL or not deepen_exact_in_train, ("widen + deepen, train", train_err)


GROWTH = settings(max_examples=2, deadline=None)


@pytest.mark.slow
@GROWTH
@given(case=vgg_cases())
@example(
    case=Case(
        VGG((1, 2), (3, 4), (5,), num_classes=3),
        {"widths": (5, 7), "hidden_widths": (8,)},
        {"depths": (2, 3), "hidden_depths": 2},
        seed=1,
    )
)
@example(
    case=Case(
        VGG((2, 1), (4, 3), num_classes=3, batch_norm=False),
        {"widths": (6, 5)},
        {"depths": (3, 2), "hidden_depths": 1},
        seed=2,
    )
)
def test_vgg_growth_is_exact(case):
    check_growth(case, deepen_exact_in_train=not case.model.batch_norm)


@pytest.mark.slow
@GROWTH
@given(case=resnet_cases())
@example(
    case=Case(
        ResNet((2, 1), (4, 6), block="basic", stem="cifar", num_classes=3),
        {"widths": (6, 9)},
        {"depths": (3, 2)},
        seed=3,
    )
)
@example(
    case=Case(
        ResNet((1, 2), (8, 8), block="bottleneck", stem="imagenet", num_classes=3, stem_width=3),
        {"widths": (12, 10), "inner_widths": (3, 4), "stem_width": 5},
        {"depths": (2, 3)},
        seed=4,
    )
)
def test_resnet_growth_is_exact_in_eval_and_train_mode(case):
    check_growth(case, deepen_exact_in_train=True)


# --- a fixed small network for the contract tests ------------------------------------------

SMALL_VGG = VGG((1, 1), (3, 4), (5,), num_classes=3)
SMALL_RESNET = ResNet((1, 1), (3, 4), block="basic", num_classes=3)


@pytest.fixture(scope="module")
def vgg_vars():
    return random_variables(SMALL_VGG, 10)


@pytest.fixture(scope="module")
def resnet_vars():
    return random_variables(SMALL_RESNET, 11)


@pytest.mark.slow
def test_vgg_deepen_calibrates_inserted_batch_norms_and_stays_exact(vgg_vars):
    calibration = XS[0]
    deep_model, deep_vars = jnet2net.deepen(
        SMALL_VGG, vgg_vars, depths=(2, 1), calibration_batch=calibration
    )
    stats = deep_vars["batch_stats"]["stage0_layer1"]["bn"]
    params = deep_vars["params"]["stage0_layer1"]["bn"]
    # the statistics are those of the inserted layer's input on the batch (not mean 0 / var 1)
    features = deep_model.apply(deep_vars, calibration, stop=1)  # (n, 8, 8, 3): no pool now
    chex.assert_shape(features, (XS.shape[1], 8, 8, 3))
    chex.assert_trees_all_close(stats["mean"], features.mean(axis=(0, 1, 2)), atol=1e-5)
    chex.assert_trees_all_close(stats["var"], features.var(axis=(0, 1, 2)), atol=1e-5)
    assert not np.allclose(stats["var"], 1.0)
    chex.assert_trees_all_close(params["scale"], jnp.sqrt(stats["var"] + 1e-5))
    chex.assert_trees_all_close(params["bias"], stats["mean"])
    eval_err, _ = relative_errors(
        _outputs(SMALL_VGG, vgg_vars, XS), _outputs(deep_model, deep_vars, XS)
    )
    assert eval_err < RTOL


# --- symmetry breaking ---------------------------------------------------------------------


def _replica_pairs(old: int, new: int, mapping: np.ndarray) -> list[tuple[int, int]]:
    """``(original, copy)`` unit pairs of a widening mapping."""
    return [(int(mapping[j]), j) for j in range(old, new)]


def _sgd_steps(model, variables, steps=3):
    """A few SGD steps in train mode on a fixed batch; returns the new variables."""
    labels = jnp.arange(XS.shape[1]) % 3
    optimizer = optax.sgd(0.1)

    def loss(params, batch_stats, x):
        logits, state = model.apply(
            {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), state

    @jax.jit
    def step(params, batch_stats, opt_state, x):
        (_, state), grads = jax.value_and_grad(loss, has_aux=True)(params, batch_stats, x)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), state["batch_stats"], opt_state

    params, batch_stats = variables["params"], variables["batch_stats"]
    opt_state = optimizer.init(params)
    for i in range(steps):
        params, batch_stats, opt_state = step(params, batch_stats, opt_state, XS[i % 2])
    return {"params": params, "batch_stats": batch_stats}


@pytest.mark.slow
@pytest.mark.parametrize("noise", ["split", "none"])
def test_split_noise_breaks_symmetry_and_stays_exact(vgg_vars, noise):
    key = jax.random.key(5)
    wide_model, wide_vars = jnet2net.widen(SMALL_VGG, vgg_vars, key=key, widths=(3, 8), noise=noise)
    eval_err, train_err = relative_errors(
        _outputs(SMALL_VGG, vgg_vars, XS), _outputs(wide_model, wide_vars, XS)
    )
    assert eval_err < RTOL and train_err < RTOL
    (plan,) = jnet2net.widening_plan(SMALL_VGG, wide_model, jax.random.split(key)[0])
    assert plan.group.name == "stage1_layer0"
    pairs = _replica_pairs(4, 8, np.asarray(plan.mapping))

    def producer(v):  # (kh, kw, c_in, units) -> per-unit rows
        return np.asarray(v["params"]["stage1_layer0"]["conv"]["kernel"]).T

    def consumer(v):  # (positions * units, out) -> (positions, units, out)
        kernel = np.asarray(v["params"]["hidden0"]["kernel"])
        return kernel.reshape(-1, 8, kernel.shape[-1]).transpose(1, 0, 2)

    for i, j in pairs:  # producers are replicated exactly either way
        np.testing.assert_array_equal(producer(wide_vars)[i], producer(wide_vars)[j])
    consumer_tied = [
        np.array_equal(consumer(wide_vars)[i], consumer(wide_vars)[j]) for i, j in pairs
    ]
    trained = _sgd_steps(wide_model, wide_vars)
    producer_tied = [
        np.allclose(producer(trained)[i], producer(trained)[j], rtol=0, atol=1e-7) for i, j in pairs
    ]
    if noise == "split":
        assert not any(consumer_tied)  # replicas differ in what they feed forward ...
        assert not any(producer_tied)  # ... so SGD moves them apart
    else:
        assert all(consumer_tied)
        assert all(producer_tied)  # plain Net2Net: replicas stay tied under SGD


def test_default_noise_is_exact_and_symmetry_breaking(vgg_vars):
    key = jax.random.key(6)
    default = jnet2net.widen(SMALL_VGG, vgg_vars, key=key, widths=(5, 6))
    split = jnet2net.widen(SMALL_VGG, vgg_vars, key=key, widths=(5, 6), noise="split")
    plain = jnet2net.widen(SMALL_VGG, vgg_vars, key=key, widths=(5, 6), noise="none")
    assert leaves_equal(default[1], split[1])
    assert not leaves_equal(default[1], plain[1])


def test_paper_noise_warns_and_is_not_exact(vgg_vars):
    with pytest.warns(UserWarning, match=r"noise='paper'.* not compute exactly the same"):
        wide_model, wide_vars = jnet2net.widen(
            SMALL_VGG, vgg_vars, key=jax.random.key(7), widths=(6, 6), noise="paper"
        )
    eval_err, train_err = relative_errors(
        _outputs(SMALL_VGG, vgg_vars, XS), _outputs(wide_model, wide_vars, XS)
    )
    assert eval_err > RTOL and train_err > RTOL


def test_exact_noises_do_not_warn(vgg_vars):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jnet2net.widen(SMALL_VGG, vgg_vars, key=jax.random.key(7), widths=(6, 6))
        jnet2net.widen(SMALL_VGG, vgg_vars, key=jax.random.key(7), widths=(6, 6), noise="none")


# --- purity, determinism, frozen dicts, jit -------------------------------------------------


@pytest.mark.slow
def test_same_key_same_result_bitwise_other_key_other_result(resnet_vars):
    def grow(seed):
        wide = jnet2net.widen(SMALL_RESNET, resnet_vars, key=jax.random.key(seed), widths=(5, 7))
        return jnet2net.deepen(*wide, depths=(2, 2), key=jax.random.key(seed))

    (model_a, vars_a), (model_b, vars_b), (_, vars_c) = grow(0), grow(0), grow(1)
    assert model_a == model_b
    assert leaves_equal(vars_a, vars_b)
    assert not leaves_equal(vars_a, vars_c)


@pytest.mark.slow
def test_inputs_are_not_mutated(resnet_vars, vgg_vars):
    before = copy.deepcopy((resnet_vars, vgg_vars))
    resnet_copy, vgg_copy = SMALL_RESNET.clone(), SMALL_VGG.clone()
    key = jax.random.key(8)
    jnet2net.widen(SMALL_RESNET, resnet_vars, key=key, widths=(4, 6))
    jnet2net.deepen(SMALL_RESNET, resnet_vars, depths=(2, 1), key=key)
    jnet2net.widen(SMALL_VGG, vgg_vars, key=key, widths=(4, 6), hidden_widths=(7,))
    jnet2net.deepen(SMALL_VGG, vgg_vars, depths=(1, 2), hidden_depths=2, calibration_batch=XS[0])
    assert leaves_equal(before[0], resnet_vars)
    assert leaves_equal(before[1], vgg_vars)
    assert jax.tree.structure(before) == jax.tree.structure((resnet_vars, vgg_vars))
    assert (resnet_copy, vgg_copy) == (SMALL_RESNET, SMALL_VGG)


def test_frozen_dict_in_frozen_dict_out(vgg_vars):
    frozen = freeze(vgg_vars)
    _, wide = jnet2net.widen(SMALL_VGG, frozen, key=jax.random.key(9), widths=(4, 5))
    _, deep = jnet2net.deepen(SMALL_VGG, frozen, depths=(2, 1))
    assert isinstance(wide, FrozenDict) and isinstance(deep, FrozenDict)
    _, plain = jnet2net.widen(SMALL_VGG, vgg_vars, key=jax.random.key(9), widths=(4, 5))
    assert type(plain) is dict
    assert leaves_equal(plain, wide)


def test_growth_under_jit_with_static_architecture(resnet_vars):
    key = jax.random.key(10)
    widen = jax.jit(
        chex.assert_max_traces(jnet2net.widen, n=1), static_argnames=("model", "widths")
    )
    deepen = jax.jit(jnet2net.deepen, static_argnames=("model", "depths"))
    jit_model, jit_vars = widen(SMALL_RESNET, resnet_vars, key=key, widths=(5, 6))
    eager_model, eager_vars = jnet2net.widen(SMALL_RESNET, resnet_vars, key=key, widths=(5, 6))
    assert jit_model == eager_model
    chex.assert_trees_all_close(jit_vars, eager_vars, atol=1e-6, rtol=1e-6)
    deep_model, deep_vars = deepen(jit_model, jit_vars, key=key, depths=(1, 3))
    assert deep_model.stage_depths == (1, 3)
    jnet2net.check_variables(deep_model, deep_vars)
    # an equal module (a clone, or one rebuilt from its config) reuses the compiled growth
    rebuilt = jnet2net.model_from_config(jnet2net.model_config(SMALL_RESNET))
    again = widen(rebuilt, resnet_vars, key=jax.random.key(11), widths=(5, 6))
    assert again[0] == jit_model


# --- bad inputs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"widths": (2, 4)},
            ValueError,
            r"cannot shrink stage0_layer0 \(stage_widths\[0\]\) from 3 to 2",
        ),
        ({"widths": (4,)}, ValueError, r"widths has 1 entries but the model has 2: \(4,\)"),
        ({"widths": 4}, TypeError, r"widths must be a tuple of 2 ints, got 4"),
        ({"widths": (0, 4)}, ValueError, r"VGG.stage_widths must be positive, got \(0, 4\)"),
        ({"widths": (3.5, 4)}, TypeError, r"VGG.stage_widths must hold ints"),
        (
            {"hidden_widths": (4,)},
            ValueError,
            r"cannot shrink hidden0 \(hidden_widths\[0\]\) from 5 to 4",
        ),
        ({"hidden_widths": (6, 6)}, ValueError, r"hidden_widths has 2 entries but the model has 1"),
        ({"inner_widths": (4, 4)}, ValueError, r"inner_widths and stem_width apply to ResNet only"),
        ({"noise": "gaussian"}, ValueError, r"noise must be one of .*'gaussian'"),
    ],
)
def test_widen_rejects_bad_targets(vgg_vars, kwargs, error, match):
    with pytest.raises(error, match=match):
        jnet2net.widen(SMALL_VGG, vgg_vars, key=jax.random.key(0), **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"widths": (3, 3)},
            ValueError,
            r"cannot shrink stage1_stream \(stage_widths\[1\]\) from 4 to 3",
        ),
        (
            {"inner_widths": (2, 4)},
            ValueError,
            r"cannot shrink stage0_block0_conv1 \(inner_widths\[0\]\) from 3 to 2",
        ),
        ({"stem_width": 5}, ValueError, r"stem_width=None.*widen it with widths\[0\]"),
        ({"hidden_widths": (5,)}, ValueError, r"hidden_widths applies to VGG"),
    ],
)
def test_widen_rejects_bad_resnet_targets(resnet_vars, kwargs, error, match):
    with pytest.raises(error, match=match):
        jnet2net.widen(SMALL_RESNET, resnet_vars, key=jax.random.key(0), **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"depths": (1, 0)}, ValueError, r"depths must be positive ints, got \(1, 0\)"),
        ({"depths": (2,)}, ValueError, r"depths has 1 entries but the model has 2"),
        ({"depths": (2, 1, 1)}, ValueError, r"depths has 3 entries but the model has 2"),
        ({"hidden_depths": 0}, ValueError, r"cannot remove hidden dense layers: 1 -> 0"),
        ({"hidden_depths": 1.0}, TypeError, r"hidden_depths must be an int, got 1.0"),
    ],
)
def test_deepen_rejects_bad_targets(vgg_vars, kwargs, error, match):
    with pytest.raises(error, match=match):
        jnet2net.deepen(SMALL_VGG, vgg_vars, **kwargs)


def test_deepen_rejects_removing_layers_and_missing_key(resnet_vars):
    deep_model, deep_vars = jnet2net.deepen(
        SMALL_RESNET, resnet_vars, depths=(2, 1), key=jax.random.key(0)
    )
    with pytest.raises(ValueError, match=r"cannot remove layers: stage 0 would go from 2 to 1"):
        jnet2net.deepen(deep_model, deep_vars, depths=(1, 1), key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"new ResNet blocks at random: pass key="):
        jnet2net.deepen(SMALL_RESNET, resnet_vars, depths=(2, 1))


def test_deepen_rejects_even_kernels_naming_the_new_layer():
    model = VGG((1,), (3,), num_classes=3, kernel_size=2)
    variables = random_variables(model, 0)
    with pytest.raises(
        ValueError,
        match=r"identity conv at params/stage0_layer1/conv/kernel with kernel shape "
        r"\(2, 2, 3, 3\): VGG.kernel_size=2 is even",
    ):
        jnet2net.deepen(model, variables, depths=(2,))


def test_growth_rejects_variables_of_another_architecture(vgg_vars, resnet_vars):
    other = random_variables(SMALL_VGG.clone(stage_widths=(5, 4)), 0)
    with pytest.raises(
        ValueError,
        match=r"batch_stats/stage0_layer0/bn/mean has shape \(5,\), the architecture needs "
        r"\(3,\)",
    ):
        jnet2net.widen(SMALL_VGG, other, key=jax.random.key(0), widths=(5, 5))
    other = random_variables(SMALL_VGG.clone(stage_widths=(3, 6)), 0)
    with pytest.raises(
        ValueError,
        match=r"batch_stats/stage1_layer0/bn/mean has shape \(6,\), the architecture needs "
        r"\(4,\)",
    ):
        jnet2net.widen(SMALL_VGG, other, key=jax.random.key(0), widths=(4, 5))
    other = random_variables(SMALL_VGG.clone(stage_widths=(3, 5)), 0, image=(4, 4, 3))
    with pytest.raises(
        ValueError,
        match=r"params/hidden0/kernel has 5 inputs, which is not a feature map of "
        r"stage_widths\[-1\]=4 channels",
    ):
        jnet2net.widen(SMALL_VGG, other, key=jax.random.key(0), widths=(4, 5))
    with pytest.raises(
        ValueError, match=r"do not hold params/stem/conv/kernel, which every ResNet"
    ):
        jnet2net.deepen(SMALL_RESNET, vgg_vars, depths=(2, 1), key=jax.random.key(0))
    extra = {**resnet_vars, "params": {**resnet_vars["params"], "extra": {"kernel": jnp.ones(2)}}}
    with pytest.raises(ValueError, match=r"unexpected params/extra/kernel with shape \(2,\)"):
        jnet2net.widen(SMALL_RESNET, extra, key=jax.random.key(0), widths=(4, 5))


def test_growth_rejects_missing_batch_stats_and_non_dicts(resnet_vars):
    params_only = {"params": resnet_vars["params"]}
    with pytest.raises(ValueError, match=r"variables lack 'batch_stats', which ResNet needs"):
        jnet2net.widen(SMALL_RESNET, params_only, key=jax.random.key(0), widths=(4, 5))
    with pytest.raises(ValueError, match=r"variables lack 'batch_stats'"):
        jnet2net.deepen(SMALL_RESNET, params_only, depths=(2, 1), key=jax.random.key(0))
    with pytest.raises(
        TypeError, match=r"variables must be a dict like .* got dict with keys \['weights'\]"
    ):
        jnet2net.widen(SMALL_RESNET, {"weights": 1}, key=jax.random.key(0), widths=(4, 5))


def test_growth_rejects_other_module_families():
    with pytest.raises(TypeError, match=r"ViT modules by size keywords, got Dense"):
        jnet2net.widen(nn.Dense(3), {"params": {}}, key=jax.random.key(0))


def test_paper_noise_warning_points_at_the_callers_line(vgg_vars):
    with pytest.warns(UserWarning, match="not compute exactly") as record:
        jnet2net.widen(SMALL_VGG, vgg_vars, widths=(4, 6), key=jax.random.key(0), noise="paper")
    assert record[0].filename == __file__
