"""A study as a config file: which study script to run and the options its flags hold.

A study config is a ``.py`` file whose ``get_config()`` returns a :class:`Study`::

    Study("progressive", {"data_dir": "../shared/data", "seeds": [0, 1, 2]})

``study`` names a script under ``experiments/`` (``'progressive'`` is
``experiments/progressive/run.py``, ``'net2net.protocol'`` is
``experiments/net2net/protocol.py``); ``options`` maps the script's argparse dests to values,
and :func:`study_argv` turns them into the argv its own ``build_parser()`` reads, so the
script's parser checks every value. ``run``, a :class:`jnet2net.config.RunConfig`, reaches a
script that takes ``--config FILE`` as that file (JSON of ``to_dict``). ``experiments/run.py``
is the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jnet2net.config import RunConfig

EXPERIMENTS = pathlib.Path(__file__).resolve().parent
#: The option that carries a run config file (``--config``) and the ``--summarize`` flag.
CONFIG_KEY, SUMMARIZE_KEY = "config", "summarize"
_BOOLS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
_SCALARS = (str, int, float, bool)


@dataclasses.dataclass(frozen=True)
class Study:
    """One study run.

    Attributes:
      study: the script, ``'<folder>'`` for ``experiments/<folder>/run.py`` or
        ``'<folder>.<name>'`` for ``experiments/<folder>/<name>.py``.
      options: ``{argparse dest: value}`` of the script's flags (``'data_dir'``, ``'seeds'``);
        a list for a flag that takes several values, ``True`` for an on/off flag; ``None``
        or a missing key leaves the script's default.
      run: the training settings, passed as ``--config FILE`` (scripts that take it).
    """

    study: str
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    run: RunConfig | None = None


def load_study(path: str | os.PathLike) -> Study:
    """The study in ``path``: a Python file whose ``get_config()`` returns a :class:`Study`.

    Raises:
      FileNotFoundError: no such file.
      ValueError: not a ``.py`` file, or no ``get_config``.
      TypeError: ``get_config()`` returned something else.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"study config {path} does not exist")
    if path.suffix != ".py":
        raise ValueError(f"study config {path}: expected a .py file with get_config()")
    from jnet2net.config.tree import run_get_config

    return run_get_config(path, Study, "an experiments.study.Study", "study config")


def known_studies() -> list[str]:
    """Every study name: the scripts under ``experiments/`` that define ``build_parser``."""
    names = []
    for path in sorted(EXPERIMENTS.glob("*/*.py")):
        if "\ndef build_parser(" in path.read_text():
            folder = path.parent.name
            names.append(folder if path.stem == "run" else f"{folder}.{path.stem}")
    return sorted(names)


def study_script(name: str) -> pathlib.Path:
    """The script of study ``name`` (see :class:`Study`).

    Raises:
      ValueError: no such study, naming the known ones.
    """
    if re.fullmatch(r"\w+(\.\w+)?", name) and name in known_studies():
        folder, _, stem = name.partition(".")
        return EXPERIMENTS / folder / f"{stem or 'run'}.py"
    raise ValueError(f"unknown study {name!r}; known: {', '.join(known_studies())}")


def study_module(name: str) -> Any:
    """The imported script of study ``name`` (it has ``build_parser()`` and ``main(argv)``)."""
    script = study_script(name).relative_to(EXPERIMENTS.parent).with_suffix("")
    return importlib.import_module(".".join(script.parts))


def study_parser(name: str) -> argparse.ArgumentParser:
    """The argument parser of study ``name``'s script."""
    return study_module(name).build_parser()


def option_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """``{dest: action}`` of the parser's flags (``--help`` left out)."""
    return {
        action.dest: action
        for action in parser._actions
        if action.option_strings and not isinstance(action, argparse._HelpAction)
    }


