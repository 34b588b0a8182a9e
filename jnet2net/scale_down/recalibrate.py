"""BatchNorm statistics of a stage about to freeze, recalibrated on training batches.

A frozen stage runs in eval mode with its running statistics, which lag its final weights
(an exponential average of batches seen while the weights still moved). Before it freezes,
its statistics are replaced by the mean of the batch statistics of a few training batches
under its final weights: the earlier frozen stages run in eval mode as they will from then
on, the stage itself in train mode. The batches are the first of the epoch's order,
normalised but not augmented.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jnet2net.data.dataset import normalize
from jnet2net.models.common import compute_dtype
from jnet2net.scale_down.split import check_cut
from jnet2net.train.batches import batch_indices
from jnet2net.train.sharding import batch_sharding, replicated
from jnet2net.variables import Variables


def recalibration_fn(
    model: nn.Module,
    start: int,
    stop: int,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    batch_size: int,
    batches: int,
    mesh: Mesh,
) -> Callable[[Variables, jax.Array, jax.Array], dict[str, Any]]:
    """The jitted ``(variables, images, permutation) -> batch_stats`` of layers ``[start, stop)``.

    Batch ``i < batches`` of ``permutation`` is gathered from ``images (n, h, w, c)``
    uint8, normalised, run through layers ``[0, start)`` in eval mode and layers ``[start,
    stop)`` in train mode; each BatchNorm's running mean and variance become the mean over
    the batches of its batch mean and variance. The weight of a batch in the running
    average is read off the update itself (an update from zeros and one from ones), so any
    BatchNorm momentum works.

    Args:
      model: the network in its compute dtype.
      start: first layer of the stage.
      stop: one past its last layer.
      mean, std: normalisation of the images.
      batch_size: examples per batch (sharded over ``'data'``, as in training).
      batches: batches averaged (>= 1).
      mesh: the devices.

    Returns:
      the jitted function; its result holds the layers of ``[start, stop)`` that have
      ``batch_stats`` (``{}`` if none), replicated.
    """
    check_cut(model, start)
    if not start < stop <= len(model.layer_names()):
        raise ValueError(f"a stage is layers [start, stop) with start < stop, got {start}, {stop}")
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
        raise ValueError(f"batches must be an int >= 1, got {batches!r}")
    names = model.layer_names()[start:stop]
    dtype = compute_dtype(model)

    def scale_down_recalibrate(
        variables: Variables, images: jax.Array, permutation: jax.Array
    ) -> Any:
        stats = variables.get("batch_stats", {})
        stage = {name: stats[name] for name in names if name in stats}
        if not stage:
            return {}

        def update(i: jax.Array, old: Any) -> Any:
            index = jax.lax.with_sharding_constraint(
                batch_indices(permutation, i, batch_size), batch_sharding(mesh)
            )
            h = normalize(images[index], mean, std, dtype)
            if start > 0:
                h = model.apply(variables, h, train=False, stop=start)
            inputs = {"params": variables["params"], "batch_stats": {**stats, **old}}
            _, new = model.apply(
                inputs, h, train=True, start=start, stop=stop, mutable=["batch_stats"]
            )
            return {name: new["batch_stats"][name] for name in stage}

        zeros = jax.tree.map(jnp.zeros_like, stage)
        ones = jax.tree.map(jnp.ones_like, stage)
        total = jax.lax.fori_loop(
            0, batches, lambda i, acc: jax.tree.map(jnp.add, acc, update(i, zeros)), zeros
        )
        # update(old) = momentum * old + (1 - momentum) * batch statistic, per entry.
        momentum = jax.tree.map(jnp.subtract, update(0, ones), update(0, zeros))
        return jax.tree.map(lambda t, m: t / (batches * (1.0 - m)), total, momentum)

    return jax.jit(
        scale_down_recalibrate, in_shardings=replicated(mesh), out_shardings=replicated(mesh)
    )
