"""Several JAX processes as one run: start-up, the primary process, barriers.

Every process of a multi-process run (a TPU pod slice, several GPU hosts, a SLURM job,
two processes on one machine) runs the same program. :func:`initialize` joins them through
JAX's distributed runtime before any JAX work; from then on ``jax.devices()`` lists the
devices of every process, ``jnet2net.train.fit`` shards batches over all of them and keeps
parameters, optimizer state and the in-memory dataset replicated. Checkpoints are written
collectively (every process calls ``jnet2net.checkpoint.save``); the metrics log, progress
output and the run directory's lock belong to the primary process (index 0)::

    jnet2net.distributed.initialize()        # SLURM / TPU pod / JAX_* environment
    result = jnet2net.train.fit(model, train_set, test_set, config)

With one process every function here is a no-op or a constant, so single-host code needs
no branches.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
from collections.abc import Iterator
from typing import Any, NamedTuple

import jax
import numpy as np

#: Environment variables read by :func:`initialize` when an argument is not given.
COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "JAX_NUM_PROCESSES"
PROCESS_ID_ENV = "JAX_PROCESS_ID"


class ProcessInfo(NamedTuple):
    """Where this process stands in the run.

    Attributes:
      process_id: this process's index, ``0 .. num_processes - 1``.
      num_processes: processes in the run.
      local_devices: devices of this process.
      global_devices: devices of every process.
    """

    process_id: int
    num_processes: int
    local_devices: int
    global_devices: int


def process_info() -> ProcessInfo:
    """This process's index and the run's process and device counts."""
    return ProcessInfo(
        jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count()
    )


def _env_int(name: str) -> int | None:
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"${name}={text!r} must be an integer") from None


def distributed_args(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> tuple[str | None, int | None, int | None]:
    """``(coordinator, num_processes, process_id)``: arguments over the ``JAX_*`` environment.

    Args:
      coordinator: ``host:port`` of process 0's coordinator service, or
        ``$JAX_COORDINATOR_ADDRESS``.
      num_processes: processes in the run, or ``$JAX_NUM_PROCESSES``.
      process_id: this process's index, or ``$JAX_PROCESS_ID``.

    Returns:
      The three values, ``None`` where neither gives one (auto-detection fills them in).

    Raises:
      ValueError: a malformed address, count or index (naming the flag or variable).
    """
    coordinator = coordinator or os.environ.get(COORDINATOR_ENV, "").strip() or None
    num_processes = _env_int(NUM_PROCESSES_ENV) if num_processes is None else num_processes
    process_id = _env_int(PROCESS_ID_ENV) if process_id is None else process_id
    if coordinator is not None:
        host, sep, port = coordinator.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"coordinator {coordinator!r} must be HOST:PORT, e.g. '10.0.0.1:1234'")
    for name, value, minimum in (
        ("num_processes", num_processes, 1),
        ("process_id", process_id, 0),
    ):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum
        ):
            raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    if num_processes is not None and process_id is not None and process_id >= num_processes:
        raise ValueError(
            f"process_id {process_id} must be below num_processes {num_processes} "
            f"(processes are numbered 0 .. {num_processes - 1})"
        )
    return (
        coordinator,
        None if num_processes is None else int(num_processes),
        (None if process_id is None else int(process_id)),
    )


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> ProcessInfo:
    """Joins this process to a multi-process run (``jax.distributed.initialize``).

    Call it once, before any other JAX work, in every process of the run. Values not given
    come from ``$JAX_COORDINATOR_ADDRESS``, ``$JAX_NUM_PROCESSES`` and ``$JAX_PROCESS_ID``;
    what neither gives, JAX detects on SLURM, Open MPI and Cloud TPU (pass nothing there).
    On CPU the processes' collectives run over gloo (TCP).

    Args:
      coordinator: ``host:port`` where process 0 serves the coordinator (every process
        passes the same address).
      num_processes: processes in the run.
      process_id: this process's index, ``0 .. num_processes - 1``.

    Returns:
      This process's :class:`ProcessInfo`.

    Raises:
      ValueError: bad values, or values JAX cannot detect on this machine.
      RuntimeError: JAX computed something before (too late to join), or the run is
        already initialized.
    """
    coordinator, num_processes, process_id = distributed_args(
        coordinator, num_processes, process_id
    )
    if is_initialized():
        raise RuntimeError("jnet2net.distributed.initialize was already called in this process")
    if jax.config.jax_cpu_collectives_implementation is None:  # older JAX: none on CPU
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
        )
    except ValueError as err:
        raise ValueError(
            f"cannot start a multi-process run ({err}); outside SLURM, Open MPI and Cloud TPU "
            "give the coordinator address, the number of processes and this process's id "
            f"(or set ${COORDINATOR_ENV}, ${NUM_PROCESSES_ENV}, ${PROCESS_ID_ENV})"
        ) from None
    return process_info()


def is_initialized() -> bool:
    """Whether this process joined a multi-process run through JAX's distributed runtime."""
    return jax.distributed.is_initialized()


def is_primary() -> bool:
    """Whether this is process 0, the one that writes logs and prints progress."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process has reached the barrier ``name`` (nothing with one process).

    Every process must call the same barriers in the same order.
    """
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"jnet2net:{name}")


def primary_flag(value: bool) -> bool:
    """Process 0's ``value`` in every process (a collective: every process calls it)."""
    if jax.process_count() == 1:
        return bool(value)
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.int32(bool(value))))


class PrimaryFailed(RuntimeError):
    """Raised in the other processes when process 0 failed a step they all wait for."""


@contextlib.contextmanager
def primary_locked(directory: str | os.PathLike, *, flag: str = "--out") -> Iterator[pathlib.Path]:
    """Holds the run directory's lock (:func:`jnet2net.rundir.locked`) in process 0 only.

    Every process enters; when process 0 cannot take the lock it raises what
    :func:`~jnet2net.rundir.locked` raised, and the other processes raise
    :class:`PrimaryFailed`, so no process waits for a partner that left. With one process
    this is :func:`~jnet2net.rundir.locked`.
    """
    from jnet2net import rundir

    if jax.process_count() == 1:
        with rundir.locked(directory, flag=flag) as path:
            yield path
        return
    with contextlib.ExitStack() as stack:
        error = None
        if is_primary():
            try:
                stack.enter_context(rundir.locked(directory, flag=flag))
            except OSError as err:
                error = err
        if not primary_flag(error is None):
            if error is not None:
                raise error
            raise PrimaryFailed(
                f"{flag} {directory}: process 0 could not take the run directory's lock (see "
                "its error)"
            )
        yield pathlib.Path(directory)


def host_array(x: Any) -> Any:
    """The whole value of array ``x`` in this process, as NumPy.

    Arrays whose shards all live in this process, and arrays replicated over every device,
    are read locally; an array split across processes is gathered, which is a collective
    (every process must call it for the same arrays in the same order). Non-JAX values go
    through ``np.asarray``.
    """
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    if x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
