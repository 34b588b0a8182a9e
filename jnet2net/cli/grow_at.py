"""``train --grow-at EPOCH:CHANGES``: the growth schedule of a run, as ``train.Grow`` events."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from jnet2net.cli.arch import (
    check_param_limit,
    describe,
    grown_model,
    int_list,
    parse_depths,
    parse_widths,
    widening_sizes,
)

GROW_KEYS = (
    "widen",
    "deepen",
    "widen_hidden",
    "deepen_hidden",
    "noise",
    "noise_scale",
    "moments",
    "rewarm",
)


def parse_grow_at(text: str) -> tuple[float, dict[str, str]]:
    """``'6:widen=2x,deepen=+1'`` -> ``(6.0, {'widen': '2x', 'deepen': '+1'})``.

    A comma-separated token without ``=`` continues the previous value, so explicit widths
    read naturally: ``'3:widen=16,32,64,noise=fresh'``.

    Raises:
      ValueError: a malformed event, naming the text.
    """
    usage = "--grow-at takes EPOCH:KEY=VALUE[,KEY=VALUE...], e.g. '3:widen=2x,deepen=+1'"
    epoch_text, sep, changes = text.partition(":")
    if not sep or not changes.strip():
        raise ValueError(f"{usage}; got {text!r}")
    try:
        epoch = float(epoch_text)
    except ValueError:
        raise ValueError(f"{usage}; {epoch_text!r} is not an epoch number in {text!r}") from None
    if not (math.isfinite(epoch) and epoch > 0):
        raise ValueError(f"--grow-at needs an epoch > 0, got {epoch_text!r} in {text!r}")
    fields: dict[str, str] = {}
    last = None
    for token in changes.split(","):
        token = token.strip()
        if "=" in token:
            key, _, value = token.partition("=")
            key = key.strip().replace("-", "_")
            if key not in GROW_KEYS:
                raise ValueError(f"--grow-at: unknown key {key!r} in {text!r}; keys: {GROW_KEYS}")
            if key in fields:
                raise ValueError(f"--grow-at: {key!r} given twice in {text!r}")
            fields[key], last = value.strip(), key
        elif token and last is not None:
            fields[last] += "," + token
        else:
            raise ValueError(f"{usage}; got {text!r}")
        if not fields[last]:
            raise ValueError(f"--grow-at: {last!r} has no value in {text!r}")
    if not set(fields) & {"widen", "deepen", "widen_hidden", "deepen_hidden"}:
        raise ValueError(f"--grow-at {text!r} changes nothing: give widen= and/or deepen=")
    return epoch, fields


def growth_events(
    model: Any,
    texts: Sequence[Any],
    image_shape: tuple[int, ...],
    *,
    max_params: int | None = None,
) -> tuple:
    """The ``train.Grow`` events of ``--grow-at`` flags (or of ``train.Grow`` events, which
    are kept as they are), with sizes resolved against the network each event grows
    (multipliers and ``+N`` are relative to it).

    Raises:
      ValueError: a malformed flag, an event that does not fit its network, or one whose
        network would have more than ``max_params`` parameters (sized before it is traced).
    """
    from jnet2net import train

    parsed = sorted(
        (
            (item.at_epoch, item) if isinstance(item, train.Grow) else parse_grow_at(item)
            for item in texts
        ),
        key=lambda item: item[0],
    )
    events = []
    current = model
    for epoch, fields in parsed:
        if isinstance(fields, train.Grow):
            event, sizes = fields, _event_sizes(fields)
        else:
            sizes, options = _sizes_and_options(current, fields)
            event = train.Grow(epoch, **sizes, **options)
        if max_params is not None and event.target is None:
            widen = {k: sizes[k] for k in sizes if k not in ("depths", "hidden_depths")}
            deepen = {k: sizes[k] for k in ("depths", "hidden_depths") if k in sizes}
            what = f"the network grown at epoch {epoch:g}"
            check_param_limit(grown_model(current, widen, deepen), image_shape, max_params, what)
        (current,) = train.planned_models(current, [event], image_shape)
        events.append(event)
    return tuple(events)


def _event_sizes(event: Any) -> dict[str, Any]:
    """The sizes a ``train.Grow`` event sets, by ``grown_model``'s names."""
    names = ("widths", "hidden_widths", "inner_widths", "stem_width", "depths", "hidden_depths")
    return {name: getattr(event, name) for name in names if getattr(event, name) is not None}


def _sizes_and_options(current: Any, fields: dict[str, str]) -> tuple[dict, dict]:
    """``(sizes, options)`` of ``train.Grow`` for one ``--grow-at`` event's ``fields``."""
    sizes: dict[str, Any] = {}
    if "widen" in fields:
        sizes.update(widening_sizes(current, fields["widen"]))
    if "widen_hidden" in fields:
        if not getattr(current, "hidden_widths", None):
            raise ValueError(f"widen_hidden applies to VGG hidden layers; {describe(current)}")
        sizes["hidden_widths"] = parse_widths(
            fields["widen_hidden"], current.hidden_widths, what="grow-at widen_hidden"
        )
    if "deepen" in fields:
        sizes["depths"] = parse_depths(
            fields["deepen"], current.stage_depths, what="grow-at deepen"
        )
    if "deepen_hidden" in fields:
        sizes["hidden_depths"] = int_list(fields["deepen_hidden"], "grow-at deepen_hidden")[0]
    options: dict[str, Any] = {}
    if "noise" in fields:
        options["noise"] = fields["noise"]
    for key, name in (("noise_scale", "noise_scale"), ("rewarm", "rewarm_epochs")):
        if key in fields:
            try:
                options[name] = float(fields[key])
            except ValueError:
                raise ValueError(f"--grow-at {key}= takes a number, got {fields[key]!r}") from None
    if "moments" in fields:
        options["moments"] = fields["moments"]
    return sizes, options
