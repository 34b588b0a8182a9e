"""Helpers shared by several test modules (not tests themselves)."""

from __future__ import annotations

import collections
import math
import pathlib
import struct
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jnet2net

#: How often each jitted function (by name) has been traced in this process: counted from
#: JAX's tracing events by :func:`count_trace`, which ``tests/conftest.py`` registers.
TRACES: collections.Counter[str] = collections.Counter()
TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"


def count_trace(event: str, duration: float, **kwargs: Any) -> None:
    """A ``jax.monitoring`` listener: counts a trace of ``kwargs['fun_name']`` in TRACES."""
    if event == TRACE_EVENT:
        TRACES[kwargs.get("fun_name", "?")] += 1


#: Relative output error below which a growth counts as exact (float32).
RTOL = 1e-5
#: The image shape and the random batches (2 batches of 4) of the growth tests.
IMAGE = (8, 8, 3)
XS = np.random.default_rng(0).standard_normal((2, 4, *IMAGE)).astype(np.float32)


def read_scalars(logdir: pathlib.Path) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` of every event file under ``logdir`` (the TFRecord
    framing: length, its CRC, the serialized Event, its CRC)."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        raw, at = path.read_bytes(), 0
        while at < len(raw):
            (length,) = struct.unpack("<Q", raw[at : at + 8])
            event = event_pb2.Event.FromString(raw[at + 12 : at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def random_variables(model: nn.Module, seed: int, image=IMAGE) -> dict:
    """Random parameters and non-trivial BatchNorm statistics with the shapes of ``model``."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *image)))
    rng = np.random.default_rng(seed)

    def leaf(path, shape):
        name, size = path[-1].key, shape.shape
        if name == "kernel":
            value = rng.standard_normal(size) * math.sqrt(2.0 / math.prod(size[:-1]))
        elif name == "scale":
            value = 1.0 + 0.3 * rng.standard_normal(size)
        elif name == "var":
            value = rng.uniform(0.3, 3.0, size)
        elif name == "mean":
            value = 0.5 * rng.standard_normal(size)
        else:
            value = 0.2 * rng.standard_normal(size)
        return jnp.asarray(value, jnp.float32)

    return jax.tree_util.tree_map_with_path(leaf, shapes)


def leaves_equal(a, b) -> bool:
    flat_a, flat_b = jnet2net.variables.flatten(a), jnet2net.variables.flatten(b)
    return flat_a.keys() == flat_b.keys() and all(
        np.array_equal(flat_a[k], flat_b[k]) for k in flat_a
    )
