"""Learning curves of training runs from their JSONL logs (one record per epoch).

Test accuracy is drawn against one or more x axes (:data:`X_AXES`): training steps,
epochs, cumulative training FLOPs (``train_flops``) or training seconds (``train_s``, else
the chained ``wall_s``). Growth events (``{"event": "grow", ...}`` records) are no points
of a curve; they are marked as dotted vertical lines where the axis places them.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

#: The x axes :func:`plot_runs` can draw test accuracy against.
X_AXES = ("steps", "epochs", "flops", "seconds")
X_LABELS = {
    "steps": "training step",
    "epochs": "epoch",
    "flops": "training FLOPs",
    "seconds": "training seconds",
}
#: The x axes :func:`plot_runs` draws when not told.
DEFAULT_X = ("steps", "seconds")


class Curve(NamedTuple):
    """Test accuracy of one run, one entry per epoch record, against its x axes.

    Attributes:
      label: legend label.
      step: ``(n,)`` global step at each record.
      wall_s: ``(n,)`` wall seconds, chained over the restarts of resumed runs.
      test_acc: ``(n,)`` test accuracy.
      epoch: ``(n,)`` epoch of each record; ``None`` when a record lacks it.
      train_flops: ``(n,)`` cumulative training FLOPs; ``None`` when a record lacks them.
      train_s: ``(n,)`` cumulative seconds of training steps (compiles excluded); ``None``
        when a record lacks them.
      events: the log's growth event records (``{"event": "grow", ...}``), in order.
      source: the log the curve was read from.
    """

    label: str
    step: np.ndarray
    wall_s: np.ndarray
    test_acc: np.ndarray
    epoch: np.ndarray | None = None
    train_flops: np.ndarray | None = None
    train_s: np.ndarray | None = None
    events: tuple[dict[str, Any], ...] = ()
    source: str = ""


def read_curve(path: str | os.PathLike, label: str | None = None) -> Curve:
    """The test-accuracy curve of one JSONL run log written by ``jnet2net.train.fit``.

    Records without ``test_acc`` and event records (``"event"``) are no points; growth
    events are kept in ``Curve.events``. A resumed run that appended to the log restarts
    its ``wall_s`` clock: a record that says ``"resumed": true`` (``fit`` marks the first
    record of a resumed run), whose ``step`` is not past the one before, or whose
    ``wall_s`` is smaller than the one before starts a new segment, whose clock continues
    from the previous segment's total. ``train_s`` and ``train_flops`` are cumulative over
    resumes already.

    Raises:
      ValueError: a line that is not a JSON object, or the log has no record with
        ``step``, ``wall_s`` and ``test_acc``.
    """
    path = pathlib.Path(path)
    every = _read_records(path)
    records = [
        r
        for r in every
        if "event" not in r and r.get("test_acc") is not None and "step" in r and "wall_s" in r
    ]
    if not records:
        raise ValueError(f"{path} holds no epoch record with 'step', 'wall_s' and 'test_acc'")
    wall, offset = [], 0.0
    for i, record in enumerate(records):
        if i and restarts(records[i - 1], record):
            offset = wall[-1]  # a resumed segment starts its clock again
        wall.append(offset + record["wall_s"])
    return Curve(
        label or path.stem,
        np.array([r["step"] for r in records]),
        np.array(wall),
        np.array([r["test_acc"] for r in records], np.float64),
        epoch=_column(records, "epoch"),
        train_flops=_column(records, "train_flops"),
        train_s=_column(records, "train_s"),
        events=tuple(r for r in every if r.get("event") == "grow"),
        source=str(path),
    )


def restarts(before: dict[str, Any], record: dict[str, Any]) -> bool:
    """Whether epoch ``record`` starts a new process's segment of a log, after ``before``:
    it says ``"resumed": true``, its step is not past ``before``'s, or its clock is behind."""
    return (
        record.get("resumed") is True
        or record["step"] <= before["step"]
        or record["wall_s"] < before["wall_s"]
    )


def _column(records: list[dict[str, Any]], key: str) -> np.ndarray | None:
    """``records``' numbers under ``key``, or ``None`` when one lacks it."""
    values = [r.get(key) for r in records]
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        return None
    return np.array(values)


def _check_x(x: str) -> str:
    if x not in X_AXES:
        raise ValueError(f"x must be among {X_AXES}, got {x!r}")
    return x


