"""The training state: parameters, BatchNorm statistics, optimizer state, step, and the
moving average of the weights (``TrainConfig.ema_decay``)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state
from jax.sharding import Mesh

from jnet2net.train.batches import stream_key
from jnet2net.train.config import TrainConfig
from jnet2net.train.optim import make_optimizer
from jnet2net.train.sharding import put_replicated
from jnet2net.variables import check_variables


class TrainState(train_state.TrainState):
    """Flax's ``TrainState`` plus ``batch_stats`` (``{}`` for models without BatchNorm).

    ``step`` is an int32 array that counts optimizer steps; data order and augmentation
    are functions of it, so a restored state resumes the same run. ``ema`` is the
    exponential moving average of the variables (``{'params', 'batch_stats'}``, shaped like
    :attr:`variables`) when ``TrainConfig.ema_decay`` is set, else ``None`` (no arrays).
    """

    batch_stats: Any
    ema: Any = None

    @property
    def variables(self) -> dict[str, Any]:
        """``{'params': ..., 'batch_stats': ...}`` for ``model.apply`` (no empty stats)."""
        return variables_of(self.params, self.batch_stats)


def variables_of(params: Any, batch_stats: Any) -> dict[str, Any]:
    """The variables dict of ``params`` and ``batch_stats``, leaving out empty stats."""
    if batch_stats:
        return {"params": params, "batch_stats": batch_stats}
    return {"params": params}


def with_ema(state: TrainState) -> TrainState:
    """``state`` with its moving average started at its variables (a copy: a donating step
    must not see one buffer twice)."""
    return state.replace(ema=jax.tree.map(jnp.copy, state.variables))


def ema_update(ema: Any, variables: Any, decay: float) -> Any:
    """``decay * ema + (1 - decay) * variables``, leaf by leaf in each ``ema`` leaf's dtype
    (a leaf that is not floating, e.g. a counter, takes the new value)."""

    def update(old: jax.Array, new: jax.Array) -> jax.Array:
        if not jnp.issubdtype(old.dtype, jnp.floating):
            return new
        return (decay * old + (1.0 - decay) * new).astype(old.dtype)

    return jax.tree.map(update, ema, variables)


def init_variables(model: nn.Module, example_images: Any, *, key: jax.Array) -> dict[str, Any]:
    """``model.init`` on one example image (float32), compiled once per model and shape."""
    example = jnp.zeros((1, *example_images.shape[1:]), jnp.float32)
    return cached_call(_jitted_init, model)(key, example)


@functools.lru_cache(maxsize=32)
def _jitted_init(model: nn.Module) -> Callable[[jax.Array, jax.Array], Any]:
    return jax.jit(lambda key, x: model.init(key, x, train=False))


def cached_call(builder: Callable[..., Any], *args: Any) -> Any:
    """``builder(*args)`` through its ``lru_cache``, or uncached when ``args`` don't hash."""
    try:
        hash(args)
    except TypeError:
        return builder.__wrapped__(*args)
    return builder(*args)


def create_train_state(
    model: nn.Module,
    config: TrainConfig,
    example_images: Any,
    *,
    key: jax.Array | None = None,
    variables: Any = None,
    steps_per_epoch: int,
    tx: optax.GradientTransformation | None = None,
    mesh: Mesh | None = None,
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
      mesh: place the state replicated over this mesh (as :func:`make_train_step` with the
        same mesh expects; ``fit`` places it itself).

    Returns:
      The :class:`TrainState`, with ``step`` an int32 0 and, when ``config.ema_decay`` is
      set, ``ema`` a copy of the starting variables.
    """
    shape = getattr(example_images, "shape", None)
    if shape is None or len(shape) != 4:
        raise ValueError(f"example_images must be (n, h, w, c), got shape {shape}")
    if variables is None:
        key = stream_key(config.seed, "init") if key is None else key
        variables = init_variables(model, example_images, key=key)
    elif hasattr(model, "example_input"):  # jnet2net models: name the mismatched leaf
        check_variables(model, variables)
    tx = make_optimizer(config, steps_per_epoch) if tx is None else tx
    state = TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=tx,
        batch_stats=variables.get("batch_stats", {}),
    )
    state = state.replace(step=jnp.zeros((), jnp.int32))
    if config.ema_decay is not None:
        state = with_ema(state)
    return state if mesh is None else put_replicated(state, mesh)
