"""One writer per run directory: an OS lock held while a process writes there.

``jnet2net train`` (and ``grow``/``transfer``) hold ``DIR/.jnet2net.lock`` with ``fcntl.flock``
while they write ``DIR``; a second writer fails at once with the holder's pid. The kernel
drops the lock when its holder exits, however it exits (``kill -9`` included), so a lock is
never stale. Taking the lock also proves that ``DIR`` can be written, before any work::

    with jnet2net.rundir.locked("runs/t"):
        ...  # train, save checkpoints, append metrics.jsonl
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import tempfile
from collections.abc import Iterator

LOCK_NAME = ".jnet2net.lock"


class RunDirectoryLocked(OSError):
    """Another process holds the run directory's lock."""


def holder_pid(directory: str | os.PathLike) -> int | None:
    """The pid written in ``directory``'s lock file, or ``None`` when there is none."""
    try:
        text = (pathlib.Path(directory) / LOCK_NAME).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


@contextlib.contextmanager
def locked(directory: str | os.PathLike, *, flag: str = "--out") -> Iterator[pathlib.Path]:
    """Holds ``directory``'s lock (creating the directory) for the ``with`` block.

    A directory this call created is removed again when the block leaves nothing in it but
    the lock file (a command that failed before writing anything).

    Args:
      directory: the run directory.
      flag: how messages name it.

    Raises:
      RunDirectoryLocked: another process holds the lock (the message names its pid).
      OSError: ``directory`` cannot be created or written (one line naming it).
    """
    path = pathlib.Path(directory)
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise OSError(f"{flag} {path} cannot be written: {err.strerror or err}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = holder_pid(path)
            raise RunDirectoryLocked(
                f"{flag} {path} is in use by another process (pid "
                f"{pid if pid is not None else 'unknown'}) that writes it; wait for it to end or "
                "choose another directory"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _check_writable(path, flag)
        try:
            yield path
        finally:
            if created:
                _remove_if_only_lock(path)
    finally:
        os.close(fd)


def _check_writable(path: pathlib.Path, flag: str) -> None:
    """Raises OSError unless a new file can be created in ``path``."""
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise OSError(f"{flag} {path} cannot be written: {err.strerror or err}") from None


def _remove_if_only_lock(path: pathlib.Path) -> None:
    try:
        if [p.name for p in path.iterdir()] == [LOCK_NAME]:
            (path / LOCK_NAME).unlink()
            path.rmdir()
    except OSError:
        pass
