"""Training records as TensorBoard scalars, beside the JSONL log (optional: tensorboardX).

    with TensorBoardWriter("runs/r20/tensorboard") as board:
        train.fit(..., on_epoch_end=lambda state, record: board.write(record),
                  on_grow=lambda model, state, record: board.write(record))

``jnet2net train --tensorboard DIR`` does this; ``tensorboard --logdir DIR`` shows it.
"""

from __future__ import annotations

import math
import os
from typing import Any

#: Record keys that are not curves (the x axis, flags, nested data).
NOT_SCALARS = frozenset({"step", "event", "model", "resumed", "cut", "mode"})
#: Record keys shown under ``compute/``.
COMPUTE = frozenset(
    {
        "train_flops",
        "step_flops",
        "train_s",
        "compile_s",
        "grow_s",
        "background_compile_s",
        "wall_s",
        "epoch_s",
        "event_s",
        "first_step_s",
        "images_per_s",
    }
)
_NAMES = {"acc": "accuracy", "loss": "loss"}


def tag(key: str) -> str:
    """The TensorBoard tag of a record key: ``'train_acc'`` -> ``'train/accuracy'``,
    ``'train_flops'`` -> ``'compute/train_flops'``, others unchanged."""
    if key in COMPUTE:
        return f"compute/{key}"
    split, _, what = key.partition("_")
    if split in ("train", "test") and what in _NAMES:
        return f"{split}/{_NAMES[what]}"
    return key


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """``{tag: value}`` of a record's finite numbers; a growth event's under ``grow/``."""
    prefix = "grow/" if record.get("event") == "grow" else ""
    out = {}
    for key, value in record.items():
        if key in NOT_SCALARS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[f"{prefix}{key}" if prefix and key != "epoch" else tag(key)] = float(value)
    return out


class TensorBoardWriter:
    """Writes training records (``fit``'s JSONL records) as scalars at their ``step``.

    Args:
      logdir: the event files' directory (created).

    Raises:
      ImportError: tensorboardX is not installed (``pip install 'jnet2net[tensorboard]'``).
    """

    def __init__(self, logdir: str | os.PathLike) -> None:
        try:
            from tensorboardX import SummaryWriter
        except ImportError as err:
            raise ImportError(
                f"TensorBoard logs need tensorboardX: pip install 'jnet2net[tensorboard]' ({err})"
            ) from None
        self._writer = SummaryWriter(os.fspath(logdir))

    def write(self, record: dict[str, Any]) -> None:
        """Adds ``record``'s scalars at ``record['step']`` and flushes them to disk."""
        step = int(record["step"])
        for name, value in scalars(record).items():
            self._writer.add_scalar(name, value, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> TensorBoardWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
