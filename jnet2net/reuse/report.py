"""What each destination leaf of a transfer got: one row per leaf, totals, JSON."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Literal, NamedTuple

Status = Literal["exact", "transformed", "partial", "fresh"]
STATUSES: tuple[Status, ...] = ("exact", "transformed", "partial", "fresh")


class LeafReport(NamedTuple):
    """One destination leaf.

    Attributes:
      path: ``'params/stage0_layer1/conv/kernel'``.
      shape: the destination shape.
      status: ``'exact'`` (a source leaf copied unchanged), ``'transformed'`` (every value
        computed from the source: replicated, split, folded, cropped, composed),
        ``'partial'`` (some values from the source, the rest new: a padded kernel, a head
        with more classes) or ``'fresh'`` (nothing from the source: an identity layer, a new
        block, a fresh initialisation).
      fraction: fraction of the leaf's values taken from the source, in ``[0, 1]``.
      source: path of the source leaf it came from, or ``None``.
      note: how it was made, e.g. ``'stage1_stream 8 -> 12 units: replicated'``.
    """

    path: str
    shape: tuple[int, ...]
    status: Status
    fraction: float
    source: str | None
    note: str

    @property
    def size(self) -> int:
        """Number of values."""
        return math.prod(self.shape)


def _check_row(row: LeafReport) -> None:
    """Raises ValueError unless the row's status, fraction and source agree."""
    where = f"report row {row.path} (shape {tuple(row.shape)})"
    if row.status not in STATUSES:
        raise ValueError(f"{where}: status must be one of {STATUSES}, got {row.status!r}")
    if not 0.0 <= row.fraction <= 1.0:  # also rejects NaN
        raise ValueError(f"{where}: fraction must be between 0 and 1, got {row.fraction!r}")
    if row.status == "fresh":
        if row.fraction != 0.0:
            raise ValueError(f"{where}: a fresh leaf has fraction 0, got {row.fraction!r}")
        if row.source is not None:
            raise ValueError(f"{where}: a fresh leaf has no source, got {row.source!r}")
        return
    if row.source is None:
        raise ValueError(f"{where}: a leaf with status {row.status!r} needs a source")
    if row.status == "partial" and not 0.0 < row.fraction < 1.0:
        raise ValueError(
            f"{where}: a partial leaf has a fraction strictly between 0 and 1, got {row.fraction!r}"
        )
    if row.status in ("exact", "transformed") and row.fraction != 1.0:
        raise ValueError(
            f"{where}: a leaf with status {row.status!r} has fraction 1, got {row.fraction!r}"
        )


def _percent(fraction: float) -> str:
    """``fraction`` as a whole percentage; a fraction strictly between 0 and 1 never shows as
    ``0%`` or ``100%``."""
    text = f"{100 * fraction:.0f}%"
    if 0.0 < fraction < 1.0 and text == "0%":
        return "<1%"
    if 0.0 < fraction < 1.0 and text == "100%":
        return ">99%"
    return text


@dataclasses.dataclass(frozen=True)
class TransferReport:
    """The report of one transfer; ``str(report)`` is a table.

    Raises ValueError (naming the leaf) for a row whose status, fraction and source disagree:
    ``exact``/``transformed`` need fraction 1, ``partial`` one in ``(0, 1)``, ``fresh`` 0 and
    no source.

    Attributes:
      src: the source architecture, one line.
      dst: the destination architecture, one line.
      rows: one :class:`LeafReport` per destination leaf (``params`` and ``batch_stats``).
      approximations: every change that alters the function (dropped layers, narrowed
        groups, cropped kernels, repeated layers, other classes); empty when exact.
    """

    src: str
    dst: str
    rows: tuple[LeafReport, ...]
    approximations: tuple[str, ...]

    def __post_init__(self) -> None:
        for row in self.rows:
            _check_row(row)

    @property
    def function_preserving(self) -> bool:
        """Whether the destination computes the source's function (eval mode, < 1e-5)."""
        return not self.approximations

    @property
    def parameter_count(self) -> int:
        """Values in the destination's ``params`` collection."""
        return sum(row.size for row in self.rows if row.path.startswith("params/"))

    @property
    def reused_parameters(self) -> float:
        """Values of ``params`` taken from the source (sum of ``fraction * size``)."""
        return sum(row.fraction * row.size for row in self.rows if row.path.startswith("params/"))

    @property
    def reused_fraction(self) -> float:
        """``reused_parameters / parameter_count``."""
        return self.reused_parameters / max(self.parameter_count, 1)

    def totals(self) -> dict[str, tuple[int, int]]:
        """``{status: (leaves, values)}`` over every row, all four statuses present."""
        totals = {status: (0, 0) for status in STATUSES}
        for row in self.rows:
            leaves, values = totals[row.status]
            totals[row.status] = (leaves + 1, values + int(row.size))
        return totals

    def table(self) -> str:
        """One line per leaf, then totals and the function-preservation flag."""
        header = ("leaf", "shape", "status", "reused", "from / how")
        lines = [
            (
                row.path,
                "x".join(map(str, row.shape)) or "()",
                row.status,
                _percent(row.fraction),
                "; ".join(part for part in (row.source, row.note) if part),
            )
            for row in self.rows
        ]
        widths = [max(len(line[i]) for line in [header, *lines]) for i in range(4)]
        text = [f"transfer {self.src}", f"      -> {self.dst}"]
        for line in [header, *lines]:
            cells = [cell.ljust(width) for cell, width in zip(line[:4], widths, strict=True)]
            text.append("  ".join([*cells, line[4]]).rstrip())
        totals = ", ".join(
            f"{status} {leaves} leaves / {values:,} values"
            for status, (leaves, values) in self.totals().items()
        )
        text.append(f"totals: {totals}")
        text.append(
            f"parameters: {self.reused_parameters:,.0f} of {self.parameter_count:,} from the "
            f"source ({100 * self.reused_fraction:.1f}%)"
        )
        if self.function_preserving:
            text.append("function-preserving: yes")
        else:
            text.append("function-preserving: no")
            text += [f"  - {reason}" for reason in self.approximations]
        return "\n".join(text)

    def __str__(self) -> str:
        return self.table()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: architectures, flag, approximations, totals and rows."""
        return {
            "src": self.src,
            "dst": self.dst,
            "function_preserving": self.function_preserving,
            "approximations": list(self.approximations),
            "totals": {status: list(pair) for status, pair in self.totals().items()},
            "parameter_count": int(self.parameter_count),
            "reused_parameters": float(self.reused_parameters),
            "reused_fraction": float(self.reused_fraction),
            "rows": [
                {
                    **row._asdict(),
                    "shape": [int(d) for d in row.shape],
                    "fraction": float(row.fraction),
                    "size": int(row.size),
                }
                for row in self.rows
            ],
        }

    def to_json(self, **kwargs: Any) -> str:
        """``json.dumps(self.to_dict(), **kwargs)``."""
        return json.dumps(self.to_dict(), **kwargs)
