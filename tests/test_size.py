"""Sizing networks from shapes only (``jnet2net.models.size``)."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import pytest

import jnet2net
from jnet2net.models.size import describe_size, param_count


def _allocated_count(model, shape) -> int:
    variables = model.init(jax.random.key(0), jnp.zeros((1, *shape)))
    return sum(int(x.size) for x in jax.tree.leaves(variables["params"]))


@pytest.mark.slow
@pytest.mark.parametrize(
    "model",
    [
        jnet2net.ResNet(stage_depths=(3, 1, 4), stage_widths=(2, 4, 6), num_classes=3),
        jnet2net.ResNet(
            stage_depths=(3, 2), stage_widths=(8, 12), block="bottleneck", num_classes=5
        ),
        jnet2net.VGG(stage_depths=(4, 3), stage_widths=(2, 4), hidden_widths=(6,), num_classes=3),
    ],
    ids=["resnet", "bottleneck", "vgg"],
)
def test_param_count_equals_the_allocated_count(model) -> None:
    assert param_count(model, (8, 8, 1)) == _allocated_count(model, (8, 8, 1))
    assert param_count(model, (1, 8, 8, 1)) == param_count(model, (8, 8, 1))


def test_a_billion_blocks_are_sized_in_seconds() -> None:
    model = jnet2net.ResNet(stage_depths=(1_000_000_000, 1), stage_widths=(4, 8), num_classes=3)
    start = time.perf_counter()
    count = param_count(model, (8, 8, 1))
    assert time.perf_counter() - start < 10
    per_block = 2 * (3 * 3 * 4 * 4) + 2 * 2 * 4  # two 3x3 convs, two BatchNorms
    small = model.clone(stage_depths=(2, 1))
    assert count == param_count(small, (8, 8, 1)) + (1_000_000_000 - 2) * per_block


def test_describe_size() -> None:
    assert describe_size(1_000) == "1,000 parameters (3.9 KiB as float32)"
    assert describe_size(500_000_000) == "500,000,000 parameters (1.9 GiB as float32)"
