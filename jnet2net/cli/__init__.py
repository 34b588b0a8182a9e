"""The ``jnet2net`` command line: ``demo``, ``train``, ``grow``, ``transfer``, ``eval``, ``plot``.

Examples::

    jnet2net demo                                   # offline, a minute or two on a CPU
    jnet2net train --arch resnet20 --width-mult 0.5 --dataset digits --epochs 5 --out runs/t
    jnet2net grow --from runs/t --widen 2x --deepen +1 --out runs/grown
    jnet2net train --from runs/grown --dataset digits --epochs 5 --out runs/student
    jnet2net transfer --from runs/t --to resnet32 --width-mult 0.5 --out runs/t32
    jnet2net train --arch vgg11 --dataset cifar10 --data-dir D --scale-down --out runs/ld
    jnet2net eval --from runs/student --dataset digits
    jnet2net plot runs/t runs/student --out curves.png

Every command is a thin layer over the library (``jnet2net.checkpoint``, ``jnet2net.widen`` /
``deepen``, ``jnet2net.train``, ``jnet2net.demo``); errors print one line,
``jnet2net COMMAND: error: ...``, and exit 2. Ctrl-C exits 130; ``train`` stops at the next
safe point on SIGINT (130) or SIGTERM (143) and prints how to resume.

This module holds the parser and ``main`` (errors, interrupts, signals); each command is a
module (``demo``, ``train``, ``grow``, ``transfer``, ``evaluate``, ``plot``) with its
``add_parser`` and ``cmd_*``; ``train_flags``, ``run_config`` and ``grow_at`` hold ``train``'s
flags, its config tree (``--config FILE``, ``--config.KEY=VALUE``) and growth schedule,
``resume`` what ``train --resume`` checks and restores, ``arch`` the architecture from
flags, ``datasets`` the data flags, ``args`` the argument types and shared flags, ``format``
how the command line speaks. Their public names are re-exported here. Modules import JAX
on first use only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from jnet2net import signals
from jnet2net.cli import demo, evaluate, grow, plot, train, transfer
from jnet2net.cli.arch import (
    check_growth_syntax,
    check_param_limit,
    count_params,
    describe,
    grown_model,
    growth_kwargs,
    model_from_args,
    parse_depths,
    parse_widths,
    scale_width,
    scaled_model,
    widening_sizes,
)
from jnet2net.cli.args import (
    EXAMPLES,
    GROW_NOISES,
    NOISES,
    PROG,
    check_out,
    count_at_least,
    parameter_count,
    positive_float,
)
from jnet2net.cli.datasets import (
    DATA_FLAGS,
    check_dataset_fits,
    data_metadata,
    load_eval_split,
    training_data,
)
from jnet2net.cli.demo import cmd_demo
from jnet2net.cli.evaluate import cmd_eval
from jnet2net.cli.format import (
    Parser,
    flag_names,
    format_record,
    in_flag_terms,
    print_line,
    quiet_third_party_logs,
    subparser,
)
from jnet2net.cli.grow import cmd_grow, grow_run
from jnet2net.cli.grow_at import GROW_KEYS, growth_events, parse_grow_at
from jnet2net.cli.plot import cmd_plot, default_labels, run_log, x_axes
from jnet2net.cli.resume import check_epochs_left, check_run_log, set_aside_damaged_checkpoints
from jnet2net.cli.run_config import run_config_from_args, split_config_overrides
from jnet2net.cli.train import cmd_train, scale_down_config, start_distributed, train_run
from jnet2net.cli.train_flags import (
    DEFAULT_AUGMENT,
    FLAG_DESTS,
    RESUME_FIELDS,
    train_config_from_args,
    train_flags,
)
from jnet2net.cli.transfer import cmd_transfer, transfer_run

__all__ = [
    "main",
    "build_parser",
    "parse_args",
    "COMMANDS",
    "FLAG_ALIASES",
    "TRACEBACK_ENV",
    "error_text",
    "interrupt_line",
    # args
    "PROG",
    "NOISES",
    "GROW_NOISES",
    "EXAMPLES",
    "check_out",
    "count_at_least",
    "parameter_count",
    "positive_float",
    # arch
    "check_growth_syntax",
    "check_param_limit",
    "count_params",
    "describe",
    "grown_model",
    "growth_kwargs",
    "model_from_args",
    "parse_depths",
    "parse_widths",
    "scale_width",
    "scaled_model",
    "widening_sizes",
    # datasets
    "DATA_FLAGS",
    "check_dataset_fits",
    "data_metadata",
    "load_eval_split",
    "training_data",
    # train, its flags and growth schedule
    "GROW_KEYS",
    "growth_events",
    "parse_grow_at",
    "DEFAULT_AUGMENT",
    "RESUME_FIELDS",
    "TRAIN_FLAGS",
    "FLAG_DESTS",
    "train_config_from_args",
    "train_flags",
    "run_config_from_args",
    "split_config_overrides",
    "check_epochs_left",
    "check_run_log",
    "cmd_train",
    "format_record",
    "print_line",
    "scale_down_config",
    "set_aside_damaged_checkpoints",
    "start_distributed",
    "train_run",
    # the other commands
    "cmd_demo",
    "cmd_eval",
    "cmd_grow",
    "grow_run",
    "cmd_plot",
    "default_labels",
    "run_log",
    "x_axes",
    "cmd_transfer",
    "transfer_run",
]

_USER_ERRORS = (ValueError, TypeError, OSError, FloatingPointError)
#: Set to print the traceback of an error instead of one line.
TRACEBACK_ENV = "JNET2NET_TRACEBACK"

#: Subcommands in --help order: ``(name, adds its parser)``.
COMMANDS: list[Callable[[Any], None]] = [
    demo.add_parser,
    train.add_parser,
    grow.add_parser,
    transfer.add_parser,
    evaluate.add_parser,
    plot.add_parser,
]


def _resume_hint(args: argparse.Namespace, argv: Sequence[str]) -> str:
    """How to continue an interrupted ``train`` (``''`` for other commands): ``--resume``
    after a checkpoint, else the same command again."""
    if args.command != "train":
        return ""
    from jnet2net import checkpoint

    try:
        step = checkpoint.latest_step(args.out)
    except Exception:  # a hint must not hide the interrupt
        step = None
    again = f"start again with: {PROG} {shlex.join(argv)}"
    if getattr(args, "scale_down", False):
        if step is not None:
            return f" after its checkpoint at step {step} was written (--scale-down runs end there)"
        return f" (a --scale-down run saves at its end only); {again}"
    if step is None:
        return f" before the first checkpoint; {again}"
    out = shlex.quote(str(args.out))
    return f" after the checkpoint at step {step}; resume with: {PROG} train --out {out} --resume"


def interrupt_line(args: argparse.Namespace, argv: Sequence[str], err: BaseException) -> str:
    """``jnet2net COMMAND: interrupted [by SIGTERM]`` and, for ``train``, how to continue."""
    by = f" by {err.name}" if isinstance(err, signals.Interrupted) else ""
    return f"{PROG} {args.command}: interrupted{by}{_resume_hint(args, argv)}"


def _deferred_signals(args: argparse.Namespace, argv: Sequence[str]) -> Any:
    """``train`` stops at safe points on SIGINT/SIGTERM (a second one stops it at once);
    other commands keep Python's Ctrl-C."""
    if args.command != "train":
        return contextlib.nullcontext()

    def on_repeat(signum: int) -> None:
        line = interrupt_line(args, argv, signals.Interrupted(signum))
        print(f"{line} (a second signal: stopped at once)", file=sys.stderr)

    return signals.deferred_signals(on_repeat)