def with_overrides(study: Study, overrides: Sequence[str]) -> Study:
    """``study`` with each ``'KEY=VALUE'`` of ``overrides`` set.

    ``KEY`` is an option key (``seeds=0,1``: commas separate the values of a flag that
    takes several; ``summarize=true`` for an on/off flag), or ``run.<config key>`` for the
    run config (``run.train.epochs=5``, read by ``jnet2net.config.apply_overrides``). Option
    values stay text: the script's parser reads them. ``study`` is not changed.

    Raises:
      ValueError: an item without ``=``, an unknown key, or ``run.`` keys without a run.
    """
    actions = option_actions(study_parser(study.study)) if overrides else {}
    options, run_overrides = dict(study.options), []
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"an override is KEY=VALUE, e.g. seeds=0,1; got {item!r}")
        if key.startswith("run."):
            run_overrides.append(item.strip()[len("run.") :])
            continue
        action = _action(actions, key, study.study)
        options[key] = _option_text(action, text, key)
    run = study.run
    if run_overrides:
        if run is None:
            raise ValueError(f"run.* overrides {run_overrides}: the study has no run config")
        from jnet2net.config import apply_overrides

        run = apply_overrides(run, run_overrides)
    return dataclasses.replace(study, options=options, run=run)


def study_argv(study: Study, config_path: str = "run_config.json") -> list[str]:
    """The argv of ``study``'s script: ``--config config_path`` if it has a run config, then
    the options in their order (long flags; ``None`` and an off flag give nothing).

    Raises:
      ValueError: an unknown study or option key (naming the study's keys), a value an
        on/off flag does not take, or a run config for a script without ``--config``.
      TypeError: a value that is not a string, number, bool or a list of them.
    """
    actions = option_actions(study_parser(study.study))
    argv = []
    if study.run is not None:
        if CONFIG_KEY not in actions:
            raise ValueError(f"study {study.study} takes no --config, so it cannot take a run")
        if study.options.get(CONFIG_KEY) is not None:
            raise ValueError(f"study {study.study}: options[{CONFIG_KEY!r}] and run both given")
        argv = [_flag(actions[CONFIG_KEY]), config_path]
    for key, value in study.options.items():
        argv += _option_argv(_action(actions, key, study.study), value, key)
    return argv


# --- internals ----------------------------------------------------------------------------


def _action(actions: Mapping[str, argparse.Action], key: str, study: str) -> argparse.Action:
    if key not in actions:
        raise ValueError(
            f"unknown option {key!r} of study {study}; its keys: "
            f"{', '.join(map(repr, sorted(actions)))}"
        )
    return actions[key]


def _flag(action: argparse.Action) -> str:
    return next((s for s in action.option_strings if s.startswith("--")), action.option_strings[0])


def _takes_list(action: argparse.Action) -> bool:
    return action.nargs in ("+", "*") or (isinstance(action.nargs, int) and action.nargs > 0)


def _option_text(action: argparse.Action, text: str, key: str) -> Any:
    """An override's text as an option value: a list of texts, a bool or the text."""
    text = text.strip()
    if action.nargs == 0 and isinstance(action.const, bool):
        if text.lower() not in _BOOLS:
            raise ValueError(f"{key}={text!r}: an on/off flag takes true or false")
        return _BOOLS[text.lower()]
    if _takes_list(action):
        return [part.strip() for part in text.split(",")] if text else []
    return text


def _option_argv(action: argparse.Action, value: Any, key: str) -> list[str]:
    """The argv of one option's value."""
    if action.nargs == 0:  # store_true / store_false / store_const
        if value == action.const and type(value) is type(action.const):
            return [_flag(action)]
        if value == action.default and type(value) is type(action.default):
            return []
        raise ValueError(
            f"option {key!r} is a flag: {action.const!r} (given) or {action.default!r}, "
            f"got {value!r}"
        )
    if value is None:
        return []
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not all(isinstance(v, _SCALARS) for v in values):
        raise TypeError(f"option {key!r}: expected strings, numbers or bools, got {value!r}")
    if not _takes_list(action) and len(values) != 1:
        raise ValueError(f"option {key!r} takes one value, got {value!r}")
    return [_flag(action), *map(str, values)]
