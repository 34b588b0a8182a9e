"""The records ``fit`` writes: epoch means, compute totals, and the JSONL log of a run
that may resume."""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from jnet2net import distributed
from jnet2net.train.config import TrainConfig
from jnet2net.train.progress import filter_jsonl, read_jsonl

Record = dict[str, Any]

#: The cumulative compute counts every record carries (and a resumed run continues):
#: training FLOPs and seconds, compile seconds waited for, seconds of growth events and of
#: scale-down freezes, compiles overlapped with training.
TOTALS = ("train_flops", "train_s", "compile_s", "grow_s", "move_s", "background_compile_s")


def epoch_means(metrics: list[dict[str, jax.Array]]) -> dict[str, float]:
    """Means over an epoch of per-step scalar metrics (fetched from device once, stacked on
    the host: no eager device op per epoch)."""
    host = jax.device_get(metrics)
    return {k: float(np.mean(np.stack([m[k] for m in host]))) for k in host[0]}


def nonfinite_loss_error(
    epoch: int, lo: int, hi: int, lr: float, config: TrainConfig
) -> FloatingPointError:
    """The error raised when epoch ``epoch`` (steps ``lo..hi-1``) had a non-finite loss;
    it suggests only changes to settings the config does not have already."""
    advice = [f"a lower learning_rate (now {config.learning_rate:g})"]
    if config.warmup_epochs == 0:
        advice.append("warmup_epochs > 0")
    if config.compute_dtype != "float32":
        advice.append(f"compute_dtype=float32 (now {config.compute_dtype})")
    return FloatingPointError(
        f"training diverged: the mean training loss of epoch {epoch} (steps {lo}..{hi - 1}, "
        f"learning rate {lr:.4g}) is not finite. Try {' or '.join(advice)}."
    )


def drop_later_records(log_path: str, step: int) -> None:
    """Rewrites a JSONL log without the records after ``step``, event and summary records
    at ``step`` (the resumed run makes them again) and unreadable lines.

    A run resumed at ``step`` logs those epochs again; they are left over when it stopped
    between logging an epoch and saving its checkpoint, or when it resumes an earlier one.
    """

    def keep(record: Record) -> bool:
        at = record.get("step")
        if not isinstance(at, int):
            return True
        return at < step or (at == step and "event" not in record and "summary" not in record)

    filter_jsonl(log_path, keep)


def start_log(log_path: str, step: int) -> dict[str, float]:
    """Readies a run's JSONL log for a run that starts at ``step``; returns the compute
    totals to continue (:func:`logged_totals`, ``{}`` at step 0).

    At step 0 an old log is removed, later the records after ``step`` are dropped
    (:func:`drop_later_records`). With several processes only process 0 changes the file;
    the others read it after a barrier.
    """
    if distributed.is_primary() and os.path.exists(log_path):
        if step == 0:
            os.remove(log_path)
        else:
            drop_later_records(log_path, step)
    distributed.barrier("start_log")
    if step == 0 or not os.path.exists(log_path):
        return {}
    return logged_totals(log_path, step)


def logged_totals(log_path: str, step: int) -> dict[str, float]:
    """The compute totals of the last record at or before ``step`` in a JSONL log (read
    after :func:`drop_later_records`, which leaves only readable objects)."""
    totals: dict[str, float] = {}
    for record in read_jsonl(log_path):
        at = record.get("step")
        if isinstance(at, int) and at <= step and "train_flops" in record:
            totals = {k: float(v) for k, v in record.items() if k in TOTALS and v is not None}
    return totals


def progress_note(record: Record, epochs: int) -> str:
    """``epoch 2/8 loss 0.512 test_acc 0.871``: an epoch record for the progress bar."""
    text = f"epoch {record['epoch']:.4g}/{epochs} loss {record['train_loss']:.3f}"
    if record["test_acc"] is not None:
        text += f" test_acc {record['test_acc']:.3f}"
    return text
