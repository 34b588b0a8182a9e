"""Tests of jnet2net.coupling: unit groups cover every leaf whose unit axis changes."""

from __future__ import annotations

import random

import jax
import jax.numpy as jnp
import pytest
from flax import traverse_util

import jnet2net
from jnet2net.coupling import Member, conv_consumer, layer_producers
from jnet2net.models import VGG, ResNet
from jnet2net.variables import abstract_variables, flatten

SIZE = 8


FIXED = {
    12: ResNet((1, 2), (8, 8), block="bottleneck", stem="imagenet", stem_width=3, num_classes=2),
    13: ResNet((2, 1), (5, 6), block="bottleneck", kernel_size=1, num_classes=2),
    14: VGG((1,), (2,), (), num_classes=2, batch_norm=False, kernel_size=5),
}
SEEDS = (*range(10), *FIXED)


def random_model(seed: int):
    """A tiny random VGG or ResNet (any stem, block, kernel size, optional fields)."""
    if seed in FIXED:
        return FIXED[seed]
    rng = random.Random(seed)
    stages = rng.randint(1, 3)
    depths = tuple(rng.randint(1, 2) for _ in range(stages))
    widths = tuple(rng.randint(1, 4) for _ in range(stages))
    kernel_size = rng.choice((1, 3, 5))
    if seed % 2 == 0:
        hidden = tuple(rng.randint(1, 3) for _ in range(rng.randint(0, 2)))
        return VGG(
            depths,
            widths,
            hidden,
            num_classes=rng.randint(1, 3),
            batch_norm=rng.random() < 0.5,
            kernel_size=kernel_size,
        )
    inner = tuple(rng.randint(1, 3) for _ in range(stages)) if rng.random() < 0.5 else None
    return ResNet(
        depths,
        widths,
        block=("basic", "bottleneck")[seed // 2 % 2],
        stem=rng.choice(("cifar", "imagenet")),
        num_classes=rng.randint(1, 3),
        inner_widths=inner,
        stem_width=rng.randint(1, 3) if rng.random() < 0.5 else None,
        kernel_size=kernel_size,
    )


def randomized(variables, seed: int):
    """Variables with perturbed parameters and non-trivial BatchNorm statistics."""
    flat = flatten(variables)
    keys = jax.random.split(jax.random.key(seed), max(len(flat), 1))
    out = {}
    for key, (path, leaf) in zip(keys, flat.items(), strict=False):
        if path[-1] == "var":
            out[path] = jax.random.uniform(key, leaf.shape, minval=0.5, maxval=1.5)
        else:
            out[path] = leaf + 0.2 * jax.random.normal(key, leaf.shape)
    return traverse_util.unflatten_dict(out)


def wider_arguments(model, seed: int) -> dict:
    """Every width field of ``model`` grown by 1..3."""
    rng = random.Random(1000 + seed)

    def grow(values):
        return tuple(v + rng.randint(1, 3) for v in values)

    kwargs = {"widths": grow(model.stage_widths)}
    if isinstance(model, VGG):
        kwargs["hidden_widths"] = grow(model.hidden_widths)
    else:
        if model.inner_widths is not None:
            kwargs["inner_widths"] = grow(model.inner_widths)
        if model.stem_width is not None:
            kwargs["stem_width"] = model.stem_width + rng.randint(1, 3)
    return kwargs


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_widening_every_group_fits_the_wider_model_and_is_exact(seed):
    model = random_model(seed)
    image = jnp.zeros((1, SIZE, SIZE, 2))
    variables = randomized(jax.jit(model.init)(jax.random.key(seed), image), seed)
    kwargs = wider_arguments(model, seed)
    new_model, new_variables = jnet2net.widen(model, variables, key=jax.random.key(seed), **kwargs)
    expected = abstract_variables(new_model, image)
    got = flatten(new_variables)
    assert sorted(got) == sorted(expected), model
    for path, leaf in expected.items():
        assert got[path].shape == leaf.shape, (model, kwargs, path)
    xs = jax.random.normal(jax.random.key(seed + 1), (1, 3, SIZE, SIZE, 2))
    error = float(jnp.max(jnet2net.output_error(model, variables, new_model, new_variables, xs)))
    assert error < 1e-5, (model, kwargs, error)


@pytest.mark.parametrize("seed", SEEDS)
def test_every_leaf_that_changes_with_a_width_is_in_a_group(seed):
    model = random_model(seed)
    image = jnp.zeros((1, SIZE, SIZE, 2))
    old = abstract_variables(model, image)
    new_model = model.clone(
        **{
            {"widths": "stage_widths"}.get(name, name): value
            for name, value in wider_arguments(model, seed).items()
        }
    )
    new = abstract_variables(new_model, image)
    covered: dict[tuple[str, ...], set[int]] = {}
    for group in model.unit_groups():
        if model.width_of(group.field) == new_model.width_of(group.field):
            continue
        for member in group.members:
            assert member.path in old, (group.name, member.path)
            covered.setdefault(member.path, set()).add(member.axis % len(old[member.path].shape))
    for path, leaf in old.items():
        changed = {
            axis
            for axis, (a, b) in enumerate(zip(leaf.shape, new[path].shape, strict=True))
            if a != b
        }
        assert changed == covered.get(path, set()), (model, path, leaf.shape, new[path].shape)


def test_layer_producers_and_conv_consumer():
    members = layer_producers(("stage0_block1",), kernel="conv2", norm="bn2", bias=True)
    assert [m.path for m in members] == [
        ("params", "stage0_block1", "conv2", "kernel"),
        ("params", "stage0_block1", "conv2", "bias"),
        ("params", "stage0_block1", "bn2", "scale"),
        ("params", "stage0_block1", "bn2", "bias"),
        ("batch_stats", "stage0_block1", "bn2", "mean"),
        ("batch_stats", "stage0_block1", "bn2", "var"),
    ]
    assert [m.axis for m in members] == [-1, 0, 0, 0, 0, 0]
    assert all(m.role == "producer" and not m.flattened for m in members)
    dense = layer_producers(("hidden0",), kernel="", norm=None, bias=True)
    assert [m.path for m in dense] == [
        ("params", "hidden0", "kernel"),
        ("params", "hidden0", "bias"),
    ]
    assert conv_consumer(("stage1_block0",), "proj_conv") == Member(
        ("params", "stage1_block0", "proj_conv", "kernel"), 2, "consumer"
    )