def x_values(curve: Curve, x: str) -> np.ndarray:
    """The ``(n,)`` positions of ``curve``'s points on x axis ``x`` (one of :data:`X_AXES`).

    ``'seconds'`` are ``train_s`` when every record has them, else the chained ``wall_s``.

    Raises:
      ValueError: an unknown ``x``, or records without the field it needs.
    """
    _check_x(x)
    if x == "steps":
        return curve.step
    if x == "seconds":
        return curve.wall_s if curve.train_s is None else curve.train_s
    values, field = (curve.epoch, "epoch") if x == "epochs" else (curve.train_flops, "train_flops")
    if values is None:
        raise ValueError(
            f"{curve.source or curve.label}: an epoch record has no '{field}', which x={x!r} "
            "plots (logs of jnet2net.train.fit runs that count it have it)"
        )
    return values


def event_x(curve: Curve, x: str) -> np.ndarray:
    """Positions of ``curve``'s growth events on x axis ``x``; events without one are left out.

    On ``'seconds'``, events are placed by their ``train_s`` only when the curve's points
    are (wall time does not place them).
    """
    key = {"steps": "step", "epochs": "epoch", "flops": "train_flops", "seconds": "train_s"}
    field = key[_check_x(x)]
    if x == "seconds" and curve.train_s is None:
        return np.zeros(0)
    values = [e.get(field) for e in curve.events]
    return np.array(
        [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)], np.float64
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


def _x_axes(x: str | Sequence[str]) -> tuple[str, ...]:
    axes = (x,) if isinstance(x, str) else tuple(x)
    if not axes:
        raise ValueError(f"x names no axis; pass some of {X_AXES}")
    return tuple(_check_x(a) for a in axes)


def plot_runs(
    run_paths: Sequence[str | os.PathLike],
    out_png: str | os.PathLike,
    labels: Sequence[str] | None = None,
    *,
    x: str | Sequence[str] = DEFAULT_X,
    title: str | None = None,
) -> pathlib.Path:
    """Draws test accuracy of several runs against each x axis in ``x``, one panel each.

    Args:
      run_paths: JSONL logs written by ``fit`` (``TrainConfig.log_path``).
      out_png: the image to write (parent folders are created; ``.png`` is added to a
        name without a suffix, another suffix picks another format, e.g. ``.pdf``).
      labels: one legend label per run (default: the file names).
      x: an axis of :data:`X_AXES` or several (default: steps, then seconds). Growth
        events are dotted vertical lines in their run's colour.
      title: the figure's title (default: :func:`default_title` of the labels).

    Returns:
      The path of the written image.

    Raises:
      ValueError: no runs, a label count that differs, ``out_png`` a directory, an
        unknown axis, a log without accuracy records (see :func:`read_curve`), or without
        the field an axis needs (see :func:`x_values`).
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
    axes_names = _x_axes(x)
    curves = [
        read_curve(path, None if labels is None else labels[i]) for i, path in enumerate(run_paths)
    ]
    points = [[x_values(curve, name) for name in axes_names] for curve in curves]
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5 * len(axes_names), 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    panels = np.atleast_1d(figure.subplots(1, len(axes_names), sharey=True))
    for curve, xs in zip(curves, points, strict=True):
        for panel, name, values in zip(panels, axes_names, xs, strict=True):
            (line,) = panel.plot(
                values, curve.test_acc, marker="o", markersize=3, label=curve.label
            )
            for position in event_x(curve, name):
                panel.axvline(position, color=line.get_color(), linestyle=":", alpha=0.7)
    for panel, name in zip(panels, axes_names, strict=True):
        panel.set_xlabel(_x_label(name, curves))
        panel.grid(True, alpha=0.3)
    panels[0].set_ylabel("test accuracy")
    panels[-1].legend(loc="lower right", fontsize="small")
    figure.suptitle(default_title([c.label for c in curves]) if title is None else title)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120)
    return out


def _x_label(x: str, curves: Sequence[Curve]) -> str:
    """The axis label; seconds say when some runs fall back to wall time."""
    if x != "seconds":
        return X_LABELS[x]
    walls = sum(curve.train_s is None for curve in curves)
    if walls == 0:
        return "training seconds (compiles excluded)"
    return "wall time (s)" if walls == len(curves) else "training seconds (wall time for old logs)"


def default_title(labels: Sequence[str]) -> str:
    """``'test accuracy: teacher vs. student'``; more than three runs are counted."""
    if len(labels) > 3:
        return f"test accuracy of {len(labels)} runs"
    return "test accuracy: " + " vs. ".join(labels)
