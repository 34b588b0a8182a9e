"""What :func:`~jnet2net.train.fit` starts from on the mesh: the train state (resumed or
fresh, replicated) and the jitted epoch order."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh

from jnet2net.train.batches import epoch_permutation
from jnet2net.train.config import TrainConfig
from jnet2net.train.optim import make_optimizer
from jnet2net.train.sharding import put_replicated, replicated
from jnet2net.train.state import TrainState, create_train_state, with_ema
from jnet2net.variables import check_variables


@functools.lru_cache(maxsize=16)
def device_permutation(mesh: Mesh) -> Callable[[int, int, int], jax.Array]:
    """:func:`~jnet2net.train.batches.epoch_permutation` jitted for ``mesh``:
    ``(seed, epoch, n) -> (n,)`` int32, replicated (one compile per mesh)."""
    return jax.jit(epoch_permutation, static_argnums=(0, 2), out_shardings=replicated(mesh))


def start_state(
    model: nn.Module,
    config: TrainConfig,
    train: Any,
    spe: int,
    state: Any,
    variables: Any,
    windows: tuple[tuple[int, int], ...],
    mesh: Mesh,
) -> TrainState:
    """The state to train from (replicated): ``state`` to resume, else a fresh one (from
    ``variables`` when given); its optimizer knows the re-warm ``windows``.

    With ``config.ema_decay`` a resumed state without a moving average (e.g. restored from
    a checkpoint of a run without one) starts it at its variables; without ``ema_decay`` a
    state's average is dropped.
    """
    tx = make_optimizer(config, spe, rewarm=windows)
    if state is None:
        example = np.zeros((1, *train.image_shape), np.uint8)
        state = create_train_state(
            model, config, example, variables=variables, steps_per_epoch=spe, tx=tx
        )
    elif not isinstance(state, TrainState):
        raise TypeError(f"state must be a jnet2net TrainState, got {type(state).__name__}")
    else:
        if hasattr(model, "example_input"):
            check_variables(model, state.variables)
            if state.ema is not None:
                check_variables(model, state.ema)
        if windows:
            state = state.replace(tx=tx)
        if config.ema_decay is None and state.ema is not None:
            state = state.replace(ema=None)
        elif config.ema_decay is not None and state.ema is None:
            state = with_ema(state)
    return put_replicated(state, mesh)
