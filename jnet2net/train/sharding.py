"""Data parallelism with ``jax.sharding``: a 1-D device mesh, batches split on ``'data'``.

Parameters and the in-memory dataset are replicated; each batch is sharded over the
``'data'`` axis, so XLA all-reduces the gradients and BatchNorm statistics. The same code
runs on one device, a multi-GPU host, a TPU slice, or several hosts after
``jax.distributed.initialize()`` (every host loads the same dataset).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis ``'data'`` over ``devices`` (default: every device, all hosts)."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("data_mesh needs at least one device")
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding that keeps a full copy on every device of ``mesh``."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The sharding that splits axis 0 (the batch) over ``mesh``'s ``'data'`` axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
    """Raises ValueError unless ``batch_size`` splits evenly over ``mesh``'s devices."""
    if batch_size % mesh.size:
        raise ValueError(
            f"{what}={batch_size} must be a multiple of the {mesh.size} devices of the mesh "
            f"(e.g. {max(mesh.size, batch_size // mesh.size * mesh.size)})"
        )


def _put_leaf(x: Any, sharding: NamedSharding) -> jax.Array:
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = _put_leaf(jax.random.key_data(x), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    if isinstance(x, jax.Array) and (jax.process_count() == 1 or not x.is_fully_addressable):
        # device_put(may_alias=False) still shares the buffer on a device that the input
        # lives on, so a donating step would delete the caller's array: copy first
        return jax.device_put(x.copy(), sharding)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def put_replicated(tree: Any, mesh: Mesh) -> Any:
    """A copy of ``tree`` (arrays, PRNG keys or numpy) replicated over ``mesh``; the input
    stays valid.

    With several processes (``jax.distributed``) ``mesh`` spans them all and the copies are
    global arrays: every process must pass the same values (host values and arrays of its
    own devices are placed from the host; global arrays are resharded). Returns once the
    copies are made: a step that donates them must not delete a buffer that a transfer to
    another device is still reading.
    """
    sharding = replicated(mesh)
    return jax.block_until_ready(jax.tree.map(lambda x: _put_leaf(x, sharding), tree))


def put_batch(tree: Any, mesh: Mesh) -> Any:
    """Host batches (this process's rows, axis 0) as global arrays sharded on ``'data'``."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree
    )