def _drop_closed_loop_reports(report: Any) -> None:
    """``sys.unraisablehook`` that drops the "Event loop is closed" reports Orbax's reader
    threads print (dozens of tracebacks) after a failed read of a damaged checkpoint, whose
    failure the command reports in one line."""
    if isinstance(report.exc_value, RuntimeError) and "Event loop is closed" in str(
        report.exc_value
    ):
        return
    sys.__unraisablehook__(report)


#: Library names of settings -> the ``dest`` of the flag that sets them, where they differ.
FLAG_ALIASES = dict(FLAG_DESTS)


def __getattr__(name: str) -> Any:
    if name == "TRAIN_FLAGS":  # made from TrainConfig on first use (which imports JAX)
        return train_flags()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def error_text(err: BaseException, command_parser: argparse.ArgumentParser | None) -> str:
    """The message of a user error, with the library's names of settings as the flags of
    ``command_parser`` (``TrainConfig.learning_rate`` -> ``--lr``)."""
    if command_parser is None:
        return str(err)
    return in_flag_terms(str(err), flag_names(command_parser, FLAG_ALIASES))


def build_parser() -> argparse.ArgumentParser:
    """The ``jnet2net`` parser with one sub-parser per command."""
    from jnet2net import __version__

    parser = Parser(
        prog=PROG,
        description="Net2Net growth, weight reuse and scale-down for Flax CNNs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'jnet2net COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """``argv`` parsed by ``parser`` (:func:`build_parser`), the ``--config.KEY=VALUE`` items
    of a command with ``--config`` in ``args.config_overrides``; anything else unknown is
    an error of the command's parser (``jnet2net train: error: ...``, exit 2)."""
    args, unknown = parser.parse_known_args(argv)
    if hasattr(args, "config_overrides"):
        try:
            args.config_overrides, unknown = split_config_overrides(unknown)
        except ValueError as err:
            subparser(parser, args.command).error(str(err))
    if unknown:
        subparser(parser, args.command).error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``jnet2net ARGV``; returns the exit status.

    Errors print ``jnet2net COMMAND: error: ...`` and return 2 (argparse's status for bad
    arguments); an interrupt prints one line and returns 130 (``train``: 130 for SIGINT, 143
    for SIGTERM, see :mod:`jnet2net.signals`). ``JNET2NET_TRACEBACK=1`` raises instead, and
    leaves the warnings of absl and matplotlib on (otherwise quiet).
    """
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(parser, argv)
    sys.unraisablehook = _drop_closed_loop_reports
    if not os.environ.get(TRACEBACK_ENV):
        quiet_third_party_logs()
    start = time.perf_counter()
    try:
        with _deferred_signals(args, argv):
            status = args.func(args)
            signals.check_interrupt()
    except KeyboardInterrupt as err:
        if os.environ.get(TRACEBACK_ENV):
            raise
        sys.stdout.flush()
        print(interrupt_line(args, argv, err), file=sys.stderr)
        return err.status if isinstance(err, signals.Interrupted) else 130
    except Exception as err:
        if os.environ.get(TRACEBACK_ENV):
            raise
        text = (
            error_text(err, subparser(parser, args.command))
            if isinstance(err, _USER_ERRORS)
            else f"{type(err).__name__}: {err} ({TRACEBACK_ENV}=1 shows the traceback)"
        )
        sys.stdout.flush()
        print(f"{PROG} {args.command}: error: {text}", file=sys.stderr)
        return 2
    if args.command != "plot":  # stderr: stdout holds results only (eval --json: JSON only)
        print(f"[{args.command} took {time.perf_counter() - start:.1f} s]", file=sys.stderr)
    return status
