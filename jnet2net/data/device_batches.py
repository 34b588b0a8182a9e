"""Host batches onto the devices: the rows a process holds, and :class:`DeviceBatches`."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any

import numpy as np


def process_rows(mesh: Any, batch_size: int) -> tuple[int, int]:
    """``(lo, hi)``: the rows of a global batch sharded on ``mesh``'s ``'data'`` axis that
    this process's devices hold; ValueError unless they are one contiguous block."""
    from jnet2net.train.sharding import batch_sharding

    spans = batch_sharding(mesh).addressable_devices_indices_map((batch_size,)).values()
    starts_stops = sorted(
        {(s[0].start or 0, batch_size if s[0].stop is None else s[0].stop) for s in spans}
    )
    lo, hi = starts_stops[0][0], starts_stops[-1][1]
    covered = sum(b - a for a, b in starts_stops)
    if covered != hi - lo:
        raise ValueError(
            f"this process's devices hold rows {starts_stops} of the {batch_size}-row batch, "
            "not one contiguous block; order the mesh's devices by process"
        )
    return lo, hi


class DeviceBatches:
    """An iterator of global ``(images, labels)`` device arrays sharded on ``'data'``.

    Each process contributes its rows (``jax.make_array_from_process_local_data``); the next
    ``device_prefetch`` batches are transferred while the current step runs. Call
    :meth:`close` (or use it as a context manager) to stop the reading threads.
    """

    def __init__(self, host: Any, mesh: Any, device_prefetch: int = 2) -> None:
        from jnet2net.train.sharding import batch_sharding

        self._iter = iter(host)
        self._sharding = batch_sharding(mesh)
        self._queue: collections.deque[tuple[Any, Any]] = collections.deque()
        self._depth = max(1, int(device_prefetch))

    def _put(self, batch: tuple[np.ndarray, np.ndarray]) -> tuple[Any, Any]:
        import jax

        images, labels = batch
        return (
            jax.make_array_from_process_local_data(self._sharding, images),
            jax.make_array_from_process_local_data(self._sharding, labels),
        )

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        return self

    def __next__(self) -> tuple[Any, Any]:
        while len(self._queue) < self._depth:
            try:
                self._queue.append(self._put(next(self._iter)))
            except StopIteration:
                break
        if not self._queue:
            raise StopIteration
        return self._queue.popleft()

    def close(self) -> None:
        """Drops the queued batches and stops grain's reading threads."""
        self._queue.clear()
        close = getattr(self._iter, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> DeviceBatches:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
