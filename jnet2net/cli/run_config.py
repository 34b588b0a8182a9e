"""``train --config FILE`` and ``--config.KEY=VALUE``: the run's config tree
(``jnet2net.config.RunConfig``) from a file, the flags that set its fields, and overrides."""

from __future__ import annotations

import argparse
import dataclasses
import json
import textwrap
import types
import typing
from collections.abc import Sequence
from typing import Any

from jnet2net.cli.args import json_object

#: The prefix of an override on the command line: ``--config.train.epochs=30``.
OVERRIDE_PREFIX = "--config."
#: The data flags, by the ``DataConfig`` field each sets (their ``dest``).
DATA_FIELDS = ("dataset", "data_dir", "download", "resolution", "train_subset", "subset_seed")
#: Config keys the command line sets itself (``--out`` names the log).
CLI_SET_KEYS = ("train.log_path",)


def split_config_overrides(tokens: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(['train.epochs=30', ...], the other tokens)``: the ``--config.KEY=VALUE`` and
    ``--config.KEY VALUE`` items among ``tokens`` (argparse's unrecognised arguments).

    Raises:
      ValueError: ``--config.KEY`` without a value.
    """
    overrides, rest = [], []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token.startswith(OVERRIDE_PREFIX):
            item = token[len(OVERRIDE_PREFIX) :]
            if "=" not in item:
                if i + 1 == len(tokens) or tokens[i + 1].startswith("--"):
                    raise ValueError(f"{token} needs a value: {token}=VALUE")
                item, i = f"{item}={tokens[i + 1]}", i + 1
            overrides.append(item)
        else:
            rest.append(token)
        i += 1
    return overrides, rest


def add_config_args(p: argparse.ArgumentParser) -> None:
    """Adds ``--config FILE`` and the list of keys ``--config.KEY=VALUE`` takes."""
    group = p.add_argument_group("config file and overrides", description=config_help())
    group.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="a Python file whose get_config() returns a jnet2net.config.RunConfig, or a JSON "
        "file such as a run's config.json",
    )
    p.set_defaults(config_overrides=())


def config_help(width: int = 88) -> str:
    """The ``--help`` text of the config: how files, flags and overrides combine, then every
    key with its type."""
    from jnet2net.config import RunConfig, config_keys
    from jnet2net.config.overrides import field_hints

    intro = (
        "A run is one config tree: model, data, train, growth, scale_down. --config FILE "
        "reads it from a file; the flags set the fields they name over it; then each "
        "--config.KEY=VALUE (or --config.KEY VALUE) sets one field, its value read by the "
        "field's type (none: None; tuples comma-separated; growth: a JSON list of objects "
        'with the fields of jnet2net.train.Grow, e.g. \'[{"at_epoch": 3, "widths": '
        "[8, 16, 32]}]'). "
        "--resume and --from take the network from the checkpoint (and --resume its growth "
        "schedule), not from the file. Keys:"
    )
    sections: dict[str, list[str]] = {}
    for key, hint in config_keys(RunConfig):
        if key in CLI_SET_KEYS:
            continue
        section, _, name = key.partition(".")
        if key == "model.fields":
            name = "fields.NAME"
        heading = f"{section}: " if name else ""
        if name and type(None) in typing.get_args(field_hints(RunConfig)[section]):
            heading = f"{section} (or {section}=none): "
        entry = f"{name or section}={short_type(hint)}"
        sections.setdefault(heading or key, []).append(entry)
    lines = textwrap.wrap(intro, width)
    for heading, entries in sections.items():
        lines += textwrap.wrap(
            f"{heading if heading.endswith(': ') else ''}{', '.join(entries)}",
            width,
            initial_indent="  ",
            subsequent_indent="    ",
            break_on_hyphens=False,
        )
    return "\n".join(lines)


def short_type(hint: Any) -> str:
    """``int``, ``float|none``, ``sgd|adamw``, ``ints``, ``JSON``: a field's type for
    ``--help``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return "|".join("none" if a is type(None) else short_type(a) for a in args)
    if origin is typing.Literal:
        return "|".join(args)
    if origin is tuple:
        return "JSON-list" if dataclasses.is_dataclass(args[0]) else f"{short_type(args[0])}s"
    if origin is dict or hint is dict:
        return "JSON"
    return getattr(hint, "__name__", str(hint))


def run_config_from_args(args: argparse.Namespace) -> Any:
    """The run's ``RunConfig``: ``--config FILE`` (or the defaults), the flags that set its
    fields over it, then the ``--config.KEY=VALUE`` overrides.

    ``--grow-at`` is not in it: its sizes are relative to the network, so ``train`` reads it
    once the network is built.
    """
    from jnet2net.config import RunConfig, apply_overrides, load_config

    config = load_config(args.config) if getattr(args, "config", None) else RunConfig()
    config = _with_flags(config, args)
    return apply_overrides(config, getattr(args, "config_overrides", ()))


def overridden(args: argparse.Namespace, section: str) -> bool:
    """Whether a ``--config.KEY=VALUE`` of ``args`` sets ``section`` or a field in it."""
    keys = (item.partition("=")[0].strip() for item in getattr(args, "config_overrides", ()))
    return any(key == section or key.startswith(section + ".") for key in keys)


def stated_train_fields(args: argparse.Namespace, flags: dict[str, str]) -> list[str]:
    """The ``TrainConfig`` fields the user stated: all of them with ``--config FILE``, else
    those of the given flags (``flags``: dest -> field) and overrides."""
    from jnet2net.train import TrainConfig

    names = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "log_path"]
    if getattr(args, "config", None) or overridden_whole(args, "train"):
        return names
    keys = {item.partition("=")[0].strip() for item in getattr(args, "config_overrides", ())}
    given = {field for dest, field in flags.items() if getattr(args, dest, None) is not None}
    return [n for n in names if n in given or f"train.{n}" in keys]


def overridden_whole(args: argparse.Namespace, section: str) -> bool:
    keys = (item.partition("=")[0].strip() for item in getattr(args, "config_overrides", ()))
    return section in keys


def with_run_config(args: argparse.Namespace, config: Any) -> argparse.Namespace:
    """A copy of ``args`` whose data and scale-down flags hold ``config``'s values (what the
    data loading and the scale-down run read), with ``run_config`` set to ``config``."""
    values = {**vars(args), "run_config": config}
    values.update({name: getattr(config.data, name) for name in DATA_FIELDS})
    scale = config.scale_down
    values["scale_down"] = scale is not None
    values["scale_json"] = None if scale is None else json.dumps(dataclasses.asdict(scale))
    return argparse.Namespace(**values)


def scale_down_config(text: str | None) -> Any:
    """A ``ScaleDownConfig`` from ``--scale-json`` (``None``: the defaults)."""
    from jnet2net.scale_down import ScaleDownConfig

    fields = json_object(text, "--scale-json") if text else {}
    known = {f.name for f in dataclasses.fields(ScaleDownConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown ScaleDownConfig fields {unknown}; known: {sorted(known)}")
    return ScaleDownConfig(**fields)


def _with_flags(config: Any, args: argparse.Namespace) -> Any:
    """``config`` with the fields the given flags set (a flag replaces the file's value)."""
    from jnet2net.cli.train_flags import train_flags
    from jnet2net.scale_down import ScaleDownConfig

    model: dict[str, Any] = {}
    if getattr(args, "arch", None) is not None:
        model["arch"] = args.arch
    if getattr(args, "arch_json", None):
        model["fields"] = json_object(args.arch_json, "--arch-json")
    if getattr(args, "width_mult", None) is not None:
        model["width_mult"] = args.width_mult
    data = {name: getattr(args, name, None) for name in DATA_FIELDS}
    data = {k: v for k, v in data.items() if v is not None and v is not False}
    train = {
        field: getattr(args, dest)
        for dest, field in train_flags().items()
        if getattr(args, dest, None) is not None
    }
    scale = config.scale_down
    if getattr(args, "scale_json", None) and not getattr(args, "scale_down", False):
        raise ValueError("--scale-json configures --scale-down; pass --scale-down too")
    if getattr(args, "scale_down", False):
        scale = scale_down_config(args.scale_json) if args.scale_json else scale
        scale = scale or ScaleDownConfig()
    return dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, **model),
        data=dataclasses.replace(config.data, **data),
        train=config.train.replace(**train),
        scale_down=scale,
    )
