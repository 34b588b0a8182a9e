"""Learning curves of training runs from their JSONL logs (one record per epoch)."""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np


class Curve(NamedTuple):
    """Test accuracy of one run against steps and wall time, one entry per epoch record."""

    label: str
    step: np.ndarray
    wall_s: np.ndarray
    test_acc: np.ndarray


def read_curve(path: str | os.PathLike, label: str | None = None) -> Curve:
    """The test-accuracy curve of one JSONL run log written by ``jnet2net.train.fit``.

    Records without ``test_acc`` are skipped. A log that a resumed run appended to
    restarts its ``wall_s``; such segments are chained so wall time keeps growing.

    Raises:
      ValueError: a line that is not a JSON object, or the log has no record with
        ``step``, ``wall_s`` and ``test_acc``.
    """
    path = pathlib.Path(path)
    records = [
        r
        for r in _read_records(path)
        if r.get("test_acc") is not None and "step" in r and "wall_s" in r
    ]
    if not records:
        raise ValueError(f"{path} holds no epoch record with 'step', 'wall_s' and 'test_acc'")
    wall, offset, previous = [], 0.0, 0.0
    for record in records:
        if record["wall_s"] < previous:  # a resumed segment starts its clock again
            offset = wall[-1]
        previous = record["wall_s"]
        wall.append(offset + record["wall_s"])
    return Curve(
        label or path.stem,
        np.array([r["step"] for r in records]),
        np.array(wall),
        np.array([r["test_acc"] for r in records], np.float64),
    )


def _read_records(path: pathlib.Path) -> list[dict]:
    """The JSON objects of a JSONL log; ValueError names the file and line of a bad one."""
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"{path} line {number} is not JSON ({err.msg}): {line.strip()[:80]!r}"
                ) from None
            if not isinstance(record, dict):
                raise ValueError(
                    f"{path} line {number} is not a JSON object: {line.strip()[:80]!r}"
                )
            records.append(record)
    return records


def plot_runs(
    run_paths: Sequence[str | os.PathLike],
    out_png: str | os.PathLike,
    labels: Sequence[str] | None = None,
) -> pathlib.Path:
    """Draws test accuracy against steps (left) and wall time (right) for several runs.

    Args:
      run_paths: JSONL logs written by ``fit`` (``TrainConfig.log_path``).
      out_png: the image to write (parent folders are created; ``.png`` is added to a
        name without a suffix, another suffix picks another format, e.g. ``.pdf``).
      labels: one legend label per run (default: the file names).

    Returns:
      The path of the written image.

    Raises:
      ValueError: no runs, a label count that differs, ``out_png`` a directory, or a log
        without accuracy records (see :func:`read_curve`).
    """
    out = pathlib.Path(out_png)
    if out.is_dir():
        raise ValueError(f"{out} is a directory; name the image, e.g. {out / 'curves.png'}")
    if out.suffix == "":
        out = out.with_name(out.name + ".png")
    if isinstance(run_paths, (str, os.PathLike)):
        run_paths = [run_paths]
    if not run_paths:
        raise ValueError("plot_runs needs at least one run log")
    if labels is not None and len(labels) != len(run_paths):
        raise ValueError(f"got {len(labels)} labels for {len(run_paths)} runs")
    curves = [
        read_curve(path, None if labels is None else labels[i]) for i, path in enumerate(run_paths)
    ]
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    by_step, by_time = figure.subplots(1, 2, sharey=True)
    for curve in curves:
        by_step.plot(curve.step, curve.test_acc, marker="o", markersize=3, label=curve.label)
        by_time.plot(curve.wall_s, curve.test_acc, marker="o", markersize=3, label=curve.label)
    by_step.set_xlabel("training step")
    by_time.set_xlabel("wall time (s)")
    by_step.set_ylabel("test accuracy")
    for axes in (by_step, by_time):
        axes.grid(True, alpha=0.3)
    by_time.legend(loc="lower right", fontsize="small")
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120)
    return out
