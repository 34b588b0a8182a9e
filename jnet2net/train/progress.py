"""A small progress bar for long loops, and the JSONL metrics log."""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from typing import IO, Any

import numpy as np

FALSE_VALUES = ("", "0", "false", "no")
#: Seconds between the plain progress lines written where the bar is not shown.
LINE_EVERY_S = 30.0


def progress_enabled(setting: bool | None, stream: IO[str] | None = None) -> bool:
    """``setting``, or when ``None``: on for a terminal, off when ``$CI`` is set.

    ``$CI`` set to ``''``, ``'0'``, ``'false'`` or ``'no'`` (any case) counts as unset.
    """
    if setting is not None:
        return setting
    stream = sys.stderr if stream is None else stream
    in_ci = os.environ.get("CI", "").strip().lower() not in FALSE_VALUES
    return bool(getattr(stream, "isatty", lambda: False)()) and not in_ci


def progress_lines_enabled(setting: bool | None, stream: IO[str] | None = None) -> bool:
    """Whether plain progress lines replace the bar: ``setting`` is ``None`` and the bar is
    off (a log file, a pipe, CI)."""
    return setting is None and not progress_enabled(None, stream)


class ProgressBar:
    """``desc [#####-----] 50/100 12.3 it/s note`` redrawn in place, at most 10 times a second.

    With ``lines=True`` (where no bar is drawn: a log file), a plain line instead every
    :data:`LINE_EVERY_S` seconds: ``desc step 120/450 (27%) loss 0.412 8.1 it/s 1,037 img/s``,
    the loss of the last step whose ``metrics`` were passed to :meth:`update` and the rates
    since the previous line.

    Counts what the host has dispatched; JAX runs steps asynchronously, so the rate is
    exact only over whole epochs (where metrics are fetched).
    """

    def __init__(
        self,
        total: int,
        *,
        desc: str = "",
        enabled: bool = True,
        stream: IO[str] | None = None,
        lines: bool = False,
        offset: int = 0,
        batch_size: int | None = None,
    ) -> None:
        self.total = max(int(total), 0)
        self.desc = desc
        self.enabled = enabled
        self.lines = lines and not enabled
        self.stream = sys.stderr if stream is None else stream
        self.offset = offset
        self.batch_size = batch_size
        self.count = 0
        self.note = ""
        self._metrics: Any = None
        self._start = time.perf_counter()
        self._last_draw = 0.0
        self._last_line = self._start
        self._last_line_count = 0

    def update(self, n: int = 1, *, note: str | None = None, metrics: Any = None) -> None:
        """Advances by ``n``; ``note`` replaces the text after the counter; ``metrics`` (a
        step's ``{'loss': ...}``, on device) is read only when a line is written."""
        self.count += n
        if note is not None:
            self.note = note
        if metrics is not None:
            self._metrics = metrics
        now = time.perf_counter()
        if self.enabled and (now - self._last_draw > 0.1 or self.count >= self.total):
            self._last_draw = now
            self._draw(now)
        if self.lines and now - self._last_line >= LINE_EVERY_S:
            self._write_line(now)
            self._last_line = now

    def _write_line(self, now: float) -> None:
        """Writes one line; the rates are over the steps since the previous line."""
        step, end = self.offset + self.count, self.offset + self.total
        rate = (self.count - self._last_line_count) / max(now - self._last_line, 1e-9)
        self._last_line_count = self.count
        line = f"{self.desc} step {step}/{end} ({self.count / max(self.total, 1):.0%})"
        if self._metrics is not None and "loss" in self._metrics:
            line += f" loss {float(np.asarray(self._metrics['loss'])):.3f}"
        line += f" {rate:.1f} it/s"
        if self.batch_size:
            line += f" {rate * self.batch_size:,.0f} img/s"
        self.stream.write(line + "\n")
        self.stream.flush()

    def _draw(self, now: float) -> None:
        width = 24
        done = int(width * self.count / self.total) if self.total else width
        rate = self.count / max(now - self._start, 1e-9)
        line = (
            f"\r{self.desc} [{'#' * done}{'-' * (width - done)}] {self.count}/{self.total} "
            f"{rate:.1f} it/s {self.note}"
        )
        self.stream.write(line.ljust(100))
        self.stream.flush()

    def close(self) -> None:
        """Ends the line."""
        if self.enabled:
            self._draw(time.perf_counter())
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def append_jsonl(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Appends ``record`` as one strict JSON line to ``path`` (parent folders are created).

    NumPy scalars become Python numbers; NaN and infinities (a diverged loss, say) become
    ``null``, so every line parses with any JSON reader.
    """
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    line = json.dumps(_strict(record), sort_keys=False, allow_nan=False)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def _strict(value: Any) -> Any:
    """``value`` with NumPy scalars as Python ones and non-finite floats as ``None``."""
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _json_object(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def repair_jsonl(path: str | os.PathLike) -> str | None:
    """Readies a JSONL log for appending after its writer was killed.

    A last line without its newline that is not a JSON object (a write cut short) is
    removed and returned; ``None`` when nothing was removed.

    Raises:
      ValueError: another line is not a JSON object (naming the file and line): dropping it,
        or the epochs after it, would lose records without a word.
    """
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    dropped = None
    if lines and not lines[-1].endswith("\n") and _json_object(lines[-1]) is None:
        dropped = lines.pop()
    for number, line in enumerate(lines, 1):
        if line.strip() and _json_object(line) is None:
            raise ValueError(
                f"{os.fspath(path)} line {number} is not a JSON object ({line.strip()[:40]!r}); "
                "repair or delete that line"
            )
    if dropped is not None:
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(lines)
    return dropped


def filter_jsonl(path: str | os.PathLike, keep: Callable[[dict[str, Any]], bool]) -> None:
    """Rewrites a JSONL file with only the objects for which ``keep`` is true; the file is
    left untouched when nothing goes. A partial last line is dropped with a warning (see
    :func:`repair_jsonl`, which raises on any other unreadable line)."""
    dropped = repair_jsonl(path)
    if dropped is not None:
        message = f"dropped the partial last line of {os.fspath(path)}: {dropped[:60]!r}"
        warnings.warn(message, stacklevel=2)
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    kept = [
        line if line.endswith("\n") else line + "\n"
        for line in lines
        if keep(_json_object(line) or {})
    ]
    if len(kept) != len(lines):
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(kept)


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every JSON object of a JSONL file, skipping blank lines."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
