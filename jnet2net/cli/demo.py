"""``jnet2net demo``: teacher -> grow -> student vs. scratch on the bundled digits."""

from __future__ import annotations

import argparse
from typing import Any

from jnet2net.cli.args import EXAMPLES
from jnet2net.cli.format import HelpFormatter


def add_parser(sub: Any) -> None:
    """Adds the ``demo`` sub-parser."""
    p = sub.add_parser(
        "demo",
        formatter_class=HelpFormatter,
        epilog=EXAMPLES["demo"],
        help="teacher -> grow -> student vs. scratch on the bundled digits (offline)",
        description=(
            "Train a small teacher on scikit-learn's bundled 8x8 digits, grow it wider and "
            "deeper (function preserved), then train the grown student and the same "
            "architecture from scratch with the same budget; print a table and write the "
            "training curves. Needs no download."
        ),
    )
    p.add_argument(
        "--out", metavar="DIR", default="runs/demo", help="runs, curves.png (default: runs/demo)"
    )
    p.add_argument(
        "--epochs", metavar="N", type=int, default=None, help="epochs of each training run"
    )
    p.add_argument("--seed", metavar="N", type=int, default=0, help="seeds every run")
    p.add_argument("--quick", action="store_true", help="a few steps only (for tests)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    """``jnet2net demo``."""
    from jnet2net import demo

    demo.run_demo(args.out, quick=args.quick, epochs=args.epochs, seed=args.seed)
    return 0
