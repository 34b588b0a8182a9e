"""``KEY=VALUE`` overrides of a config tree, each value read by its field's type."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

_NONE = ("none", "null")
_BOOLS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


class _Nested(dict):
    """The changes below one dataclass field (as opposed to a ``dict`` value)."""


def apply_overrides(config: Any, overrides: Sequence[str]) -> Any:
    """``config`` with each ``'dotted.key=VALUE'`` of ``overrides`` set.

    Keys walk the dataclass tree (``train.epochs``, ``scale_down.mode``); below a ``dict``
    field a key names one entry (``model.fields.stage_widths=4,8``). Each value is read by
    its field's type (:func:`parse_value`). The changes to one dataclass are made at once,
    so ``train.epochs=2`` and ``train.warmup_epochs=1`` may come in any order; a ``None``
    dataclass field (``scale_down``) starts from its defaults. ``config`` is not changed.

    Raises:
      ValueError: an item without ``=``, an unknown key (naming it and the known ones), or
        a value its field's type does not read (naming the key and the type).
    """
    changes = _Nested()
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"an override is KEY=VALUE, e.g. train.epochs=30; got {item!r}")
        path, hint = _field_path(type(config), key)
        node = changes
        for part in path[:-1]:
            node = node.setdefault(part, _Nested())
            if not isinstance(node, _Nested):
                raise ValueError(f"{key!r} is set twice (once as a whole)")
        if isinstance(node.get(path[-1]), _Nested):
            raise ValueError(f"{key!r} is set as a whole after some of its fields")
        node[path[-1]] = parse_value(text, hint, key)
    return _with_changes(config, type(config), changes)


def parse_value(text: str, hint: Any, key: str = "value") -> Any:
    """``text`` read as type ``hint``: ``int``, ``float``, ``bool`` (true/false/yes/no/1/0),
    ``str``, a ``Literal`` (one of its values), ``X | None`` (``none``/``null`` is ``None``),
    ``tuple[X, ...]`` (comma-separated, brackets optional), a ``dict`` or a dataclass (a JSON
    object of its fields).

    Raises:
      ValueError: ``text`` is not a value of the type, naming ``key`` and the type.
    """
    try:
        return _parse(text.strip(), hint)
    except (ValueError, TypeError) as err:
        reason = f" ({err})" if str(err) else ""
        raise ValueError(f"{key}={text!r}: expected {type_text(hint)}{reason}") from None


def type_text(hint: Any) -> str:
    """``'an int'``, ``'one of sgd, adamw'``, ``'comma-separated ints or none'``: a type in
    words, for messages and ``--help``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if _is_union(hint):
        inner = [a for a in args if a is not type(None)]
        text = " or ".join(type_text(a) for a in inner)
        return f"{text} or none" if type(None) in args else text
    if origin is typing.Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin is tuple and dataclasses.is_dataclass(args[0]):
        return f"a JSON list of {args[0].__name__} objects"
    if origin is tuple:
        return f"comma-separated {_plural(args[0])}"
    if origin is dict or hint is dict:
        return "a JSON object"
    if dataclasses.is_dataclass(hint):
        return f"a JSON object of {hint.__name__} fields"
    return {int: "an int", float: "a number", bool: "a bool", str: "a string"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )


def config_keys(kind: type, prefix: str = "") -> list[tuple[str, Any]]:
    """``[(dotted key, type hint)]`` of every leaf field of dataclass ``kind`` (nested
    dataclasses, also optional ones, are walked)."""
    keys = []
    for name, hint in field_hints(kind).items():
        inner = _without_none(hint)
        if dataclasses.is_dataclass(inner):
            keys.extend(config_keys(inner, f"{prefix}{name}."))
        else:
            keys.append((f"{prefix}{name}", hint))
    return keys


@functools.cache
def field_hints(kind: type) -> dict[str, Any]:
    """``{field name: resolved type hint}`` of dataclass ``kind``, in field order."""
    hints = typing.get_type_hints(kind)
    return {f.name: hints[f.name] for f in dataclasses.fields(kind)}


