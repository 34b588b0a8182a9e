"""Argument types and the flags several commands share: ``--from``/``--step``, ``--max-params``,
``--out`` checks, and the examples that end each command's ``--help``."""

from __future__ import annotations

import argparse
import json
import math
import pathlib
from collections.abc import Callable
from typing import Any

PROG = "jnet2net"
#: The ``--noise`` choices of ``transfer`` (replica mappings only).
NOISES = ("split", "none", "paper")
#: The ``--noise`` choices of ``grow``: ``transfer``'s and ``'fresh'`` units.
GROW_NOISES = (*NOISES, "fresh")
#: The config tree a run trains with, written into its directory (``train --config`` reads it).
CONFIG_FILE = "config.json"
#: What a run directory may hold besides its checkpoint steps.
RUN_FILES = ("metrics.jsonl", CONFIG_FILE)

#: The examples that end each command's ``--help``.
EXAMPLES = {
    "demo": "example:\n  jnet2net demo --out runs/demo",
    "train": (
        "examples:\n"
        "  jnet2net train --arch resnet20 --width-mult 0.5 --dataset digits --epochs 5 "
        "--out runs/t\n"
        "  jnet2net train --from runs/grown --dataset digits --epochs 5 --out runs/student\n"
        "  jnet2net train --resume --out runs/t --epochs 10\n"
        "  jnet2net train --config configs/resnet20_digits.py --config.train.epochs=3 "
        "--out runs/c"
    ),
    "grow": "example:\n  jnet2net grow --from runs/t --widen 2x --deepen +1 --out runs/grown",
    "transfer": (
        "example:\n  jnet2net transfer --from runs/t --to resnet32 --width-mult 0.5 --out runs/t32"
    ),
    "eval": "example:\n  jnet2net eval --from runs/student --dataset digits --json",
    "plot": (
        "example:\n  jnet2net plot runs/t runs/student --labels teacher,student --x steps,flops "
        "--out curves.png"
    ),
}


def count_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: an int that is at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def positive_float(text: str) -> float:
    """An argparse ``type``: a finite float > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text!r}")
    return value


def check_out(out: str | pathlib.Path) -> pathlib.Path:
    """``--out`` of ``train``/``grow``/``transfer``: a new or empty directory, or a run directory.

    Raises:
      FileExistsError: ``out`` is a file.
      ValueError: ``out`` is a directory with other contents but no checkpoint (a source
        folder, a checkpoint's step directory, ...), which a run would write into.
    """
    from jnet2net import checkpoint

    path = pathlib.Path(out)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"--out {path} exists and is not a directory; choose a directory")
    if path.is_dir() and not checkpoint.all_steps(path):
        foreign = sorted(
            p.name
            for p in path.iterdir()
            if p.name not in RUN_FILES
            and not p.name.startswith(".")
            and ".orbax-checkpoint-tmp" not in p.name
        )
        if foreign:
            listed = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise ValueError(
                f"--out {path} is a directory that holds no run (it has {listed}); choose a "
                "new or empty directory"
            )
    return path


# --- grow ------------------------------------------------------------------------------


def add_source_args(p: argparse.ArgumentParser) -> None:
    """``--from CKPT`` (into ``args.source``) and ``--step N`` of a command that restores."""
    p.add_argument(
        "--from", dest="source", metavar="CKPT", required=True, help="checkpoint (run) directory"
    )
    p.add_argument(
        "--step",
        metavar="N",
        type=count_at_least(0),
        default=None,
        help="step to restore (default: latest)",
    )


def parameter_count(text: str) -> int:
    """An argparse ``type``: a count >= 1 written as an int or like ``2e9``."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 1 and value == int(value)):
        raise argparse.ArgumentTypeError(f"expected a count such as 500000000 or 2e9, got {text!r}")
    return int(value)


def add_max_params(p: Any) -> None:
    from jnet2net.models.size import DEFAULT_MAX_PARAMS

    p.add_argument(
        "--max-params",
        metavar="N",
        type=parameter_count,
        default=DEFAULT_MAX_PARAMS,
        help=f"refuse a network with more parameters (default {DEFAULT_MAX_PARAMS:.0e}); it is "
        "sized from shapes before anything is allocated",
    )


def json_object(text: str, flag: str) -> dict[str, Any]:
    """``text`` parsed as a JSON object; a one-line ValueError naming ``flag`` otherwise."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{flag} is not valid JSON ({err}): {text!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{flag} must be a JSON object, got {text!r}")
    return value
