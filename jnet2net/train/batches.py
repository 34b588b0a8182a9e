"""Data order and randomness as pure functions of ``(seed, epoch or step)``.

Resuming at step ``N`` therefore replays exactly the batches and augmentations that an
uninterrupted run would have used.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

#: Independent random streams derived from one seed.
STREAMS = {"init": 0, "order": 1, "augment": 2, "growth": 3, "cache": 4}


def stream_key(seed: int, stream: str) -> jax.Array:
    """The root key of one random stream (``'init'``, ``'order'``, ``'augment'``, ``'growth'``,
    ``'cache'``)."""
    if stream not in STREAMS:
        raise ValueError(f"unknown random stream {stream!r}; known: {sorted(STREAMS)}")
    return jax.random.fold_in(jax.random.key(seed), STREAMS[stream])


def epoch_permutation(seed: int, epoch: int | jax.Array, num_examples: int) -> jax.Array:
    """The data order of ``epoch``: a permutation of ``range(num_examples)``, int32."""
    key = jax.random.fold_in(stream_key(seed, "order"), epoch)
    return jax.random.permutation(key, num_examples).astype(jnp.int32)


def augment_key(seed: int, step: int | jax.Array) -> jax.Array:
    """The augmentation key of global step ``step``."""
    return jax.random.fold_in(stream_key(seed, "augment"), step)


def batch_indices(permutation: jax.Array, index: int | jax.Array, batch_size: int) -> jax.Array:
    """Batch ``index`` of an epoch: ``permutation[index * batch_size:][:batch_size]``."""
    return jax.lax.dynamic_slice(permutation, (index * batch_size,), (batch_size,))
