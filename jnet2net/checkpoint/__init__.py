"""Orbax checkpoints that know which architecture they hold.

A checkpoint directory is an Orbax ``CheckpointManager`` directory, one sub-directory per
step; each step stores the module's config beside its arrays, so :func:`restore` needs
nothing but the path. Other files in ``DIR`` (``metrics.jsonl`` of a training run) are left
alone, so a run directory is also its checkpoint directory::

    teacher = jnet2net.checkpoint.restore("runs/teacher")
    grown = jnet2net.checkpoint.grow_checkpoint("runs/teacher", "runs/student0",
                                                key=key, widen={"widths": ...})

Modules: :mod:`~jnet2net.checkpoint.format` (what a step directory holds: the ``arch``
record, the RNG key codec, SHA-256 checksums), :mod:`~jnet2net.checkpoint.io` (save and
restore), :mod:`~jnet2net.checkpoint.steps` (the steps of a directory, stray step
directories) and :mod:`~jnet2net.checkpoint.workflows` (growth between checkpoints, damaged
steps set aside).
"""

from jnet2net.checkpoint.format import (
    ARCH,
    DATA_METADATA,
    FORMAT,
    STATE,
    CheckpointInfo,
    CorruptCheckpointError,
    PathLike,
    array_checksums,
    check_architecture,
)
from jnet2net.checkpoint.io import (
    Restored,
    checkpoint_info,
    epoch_saver,
    restore,
    restore_train_state,
    save,
    save_train_state,
)
from jnet2net.checkpoint.steps import all_steps, latest_step
from jnet2net.checkpoint.workflows import Grown, grow_checkpoint, set_aside_damaged
from jnet2net.compile import ONE_SHOT_COMPILER_OPTIONS, run_once  # noqa: F401 (moved; kept importable)

__all__ = [
    "ARCH",
    "DATA_METADATA",
    "FORMAT",
    "STATE",
    "CheckpointInfo",
    "CorruptCheckpointError",
    "Grown",
    "PathLike",
    "Restored",
    "all_steps",
    "array_checksums",
    "check_architecture",
    "checkpoint_info",
    "epoch_saver",
    "grow_checkpoint",
    "latest_step",
    "restore",
    "restore_train_state",
    "save",
    "save_train_state",
    "set_aside_damaged",
]
