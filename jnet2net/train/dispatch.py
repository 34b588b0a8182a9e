"""Bounded asynchronous dispatch: at most a few steps queued ahead of the devices.

A jitted call returns before the devices finish, so a Python loop can queue hundreds of
steps. On CPU that is not safe: the simulated devices of
``--xla_force_host_platform_device_count`` share one thread pool, and an all-reduce waits
until every device's thread reaches it. With many steps queued the pool can fill with
threads waiting in later steps' collectives, the rendezvous of the earliest one never
completes, and after 40 s XLA aborts the whole process ("Termination timeout for `all
reduce RendezvousKey{...}` of 40 seconds exceeded. Exiting to ensure a consistent program
state", then ``Fatal Python error: Aborted``). A loaded machine makes it likelier.
Waiting on the outputs of the step ``MAX_IN_FLIGHT`` back keeps the queue short and the
pipeline full; on accelerators it costs nothing measurable.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import jax

#: Steps a training loop may queue before it waits on the oldest one's outputs.
MAX_IN_FLIGHT = 4


def _check_positive(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class DispatchWindow:
    """A sliding window over dispatched steps: ``push`` each step's outputs; once more than
    ``depth`` are pending, it waits (``jax.block_until_ready``) on the oldest.

    The pushed outputs must not be donated to a later step (push metrics, not the state).
    """

    def __init__(
        self, depth: int = MAX_IN_FLIGHT, wait: Callable[[Any], Any] = jax.block_until_ready
    ):
        self.depth = _check_positive("depth", depth)
        self._wait = wait
        self._pending: collections.deque[Any] = collections.deque()

    def push(self, outputs: Any) -> None:
        """Records a dispatched step's outputs; waits on the oldest beyond ``depth``."""
        self._pending.append(outputs)
        while len(self._pending) > self.depth:
            self._wait(self._pending.popleft())

    def drain(self) -> None:
        """Waits on every pending step."""
        while self._pending:
            self._wait(self._pending.popleft())


class Every:
    """Waits on every ``every``-th pushed output: for loops that thread (and donate) one
    carry, such as evaluation totals, where only the newest output is alive."""

    def __init__(
        self, every: int = MAX_IN_FLIGHT, wait: Callable[[Any], Any] = jax.block_until_ready
    ):
        self.every = _check_positive("every", every)
        self._wait = wait
        self._count = 0

    def push(self, outputs: Any) -> None:
        """Counts a dispatched step; waits on its outputs when the count is a multiple."""
        self._count += 1
        if self._count % self.every == 0:
            self._wait(outputs)