def field_docs(kind: type) -> dict[str, str]:
    """``{field: text}`` from the ``Attributes:`` section of dataclass ``kind``'s docstring,
    each text on one line, without reST markup (double backquotes, ``:mod:`` roles)."""
    docs: dict[str, str] = {}
    name = None
    lines = inspect.cleandoc(kind.__doc__ or "").splitlines()
    start = next((i + 1 for i, line in enumerate(lines) if line.strip() == "Attributes:"), None)
    for line in lines[start or len(lines) :]:
        if not line.strip():
            break
        match = re.match(r"^  (\w+): (.*)$", line)
        if match:
            name, text = match.groups()
            docs[name] = text
        elif name is not None:
            docs[name] += " " + line.strip()
    return {k: _plain(v) for k, v in docs.items()}


def _plain(text: str) -> str:
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text)
    return re.sub(r"``([^`]*)``", r"\1", text)


# --- internals ----------------------------------------------------------------------------


def _field_path(kind: type, key: str) -> tuple[list[str], Any]:
    """The path of ``key`` through the dataclass tree of ``kind`` and its leaf's type."""
    parts = key.split(".")
    hint: Any = kind
    for i, part in enumerate(parts):
        node = _without_none(hint)
        if typing.get_origin(node) is dict or node is dict:
            return [*parts[:i], ".".join(parts[i:])], Any
        where = ".".join(parts[:i]) or "the config"
        if not dataclasses.is_dataclass(node):
            raise ValueError(f"unknown config key {key!r}: {where} is {type_text(hint)}")
        hints = field_hints(node)
        if part not in hints:
            raise ValueError(
                f"unknown config key {key!r}: {where} has no field {part!r}; its fields: "
                f"{', '.join(map(repr, hints))}"
            )
        hint = hints[part]
    return parts, hint


def _with_changes(value: Any, kind: Any, changes: _Nested) -> Any:
    node = _without_none(kind)
    if typing.get_origin(node) is dict or node is dict:
        return {**(value or {}), **changes}
    if value is None:
        value = node()
    hints = field_hints(node)
    new = {
        name: _with_changes(getattr(value, name), hints[name], change)
        if isinstance(change, _Nested)
        else change
        for name, change in changes.items()
    }
    return dataclasses.replace(value, **new)


def _parse(text: str, hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return _json_or_text(text)
    if _is_union(hint):
        if type(None) in args and text.lower() in _NONE:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _parse(text, arg)
            except (ValueError, TypeError):
                continue
        raise ValueError("")
    if origin is typing.Literal:
        if text not in args:
            raise ValueError("")
        return text
    if hint is bool:
        if text.lower() not in _BOOLS:
            raise ValueError("")
        return _BOOLS[text.lower()]
    if hint is int:
        return _number(int, text)
    if hint is float:
        value = _number(float, text)
        if not math.isfinite(value):
            raise ValueError("")
        return value
    if hint is str:
        return text
    if origin is tuple:
        return _parse_tuple(text, args[0])
    if origin is dict or hint is dict:
        value = _json(text)
        if not isinstance(value, dict):
            raise ValueError("")
        return value
    if dataclasses.is_dataclass(hint):
        return _dataclass_of(hint, _json(text))
    raise TypeError(f"{type_text(hint)} cannot be set from text")


def _parse_tuple(text: str, item: Any) -> tuple:
    if dataclasses.is_dataclass(item):
        values = _json(text)
        if not isinstance(values, list):
            raise ValueError("a JSON list")
        return tuple(_dataclass_of(item, v) for v in values)
    if text[:1] in "[(" and text[-1:] in ")]":
        text = text[1:-1]
    if not text.strip():
        return ()
    return tuple(_parse(part.strip(), item) for part in text.split(","))


def _dataclass_of(kind: type, values: Any) -> Any:
    if not isinstance(values, Mapping):
        raise ValueError("")
    names = [f.name for f in dataclasses.fields(kind)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"unknown fields {unknown}")
    return kind(**values)


def _number(kind: type, text: str) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise ValueError("") from None


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise ValueError("not valid JSON") from None


def _json_or_text(text: str) -> Any:
    """A JSON value, else comma-separated ones as a tuple, else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    if "," in text:
        return tuple(_json_or_text(part.strip()) for part in text.split(","))
    return text


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _without_none(hint: Any) -> Any:
    if _is_union(hint):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(inner) == 1:
            return inner[0]
    return hint


def _plural(hint: Any) -> str:
    names = {int: "ints", float: "numbers", bool: "bools", str: "strings"}
    return names.get(hint, f"{type_text(hint)} values")
