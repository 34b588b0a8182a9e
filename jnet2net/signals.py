"""SIGINT and SIGTERM turned into an exception raised only at safe points.

A KeyboardInterrupt raised by Python's default handler lands wherever the main thread is,
e.g. inside an XLA compile (JAX polls for signals there) or an Orbax save; the interpreter
can then crash at exit. Within :func:`deferred_signals` a handler only records the signal,
and :func:`check_interrupt`, called where nothing is half done (between training steps,
after a checkpoint is written), raises :class:`Interrupted`. A second signal does not wait:
``on_repeat`` runs and the process exits at once, without the interpreter's teardown.

    with deferred_signals():
        for step in steps:
            check_interrupt()
            train_step()
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

#: The signals :func:`deferred_signals` defers (Ctrl-C; what a scheduler's preemption sends).
SIGNALS = (signal.SIGINT, signal.SIGTERM)

_received: list[int] = []


class Interrupted(KeyboardInterrupt):
    """A deferred SIGINT or SIGTERM, raised by :func:`check_interrupt`."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def name(self) -> str:
        """``'SIGINT'`` or ``'SIGTERM'``."""
        return signal.Signals(self.signum).name

    @property
    def status(self) -> int:
        """The shell's exit status for the signal: 128 + its number (130, 143)."""
        return exit_status(self.signum)


def exit_status(signum: int) -> int:
    """128 + ``signum``: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + int(signum)


def pending_signal() -> int | None:
    """The first signal recorded by the active :func:`deferred_signals`, else ``None``."""
    return _received[0] if _received else None


def check_interrupt() -> None:
    """Raises :class:`Interrupted` when a deferred signal has arrived."""
    if _received:
        raise Interrupted(_received[0])


def exit_now(signum: int) -> None:
    """Flushes stdout and stderr and ends the process with :func:`exit_status` at once."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(exit_status(signum))


@contextlib.contextmanager
def deferred_signals(on_repeat: Callable[[int], None] | None = None) -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM are recorded instead of raised.

    Args:
      on_repeat: called with the signal number when a second signal arrives (e.g. to print
        a line); the process then exits at once with ``128 + signum``.

    Outside the main thread (where handlers cannot be set) the block runs unchanged. The
    previous handlers come back on exit, and the recorded signal is forgotten.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def record(signum: int, frame: object) -> None:
        if _received:
            if on_repeat is not None:
                with contextlib.suppress(Exception):  # e.g. a print into a busy stream
                    on_repeat(signum)
            exit_now(signum)
        _received.append(signum)

    previous = {sig: signal.signal(sig, record) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _received.clear()
