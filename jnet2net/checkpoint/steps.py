"""The steps of a checkpoint directory: which there are, which step a call means, stray ones.

Orbax takes every directory named like a step (``DIR/100``) for a checkpoint; these
functions list the steps, resolve ``step=None`` to the latest, and refuse step-named
directories that are not checkpoints. Moving damaged steps aside restores them, so
:func:`jnet2net.checkpoint.set_aside_damaged` is in :mod:`jnet2net.checkpoint.workflows`;
the run directory's writer lock is :mod:`jnet2net.rundir`.
"""

from __future__ import annotations

import pathlib

from jnet2net.checkpoint.format import ARCH, STATE, PathLike, abspath, manager


def all_steps(directory: PathLike) -> list[int]:
    """Steps saved in ``directory``, ascending; ``[]`` when it is missing or empty."""
    path = abspath(directory)
    if not path.is_dir():
        return []
    with manager(path) as opened:
        return sorted(opened.all_steps())


def latest_step(directory: PathLike) -> int | None:
    """The last saved step in ``directory``, or ``None`` when it holds no checkpoint."""
    steps = all_steps(directory)
    return steps[-1] if steps else None


def check_not_a_file(directory: pathlib.Path) -> None:
    """Raises FileExistsError when ``directory`` exists and is not a directory."""
    if directory.exists() and not directory.is_dir():
        raise FileExistsError(f"checkpoint directory {directory} exists and is not a directory")


def check_no_stray_steps(directory: pathlib.Path) -> None:
    """Raises ValueError when ``directory`` has step-named directories that are not checkpoints.

    Orbax takes every directory named like a step for a checkpoint (and ``max_to_keep``
    deletes old ones), so a user's ``DIR/100/`` would be lost or shadow the real steps.
    """
    if not directory.is_dir():
        return
    stray = sorted(
        int(p.name)
        for p in directory.iterdir()
        if p.is_dir()
        and p.name.isdigit()
        and not any((p / item).exists() for item in (ARCH, STATE, "_CHECKPOINT_METADATA"))
    )
    if stray:
        raise ValueError(
            f"{directory} holds directories named like checkpoint steps that are not "
            f"checkpoints: {', '.join(str(directory / str(n)) for n in stray)}; Orbax would take "
            "them for steps (and delete them to keep max_to_keep): move them away"
        )


def resolve_step(directory: pathlib.Path, step: int | None) -> tuple[int, list[int]]:
    """Resolves ``step`` (``None``: the latest) and checks that it exists."""
    if not directory.exists():
        raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint path {directory} is not a directory")
    with manager(directory) as opened:
        steps = sorted(opened.all_steps())
    if not steps:
        parent = directory.parent
        if directory.name.isdigit() and int(directory.name) in all_steps(parent):
            raise FileNotFoundError(
                f"{directory} is step {int(directory.name)} of the run {parent}: pass {parent} "
                f"(and step={int(directory.name)}, on the command line --step "
                f"{int(directory.name)})"
            )
        raise FileNotFoundError(
            f"{directory} holds no checkpoint (no finished step directories such as "
            f"{directory}/0); was the run interrupted before its first save?"
        )
    if step is None:
        return steps[-1], steps
    if step not in steps:
        raise FileNotFoundError(
            f"{directory} has no checkpoint at step {step}; it has steps {steps}"
        )
    return step, steps
