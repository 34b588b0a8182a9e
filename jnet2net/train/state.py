"""The training state: parameters, BatchNorm statistics, optimizer state and step."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from jnet2net.train.batches import stream_key
from jnet2net.train.config import TrainConfig
from jnet2net.train.optim import make_optimizer
from jnet2net.variables import check_variables


class TrainState(train_state.TrainState):
    """Flax's ``TrainState`` plus ``batch_stats`` (``{}`` for models without BatchNorm).

    ``step`` is an int32 array that counts optimizer steps; data order and augmentation
    are functions of it, so a restored state resumes the same run.
    """

    batch_stats: Any

    @property
    def variables(self) -> dict[str, Any]:
        """``{'params': ..., 'batch_stats': ...}`` for ``model.apply`` (no empty stats)."""
        return variables_of(self.params, self.batch_stats)


def variables_of(params: Any, batch_stats: Any) -> dict[str, Any]:
    """The variables dict of ``params`` and ``batch_stats``, leaving out empty stats."""
    if batch_stats:
        return {"params": params, "batch_stats": batch_stats}
    return {"params": params}


def init_variables(model: nn.Module, example_images: Any, *, key: jax.Array) -> dict[str, Any]:
    """``model.init`` on one example image (float32), compiled."""
    example = jnp.zeros((1, *example_images.shape[1:]), jnp.float32)
    return jax.jit(lambda k, x: model.init(k, x, train=False))(key, example)


def create_train_state(
    model: nn.Module,
    config: TrainConfig,
    example_images: Any,
    *,
    key: jax.Array | None = None,
    variables: Any = None,
    steps_per_epoch: int,
    tx: optax.GradientTransformation | None = None,
) -> TrainState:
    """A fresh state at step 0, from new parameters or from ``variables``.

    Args:
      model: the network.
      config: makes the optimizer (``make_optimizer(config, steps_per_epoch)``).
      example_images: ``(n, h, w, c)``; only the image shape is used.
      key: initialisation key (default: ``config.seed``'s init stream); ignored when
        ``variables`` are given.
      variables: start from these (e.g. a grown student); checked against ``model``.
      steps_per_epoch: optimizer steps per epoch.
      tx: an optimizer to use instead of ``make_optimizer``'s.

    Returns:
      The :class:`TrainState`, with ``step`` an int32 0.
    """
    shape = getattr(example_images, "shape", None)
    if shape is None or len(shape) != 4:
        raise ValueError(f"example_images must be (n, h, w, c), got shape {shape}")
    if variables is None:
        key = stream_key(config.seed, "init") if key is None else key
        variables = init_variables(model, example_images, key=key)
    else:
        check_variables(model, variables)
    tx = make_optimizer(config, steps_per_epoch) if tx is None else tx
    state = TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=tx,
        batch_stats=variables.get("batch_stats", {}),
    )
    return state.replace(step=jnp.zeros((), jnp.int32))
