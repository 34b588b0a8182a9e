"""How the command line speaks: one-line argument errors, help with defaults, messages in
the command's flags, quiet third-party loggers, and the lines ``train`` prints."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Mapping
from typing import Any, NoReturn

#: Loggers of dependencies whose warnings are not the user's business in a CLI run.
QUIET_LOGGERS = ("absl", "matplotlib", "tensorflow_datasets")


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line, ``PROG: error: ...``, with a pointer
    to ``--help`` instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class HelpFormatter(argparse.HelpFormatter):
    """Wraps one-paragraph descriptions, keeps texts with line breaks (the examples) as
    written, and ends each option's help with its default, unless the help names one
    already or there is none (``None``, ``False``)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            not action.option_strings
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or "default" in text
        ):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def flag_names(parser: argparse.ArgumentParser, aliases: Mapping[str, str] = ()) -> dict[str, str]:
    """``{library name: '--flag'}`` for every option of ``parser`` (its ``dest``) and for
    ``aliases`` (``{library name: dest}``, e.g. ``{'learning_rate': 'lr'}``)."""
    names: dict[str, str] = {}
    for action in parser._actions:
        longs = [s for s in action.option_strings if s.startswith("--")]
        if longs and action.dest != "help":
            names[action.dest] = longs[0]
    for name, dest in dict(aliases).items():
        if dest in names:
            names[name] = names[dest]
    return names


def in_flag_terms(text: str, names: Mapping[str, str]) -> str:
    """``text`` (a library message) with the library's names of settings as ``names``' flags.

    ``TrainConfig.learning_rate`` -> ``--lr``; ``compute_dtype='float32'`` -> ``--dtype float32``;
    ``download=True`` -> ``--download``; a bare name with an underscore (``warmup_epochs``) ->
    its flag. Keyword arguments inside a call (``f(x, data_dir=DIR)``) stay as they are.
    """
    if not names:
        return text
    alternatives = "|".join(sorted((re.escape(n) for n in names), key=len, reverse=True))

    def dotted(match: re.Match[str]) -> str:
        return names[match.group(1)]

    def assigned(match: re.Match[str]) -> str:
        flag, value = names[match.group(1)], match.group(2)
        value = value[1:-1] if value[:1] in "'\"" and len(value) > 1 else value
        if value == "True":
            return flag
        return f"{flag} {value}" if value else flag

    text = re.sub(rf"\b(?:TrainConfig|config)\.({alternatives})\b", dotted, text)
    before = r"(?<![\w.(\-'\"/\\~])"  # not inside a word, a path, a quote or a call
    text = re.sub(
        rf"{before}(?<!, )({alternatives})=('[^']*'|\"[^\"]*\"|[^\s,;)]*)", assigned, text
    )
    bare = [re.escape(n) for n in names if "_" in n]
    if bare:
        pattern = "|".join(sorted(bare, key=len, reverse=True))
        text = re.sub(rf"{before}({pattern})(?![\w('\"=/\\-]|\.\w)", dotted, text)
    return text


def quiet_third_party_logs(level: int = logging.ERROR) -> None:
    """Raises the level of :data:`QUIET_LOGGERS` (absl's and matplotlib's warnings, ...)."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(level)
    try:  # absl routes through its own handler once initialised
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:  # pragma: no cover - absl comes with jax's dependencies
        pass


def subparser(parser: argparse.ArgumentParser, command: str) -> Any:
    """The sub-parser of ``command`` in ``parser`` (``None`` when there is none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(command)
    return None


def run_summary(history: list[dict[str, Any]]) -> str:
    """The line ``jnet2net train`` ends with: epochs and steps, the final and best test
    accuracy, and the run's compute (training FLOPs, seconds training, compiling, growing
    and in all, as its last record counts them), e.g. ``summary: 3 epochs (30 steps), test
    acc 0.600 at the end, best 0.625 at epoch 2; 5.5e+12 training FLOPs, 40.0 s training``."""
    records = [r for r in history if "event" not in r]
    if not records:
        return "summary: no steps trained"
    last = records[-1]
    text = f"summary: {last['epoch']:g} epochs ({last['step']} steps), "
    tested = [r for r in records if r.get("test_acc") is not None]
    if tested:
        best = max(tested, key=lambda r: r["test_acc"])
        text += f"test acc {tested[-1]['test_acc']:.3f} at the end, best {best['test_acc']:.3f}"
        text += f" at epoch {best['epoch']:g}"
    else:
        text += "no test set"
    costs = [
        (f"{last['train_flops']:.2g} training FLOPs" if last.get("train_flops") else None),
        *(
            f"{last[key]:.1f} s {what}" if last.get(key) else None
            for key, what in (
                ("train_s", "training"),
                ("compile_s", "compiling"),
                ("grow_s", "growing"),
                ("wall_s", "wall"),
            )
        ),
    ]
    text += "; " + ", ".join(c for c in costs if c)
    events = sum(1 for r in history if r.get("event") == "grow")
    if events:
        text += f"; {events} growth event{'s' if events > 1 else ''}"
    return text


def print_line(text: str, progress: bool | None) -> None:
    """Prints ``text``; over the progress bar's line (which redraws below) when it is shown."""
    from jnet2net.train.progress import progress_enabled

    if progress_enabled(progress):
        sys.stderr.write("\r" + " " * 100 + "\r")
        sys.stderr.flush()
    print(text, flush=True)


def format_record(record: dict[str, Any], epochs: int) -> str:
    """``epoch 3/10 step 66 loss 0.412 acc 0.871 test_loss 0.3 test_acc 0.903 (2.1 s)``;
    a record between epoch ends shows its fractional epoch, the step-0 record no loss; with
    a moving average of the weights ``test_acc`` is its, then ``(live 0.897)``."""
    text = f"epoch {record['epoch']:.4g}/{epochs} step {record['step']}"
    if record.get("train_loss") is not None:
        text += f" loss {record['train_loss']:.3f} acc {record['train_acc']:.3f}"
    if record.get("test_acc") is not None:
        text += f" test_loss {record['test_loss']:.3f} test_acc {record['test_acc']:.3f}"
    if record.get("test_acc_live") is not None:
        text += f" (live {record['test_acc_live']:.3f})"
    return text + f" ({record['wall_s']:.1f} s)"
