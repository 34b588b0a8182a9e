"""``jnet2net plot``: training curves of runs (their ``metrics.jsonl``) into one PNG."""

from __future__ import annotations

import argparse
import pathlib
from collections.abc import Sequence
from typing import Any

from jnet2net.cli.args import EXAMPLES
from jnet2net.cli.format import HelpFormatter


def add_parser(sub: Any) -> None:
    """Adds the ``plot`` sub-parser."""
    p = sub.add_parser(
        "plot",
        formatter_class=HelpFormatter,
        epilog=EXAMPLES["plot"],
        help="plot training curves of runs",
        description=(
            "Plot the test accuracy of runs (their metrics.jsonl) against training steps, "
            "epochs, training FLOPs or seconds into one PNG, one panel per --x axis; growth "
            "events are dotted vertical lines."
        ),
    )
    p.add_argument("runs", metavar="RUN", nargs="+", help="run directories or metrics.jsonl files")
    p.add_argument("--labels", metavar="A,B,..", default=None, help="comma-separated legend labels")
    p.add_argument(
        "--x",
        metavar="AXES",
        type=x_axes,
        default=("steps", "seconds"),
        help=(
            "comma-separated x axes among steps, epochs, flops (train_flops), seconds "
            "(train_s, else wall time); default: steps,seconds"
        ),
    )
    p.add_argument(
        "--title", metavar="TEXT", default=None, help="figure title (default: the run labels)"
    )
    p.add_argument("--out", metavar="PNG", default="curves.png", help="default: curves.png")
    p.set_defaults(func=cmd_plot)


def x_axes(text: str) -> tuple[str, ...]:
    """``--x``: ``'flops,epochs'`` -> ``('flops', 'epochs')``; argparse error for others."""
    from jnet2net.plot import X_AXES

    axes = tuple(a.strip() for a in text.split(","))
    for axis in axes:
        if axis not in X_AXES:
            raise argparse.ArgumentTypeError(
                f"unknown axis {axis!r}; choose from {', '.join(X_AXES)}"
            )
    return axes


def run_log(path: str | pathlib.Path) -> pathlib.Path:
    """A run directory's ``metrics.jsonl``, or ``path`` itself when it is a file."""
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (pass run directories or JSONL logs)")
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path} is not a JSONL metrics log: not UTF-8 text (byte {err.start}); pass run "
            "directories or their metrics.jsonl"
        ) from None
    return path


def default_labels(runs: Sequence[str]) -> list[str]:
    """Legend labels: a run directory's name (``.`` included), else a log's file stem."""
    return [
        pathlib.Path(r).resolve().name if pathlib.Path(r).is_dir() else pathlib.Path(r).stem
        for r in runs
    ]


def cmd_plot(args: argparse.Namespace) -> int:
    """``jnet2net plot``."""
    from jnet2net import plot

    if args.labels is None:
        labels = default_labels(args.runs)
    else:
        labels = [s.strip() for s in args.labels.split(",")]
    if len(labels) != len(args.runs):
        raise ValueError(f"--labels has {len(labels)} entries for {len(args.runs)} runs")
    if pathlib.Path(args.out).is_dir():
        example = pathlib.Path(args.out) / "curves.png"
        raise ValueError(f"--out {args.out} is a directory; name the image, e.g. {example}")
    logs = [run_log(r) for r in args.runs]
    out = plot.plot_runs(logs, args.out, labels=labels, x=args.x, title=args.title)
    print(f"wrote {out}")
    return 0
