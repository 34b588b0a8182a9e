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
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import pathlib
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from jnet2net import signals
from jnet2net.cli_format import (
    HelpFormatter,
    Parser,
    flag_names,
    in_flag_terms,
    quiet_third_party_logs,
    run_summary,
    subparser,
)

PROG = "jnet2net"
NOISES = ("split", "none", "paper")
_USER_ERRORS = (ValueError, TypeError, OSError, FloatingPointError)
#: Set to print the traceback of an error instead of one line.
TRACEBACK_ENV = "JNET2NET_TRACEBACK"
#: What a run directory may hold besides its checkpoint steps.
_RUN_FILES = ("metrics.jsonl",)

#: The examples that end each command's ``--help``.
EXAMPLES = {
    "demo": "example:\n  jnet2net demo --out runs/demo",
    "train": (
        "examples:\n"
        "  jnet2net train --arch resnet20 --width-mult 0.5 --dataset digits --epochs 5 "
        "--out runs/t\n"
        "  jnet2net train --from runs/grown --dataset digits --epochs 5 --out runs/student\n"
        "  jnet2net train --resume --out runs/t --epochs 10"
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

# --- argument parsing helpers ---------------------------------------------------------


def parse_widths(text: str, current: Sequence[int], *, what: str = "widths") -> tuple[int, ...]:
    """``'16,32,64'`` -> that tuple; ``'1.5x'`` (or ``'x1.5'``) -> ``current`` scaled, rounded.

    Raises:
      ValueError: a malformed value, or a count that differs from ``len(current)``.
    """
    text = text.strip()
    factor = _multiplier(text)
    if factor is not None:
        return tuple(scale_width(w, factor) for w in current)
    values = _int_list(text, what)
    if len(values) != len(current):
        raise ValueError(
            f"--{what} needs {len(current)} comma-separated values (the model has "
            f"{tuple(current)}), got {text!r}"
        )
    return values


def parse_depths(text: str, current: Sequence[int], *, what: str = "deepen") -> tuple[int, ...]:
    """``'2,2,2'`` -> that tuple; ``'+1'`` -> one more layer/block per stage."""
    text = text.strip()
    if text.startswith("+"):
        extra = _int_list(text[1:], what)
        if len(extra) != 1:
            raise ValueError(f"--{what} '+N' adds N to every stage, got {text!r}")
        return tuple(d + extra[0] for d in current)
    values = _int_list(text, what)
    if len(values) != len(current):
        raise ValueError(
            f"--{what} needs {len(current)} comma-separated depths (the model has "
            f"{tuple(current)}), got {text!r}"
        )
    return values


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
            if p.name not in _RUN_FILES
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


def check_dataset_fits(info: Any, dataset: Any, hint: str = "") -> None:
    """Raises ValueError unless ``dataset`` has the images and classes of checkpoint ``info``.

    Only the channels are compared when the checkpoint does not know its image size.
    """
    want_shape = tuple(int(n) for n in info.input_shape[1:])
    have_shape = tuple(int(n) for n in dataset.image_shape)
    compared = slice(None) if info.input_shape_given else slice(-1, None)
    problems = []
    if have_shape[compared] != want_shape[compared]:
        problems.append(f"images of shape {have_shape}, the checkpoint's network {want_shape}")
    if dataset.num_classes != info.model.num_classes:
        problems.append(
            f"{dataset.num_classes} classes, the checkpoint's network {info.model.num_classes}"
        )
    if problems:
        raise ValueError(
            f"dataset {dataset.name!r} does not fit the checkpoint {info.path}: it has "
            + "; ".join(problems)
            + hint
        )


def scale_width(width: int, factor: float) -> int:
    """``width * factor`` rounded half up (``1.5x`` of 3 is 5, of 5 is 8), at least 1."""
    return max(1, math.floor(width * factor + 0.5))


def _multiplier(text: str) -> float | None:
    lowered = text.lower()
    if not (lowered.endswith("x") or lowered.startswith("x")):
        return None
    number = lowered[:-1] if lowered.endswith("x") else lowered[1:]
    try:
        factor = float(number)
    except ValueError:
        raise ValueError(f"a width multiplier looks like '1.5x', got {text!r}") from None
    if not (math.isfinite(factor) and factor > 0):
        raise ValueError(f"a width multiplier must be a positive finite number, got {text!r}")
    return factor


def _int_list(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--{what} takes comma-separated ints, got {text!r}") from None
    if not values or min(values) <= 0:
        raise ValueError(f"--{what} takes positive comma-separated ints, got {text!r}")
    return values


def scaled_model(model: Any, factor: float) -> Any:
    """``model`` with every width field multiplied by ``factor`` (at least 1 unit each)."""

    def scale(widths: Any) -> Any:
        if widths is None:
            return None
        if isinstance(widths, int):
            return scale_width(widths, factor)
        return tuple(scale_width(w, factor) for w in widths)

    changes = {"stage_widths": scale(model.stage_widths)}
    for field in ("hidden_widths", "inner_widths", "stem_width"):
        if hasattr(model, field):
            changes[field] = scale(getattr(model, field))
    return model.clone(**changes)


def widening_sizes(model: Any, text: str) -> dict[str, Any]:
    """``widen`` keyword arguments for ``--widen TEXT``: a multiplier scales every width field
    the model has (stage, hidden, inner, stem widths), a list sets ``stage_widths``."""
    if _multiplier(text.strip()) is None:
        return {"widths": parse_widths(text, model.stage_widths, what="widen")}
    scaled = scaled_model(model, _multiplier(text.strip()))
    sizes = {"widths": scaled.stage_widths}
    for field in ("hidden_widths", "inner_widths", "stem_width"):
        if getattr(model, field, None):
            sizes[field] = getattr(scaled, field)
    return sizes


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
    texts: Sequence[str],
    image_shape: tuple[int, ...],
    *,
    max_params: int | None = None,
) -> tuple:
    """The ``train.Grow`` events of ``--grow-at`` flags, with sizes resolved against the
    network each event grows (multipliers and ``+N`` are relative to it).

    Raises:
      ValueError: a malformed flag, an event that does not fit its network, or one whose
        network would have more than ``max_params`` parameters (sized before it is traced).
    """
    from jnet2net import train

    parsed = sorted((parse_grow_at(text) for text in texts), key=lambda item: item[0])
    events = []
    current = model
    for epoch, fields in parsed:
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
            sizes["hidden_depths"] = _int_list(fields["deepen_hidden"], "grow-at deepen_hidden")[0]
        options: dict[str, Any] = {}
        if "noise" in fields:
            options["noise"] = fields["noise"]
        for key, name in (("noise_scale", "noise_scale"), ("rewarm", "rewarm_epochs")):
            if key in fields:
                try:
                    options[name] = float(fields[key])
                except ValueError:
                    raise ValueError(
                        f"--grow-at {key}= takes a number, got {fields[key]!r}"
                    ) from None
        if "moments" in fields:
            options["moments"] = fields["moments"]
        event = train.Grow(epoch, **sizes, **options)
        if max_params is not None:
            widen = {k: sizes[k] for k in sizes if k not in ("depths", "hidden_depths")}
            deepen = {k: sizes[k] for k in ("depths", "hidden_depths") if k in sizes}
            what = f"the network grown at epoch {epoch:g}"
            check_param_limit(grown_model(current, widen, deepen), image_shape, max_params, what)
        (current,) = train.planned_models(current, [event], image_shape)
        events.append(event)
    return tuple(events)


def model_from_args(
    arch: str | None,
    arch_json: str | None,
    width_mult: float | None,
    num_classes: int,
    *,
    arch_flag: str = "--arch",
    json_flag: str = "--arch-json",
) -> Any:
    """The module that ``--arch``/``--arch-json``/``--width-mult`` name, for ``num_classes``.

    ``--arch-json`` is either a whole architecture (``jnet2net.model_config`` output, with
    ``family``) or field overrides of the ``--arch`` preset; ``arch_flag`` is the preset
    flag's name in messages (``--to`` for ``transfer``) and ``json_flag`` the JSON's
    (``--to`` when ``transfer --to`` is given JSON).
    """
    from jnet2net import models

    overrides: dict[str, Any] = {}
    if arch_json:
        try:
            overrides = json.loads(arch_json)
        except json.JSONDecodeError as err:
            raise ValueError(f"{json_flag} is not valid JSON ({err}): {arch_json!r}") from None
        if not isinstance(overrides, dict):
            raise ValueError(f"{json_flag} must be a JSON object, got {arch_json!r}")
    if "family" in overrides:
        config = {"num_classes": num_classes, **overrides}
        try:
            model = models.model_from_config(config)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{json_flag}: {err}") from None
    elif arch is None:
        raise ValueError(
            f"name an architecture: {arch_flag} NAME (a preset) or --arch-json with 'family'"
        )
    else:
        base = models.preset(arch)
        known = set(models.model_config(base)) - {"family"}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(
                f"{json_flag}: unknown {type(base).__name__} fields {unknown}; known: "
                f"{sorted(known)}"
            )
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
        model = models.preset(arch, **{"num_classes": num_classes, **fields})
    if model.num_classes != num_classes:
        raise ValueError(
            f"the architecture has num_classes={model.num_classes} but the dataset has "
            f"{num_classes} classes"
        )
    if width_mult is not None:
        model = scaled_model(model, width_mult)
    return model


def describe(model: Any) -> str:
    """One line: family, depths, widths."""
    if not hasattr(model, "stage_depths"):  # a ViT
        sizes = ("patch_size", "embed_dim", "depth", "num_heads", "mlp_dim")
        return f"{type(model).__name__}({', '.join(f'{k}={getattr(model, k)}' for k in sizes)})"
    parts = [f"depths={list(model.stage_depths)}", f"widths={list(model.stage_widths)}"]
    if getattr(model, "hidden_widths", ()):
        parts.append(f"hidden={list(model.hidden_widths)}")
    if getattr(model, "block", "basic") != "basic":
        parts.append(f"block={model.block}")
    return f"{type(model).__name__}({', '.join(parts)})"


def count_params(variables: Any) -> int:
    """Number of trainable parameters."""
    import jax

    return sum(int(x.size) for x in jax.tree.leaves(variables["params"]))


# --- grow ------------------------------------------------------------------------------


def _add_source_args(p: argparse.ArgumentParser) -> None:
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


def _add_grow(sub: Any) -> None:
    p = sub.add_parser(
        "grow",
        formatter_class=HelpFormatter,
        epilog=EXAMPLES["grow"],
        help="widen/deepen a checkpointed network, check it computes the same function, save it",
        description=(
            "Restore a checkpoint, grow it with Net2WiderNet (--widen) and/or Net2DeeperNet "
            "(--deepen), check on random inputs that the grown network computes the same "
            "function (prints the relative error), and save it as a new checkpoint at step 0."
        ),
    )
    _add_source_args(p)
    p.add_argument(
        "--widen",
        metavar="W1,W2,..|Fx",
        default=None,
        help="new stage widths 'W1,W2,...' or a multiplier like '1.5x' (all width fields)",
    )
    p.add_argument(
        "--widen-hidden", metavar="H1,H2,..", default=None, help="new VGG hidden widths 'H1,H2,...'"
    )
    p.add_argument(
        "--deepen",
        metavar="D1,D2,..|+N",
        default=None,
        help="new stage depths 'D1,D2,...' or '+N' (N more per stage)",
    )
    p.add_argument(
        "--deepen-hidden", metavar="N", type=int, default=None, help="new VGG hidden layer count"
    )
    p.add_argument("--noise", choices=NOISES, default="split", help="widening symmetry breaking")
    p.add_argument("--noise-scale", metavar="X", type=float, default=0.1, help="size of that noise")
    p.add_argument(
        "--seed", metavar="N", type=int, default=0, help="seeds the mappings and new blocks"
    )
    p.add_argument(
        "--rtol",
        metavar="X",
        type=positive_float,
        default=1e-5,
        help="largest accepted relative error",
    )
    p.add_argument(
        "--check-batches",
        metavar="N",
        type=count_at_least(1),
        default=2,
        help="random batches to compare",
    )
    _add_max_params(p)
    p.add_argument("--out", metavar="CKPT", required=True, help="new checkpoint directory")
    p.set_defaults(func=cmd_grow)


def parameter_count(text: str) -> int:
    """An argparse ``type``: a count >= 1 written as an int or like ``2e9``."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 1 and value == int(value)):
        raise argparse.ArgumentTypeError(f"expected a count such as 500000000 or 2e9, got {text!r}")
    return int(value)


def _add_max_params(p: Any) -> None:
    from jnet2net.models.size import DEFAULT_MAX_PARAMS

    p.add_argument(
        "--max-params",
        metavar="N",
        type=parameter_count,
        default=DEFAULT_MAX_PARAMS,
        help=f"refuse a network with more parameters (default {DEFAULT_MAX_PARAMS:.0e}); it is "
        "sized from shapes before anything is allocated",
    )


def check_param_limit(model: Any, input_shape: Sequence[int], limit: int, what: str) -> None:
    """Raises ValueError when ``model`` has more than ``limit`` parameters (``--max-params``),
    sized with ``jax.eval_shape`` before anything is allocated."""
    from jnet2net.models.size import describe_size, param_count

    count = param_count(model, tuple(input_shape))
    if count > limit:
        raise ValueError(
            f"{what} {describe(model)} would have {describe_size(count)}, more than "
            f"--max-params {limit:,}; raise --max-params to build it anyway"
        )


def grown_model(model: Any, widen: dict[str, Any] | None, deepen: dict[str, Any] | None) -> Any:
    """The module ``grow_checkpoint`` would build from ``growth_kwargs``, made from its fields
    only (VGG hidden layers added by ``hidden_depths`` take the last hidden width)."""
    changes: dict[str, Any] = {}
    fields = {"widths": "stage_widths", "hidden_widths": "hidden_widths"}
    fields.update(inner_widths="inner_widths", stem_width="stem_width")
    for key, field in fields.items():
        if (widen or {}).get(key) is not None:
            changes[field] = widen[key]
    if (deepen or {}).get("depths") is not None:
        changes["stage_depths"] = deepen["depths"]
    hidden = (deepen or {}).get("hidden_depths")
    widths = changes.get("hidden_widths", getattr(model, "hidden_widths", ()))
    if hidden is not None and widths and hidden > len(widths):
        if hidden > 10_000:
            raise ValueError(f"--deepen-hidden {hidden}: at most 10000 hidden dense layers")
        changes["hidden_widths"] = tuple(widths) + (widths[-1],) * (hidden - len(widths))
    return model.clone(**changes)


def growth_kwargs(
    model: Any,
    *,
    widen: str | None = None,
    widen_hidden: str | None = None,
    deepen: str | None = None,
    deepen_hidden: int | None = None,
    noise: str = "split",
    noise_scale: float = 0.1,
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """``(widen kwargs, deepen kwargs)`` for ``checkpoint.grow_checkpoint`` from CLI strings.

    Deepening follows widening, so ``'+N'`` counts the teacher's depths.
    """
    widen_kwargs = deepen_kwargs = None
    if widen is not None or widen_hidden is not None:
        widen_kwargs = {} if widen is None else widening_sizes(model, widen)
        if widen_hidden is not None:
            if not getattr(model, "hidden_widths", ()):
                raise ValueError(
                    f"--widen-hidden applies to VGG hidden layers; {type(model).__name__} has none"
                )
            widen_kwargs["hidden_widths"] = parse_widths(
                widen_hidden, getattr(model, "hidden_widths", ()), what="widen-hidden"
            )
        widen_kwargs.update(noise=noise, noise_scale=noise_scale)
    if deepen is not None or deepen_hidden is not None:
        deepen_kwargs = {
            "depths": None if deepen is None else parse_depths(deepen, model.stage_depths),
            "hidden_depths": deepen_hidden,
        }
    return widen_kwargs, deepen_kwargs


def check_growth_syntax(widen: str | None, widen_hidden: str | None, deepen: str | None) -> None:
    """Raises ValueError for a malformed ``--widen``/``--widen-hidden``/``--deepen`` value,
    before any checkpoint is read (counts are checked against the network later)."""
    for flag, text in (("widen", widen), ("widen-hidden", widen_hidden)):
        if text is not None and _multiplier(text.strip()) is None:
            _int_list(text.strip(), flag)
    if deepen is not None:
        text = deepen.strip()
        _int_list(text[1:] if text.startswith("+") else text, "deepen")


def cmd_grow(args: argparse.Namespace) -> int:
    """``jnet2net grow``: flags first, then ``--out`` (locked while written), then the teacher."""
    from jnet2net import rundir

    sizes = (args.widen, args.widen_hidden, args.deepen, args.deepen_hidden)
    if all(size is None for size in sizes):
        raise ValueError("nothing to grow: pass --widen and/or --deepen")
    check_growth_syntax(args.widen, args.widen_hidden, args.deepen)
    check_out(args.out)
    with rundir.locked(args.out):
        return grow_run(args)


def grow_run(args: argparse.Namespace) -> int:
    """Runs ``jnet2net grow`` once its flags are checked and ``--out`` is locked."""
    import jax

    from jnet2net import checkpoint

    info = checkpoint.checkpoint_info(args.source, step=args.step)
    print(f"teacher {info.path}: {describe(info.model)}, step {info.step}")
    widen, deepen = growth_kwargs(
        info.model,
        widen=args.widen,
        widen_hidden=args.widen_hidden,
        deepen=args.deepen,
        deepen_hidden=args.deepen_hidden,
        noise=args.noise,
        noise_scale=args.noise_scale,
    )
    student = grown_model(info.model, widen, deepen)
    check_param_limit(student, info.input_shape, args.max_params, "the grown network")
    grown = checkpoint.grow_checkpoint(
        args.source,
        args.out,
        key=jax.random.key(args.seed),
        widen=widen,
        deepen=deepen,
        step=info.step,
        rtol=args.rtol,
        num_check_batches=args.check_batches,
        metadata={"seed": args.seed},
    )
    before, after = count_params(grown.teacher.variables), count_params(grown.variables)
    print(f"student: {describe(grown.model)}, {before:,} -> {after:,} params")
    exact = "preserved" if grown.relative_error < args.rtol else "NOT preserved (noise=paper)"
    print(f"function {exact}: max relative output error {grown.relative_error:.2e}")
    print(f"saved {grown.path} (restores bitwise)")
    return 0


# --- train -----------------------------------------------------------------------------


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset",
        metavar="NAME",
        default=None,
        help="digits (offline, the default), cifar10, cifar100, mnist, fashion_mnist",
    )
    p.add_argument(
        "--data-dir", metavar="DIR", default=None, help="tfds data dir or folder of npz packs"
    )
    p.add_argument("--download", action="store_true", help="let tfds download the dataset")
    p.add_argument(
        "--resolution",
        metavar="N",
        type=count_at_least(1),
        default=None,
        help="downsample images to N x N by k x k means (e.g. 16 for CIFAR-10 on CPU)",
    )
    p.add_argument(
        "--train-subset",
        metavar="N",
        type=count_at_least(1),
        default=None,
        help="train on a seeded stratified subset of N training examples",
    )
    p.add_argument(
        "--subset-seed",
        metavar="N",
        type=count_at_least(0),
        default=None,
        help="seed of --train-subset (default 0)",
    )


#: ``--flag`` dest -> ``TrainConfig`` field, for the flags that set the training config.
TRAIN_FLAGS = {
    "epochs": "epochs",
    "batch_size": "batch_size",
    "lr": "learning_rate",
    "optimizer": "optimizer",
    "momentum": "momentum",
    "weight_decay": "weight_decay",
    "schedule": "schedule",
    "warmup_epochs": "warmup_epochs",
    "label_smoothing": "label_smoothing",
    "augment": "augment",
    "crop_padding": "crop_padding",
    "dtype": "compute_dtype",
    "seed": "seed",
    "progress": "progress",
    "max_steps": "max_steps",
    "eval_every_steps": "eval_every_steps",
    "input": "input",
}
#: ``TrainConfig`` fields that a resumed run may change (``max_steps`` is not kept).
RESUME_FIELDS = ("epochs", "progress", "max_steps", "eval_every_steps", "input")
#: Augmentation when --augment is not given (flipping digits changes their meaning).
DEFAULT_AUGMENT = {"digits": "none", "mnist": "none"}


def _add_train(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        formatter_class=HelpFormatter,
        epilog=EXAMPLES["train"],
        help="train a network (new, resumed, or from a grown checkpoint)",
        description=(
            "Train a network and write a checkpoint every epoch plus metrics.jsonl into --out. "
            "The network is a preset (--arch, --arch-json, --width-mult), the variables of "
            "a checkpoint (--from, e.g. one written by 'jnet2net grow'), or, with --resume, the "
            "run already in --out, which continues where it stopped with its saved config "
            "(only --epochs, --max-steps, --eval-every-steps and --progress may change)."
        ),
    )
    arch = p.add_argument_group("network")
    arch.add_argument(
        "--arch", metavar="NAME", default=None, help="preset: resnet20, vgg11, resnet18, ..."
    )
    arch.add_argument(
        "--arch-json",
        metavar="JSON",
        default=None,
        help="a whole architecture (JSON with 'family') or field overrides of --arch",
    )
    arch.add_argument(
        "--width-mult",
        metavar="X",
        type=positive_float,
        default=None,
        help="scale every width field",
    )
    arch.add_argument(
        "--from",
        dest="source",
        metavar="CKPT",
        default=None,
        help="start from this checkpoint's variables",
    )
    _add_data_args(p)
    t = p.add_argument_group("training (a resumed run keeps its own)")
    t.add_argument("--epochs", metavar="N", type=int, default=None, help=_config_help("epochs"))
    t.add_argument(
        "--batch-size", metavar="N", type=int, default=None, help=_config_help("batch_size")
    )
    t.add_argument(
        "--lr", metavar="X", type=float, default=None, help=_config_help("learning_rate")
    )
    t.add_argument(
        "--optimizer", choices=("sgd", "adamw"), default=None, help=_config_help("optimizer")
    )
    t.add_argument(
        "--momentum", metavar="X", type=float, default=None, help=_config_help("momentum")
    )
    t.add_argument(
        "--weight-decay", metavar="X", type=float, default=None, help=_config_help("weight_decay")
    )
    t.add_argument(
        "--schedule",
        choices=("cosine", "onecycle", "constant"),
        default=None,
        help=_config_help("schedule"),
    )
    t.add_argument(
        "--warmup-epochs", metavar="X", type=float, default=None, help=_config_help("warmup_epochs")
    )
    t.add_argument(
        "--label-smoothing",
        metavar="X",
        type=float,
        default=None,
        help=_config_help("label_smoothing"),
    )
    t.add_argument(
        "--augment",
        choices=("crop_flip", "crop", "flip", "none"),
        default=None,
        help="training augmentation ('crop': no flips); default: none for digits and mnist, "
        "else crop_flip",
    )
    t.add_argument(
        "--crop-padding", metavar="N", type=int, default=None, help=_config_help("crop_padding")
    )
    t.add_argument(
        "--tensorboard",
        metavar="DIR",
        default=None,
        help="also write the records as TensorBoard scalars to DIR (needs tensorboardX: "
        "pip install 'jnet2net[tensorboard]')",
    )
    t.add_argument(
        "--input",
        choices=("auto", "memory", "stream"),
        default=None,
        help="where batches come from: 'stream' reads a tfds array_record dataset record by "
        "record with grain (each process its rows; --resolution then resizes and "
        "centre-crops), 'memory' holds the training set on every device, 'auto' (default) "
        "streams sets larger than a quarter of a device's memory (and a resumed run may switch)",
    )
    t.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default=None,
        help=_config_help("compute_dtype"),
    )
    t.add_argument("--seed", metavar="N", type=int, default=None, help=_config_help("seed"))
    t.add_argument(
        "--max-steps",
        metavar="N",
        type=count_at_least(1),
        default=None,
        help="stop at global step N, mid-epoch allowed (the schedule still spans --epochs; "
        "not kept by --resume)",
    )
    t.add_argument(
        "--eval-every-steps",
        metavar="N",
        type=count_at_least(1),
        default=None,
        help="also evaluate, log and save a checkpoint every N steps (default: at epoch ends)",
    )
    t.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar; default: a bar on a terminal, else a progress line every "
        f"{_progress_every_s():g} s on stderr",
    )
    sd = p.add_argument_group("training-time scale-down (Learn&Drop)")
    sd.add_argument(
        "--scale-down",
        action="store_true",
        help="drop the layers that stopped learning from training (jnet2net.scale_down)",
    )
    sd.add_argument(
        "--scale-json",
        metavar="JSON",
        default=None,
        help='ScaleDownConfig fields as JSON, e.g. \'{"mode": "cache", "check_every": 50}\'',
    )
    g = p.add_argument_group("growth schedule (Net2Net growth inside the run)")
    g.add_argument(
        "--grow-at",
        metavar="EPOCH:CHANGES",
        action="append",
        default=None,
        help="grow the network at EPOCH (fractional allowed), e.g. '3:widen=2x', "
        "'6:widen=2x,deepen=+1', '4.5:widen=16,32,64,noise=fresh,rewarm=0.5'; keys: widen "
        "(multiplier or widths), deepen (+N or depths), widen_hidden, deepen_hidden, noise, "
        "noise_scale, moments (map/reset), rewarm (epochs); repeat for more events",
    )
    run = p.add_argument_group("run")
    run.add_argument(
        "--out", metavar="DIR", required=True, help="run directory: checkpoints + metrics.jsonl"
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out; starts it when --out holds none yet, so one command "
        "serves every restart of a preemptible job",
    )
    _add_max_params(run)
    run.add_argument(
        "--keep",
        metavar="N",
        type=count_at_least(0),
        default=2,
        help="checkpoints to keep (0: all)",
    )
    _add_distributed_args(p)
    p.set_defaults(func=cmd_train)


def _add_distributed_args(p: argparse.ArgumentParser) -> None:
    d = p.add_argument_group(
        "several processes (jax.distributed; every process runs the same command)"
    )
    d.add_argument(
        "--distributed",
        action="store_true",
        help="join a multi-process run detected from the environment (SLURM, Open MPI, Cloud "
        "TPU, or $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES, $JAX_PROCESS_ID)",
    )
    d.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        default=None,
        help="process 0's address for the others to join (implies --distributed)",
    )
    d.add_argument(
        "--num-processes",
        metavar="N",
        type=count_at_least(1),
        default=None,
        help="processes in the run (implies --distributed)",
    )
    d.add_argument(
        "--process-id",
        metavar="I",
        type=count_at_least(0),
        default=None,
        help="this process's index, 0 .. N-1 (implies --distributed)",
    )


def _config_help(field: str) -> str:
    """A training flag's help: what it sets and the ``TrainConfig`` field's default."""
    from jnet2net.train import TrainConfig

    default = next(f.default for f in dataclasses.fields(TrainConfig) if f.name == field)
    return f"{_FIELD_HELP[field]} (default: {default})"


#: What each ``TrainConfig`` flag sets, for ``--help``.
_FIELD_HELP = {
    "epochs": "passes over the training set; the schedule spans them",
    "batch_size": "global batch, a multiple of the device count",
    "learning_rate": "peak learning rate",
    "optimizer": "sgd (Nesterov momentum) or adamw",
    "momentum": "SGD momentum",
    "weight_decay": "decay of kernels (L2 for SGD, decoupled for AdamW)",
    "schedule": "learning-rate schedule after the warm-up",
    "warmup_epochs": "linear warm-up from 0, in epochs (fractional allowed)",
    "label_smoothing": "weight of the uniform distribution in the targets",
    "crop_padding": "zero padding of the random crop, in pixels",
    "compute_dtype": "compute dtype; parameters stay float32",
    "seed": "seeds initialisation, data order and augmentation",
}


def _progress_every_s() -> float:
    from jnet2net.train.progress import LINE_EVERY_S

    return LINE_EVERY_S


def train_config_from_args(
    args: argparse.Namespace, dataset: str, saved: dict[str, Any] | None = None
) -> Any:
    """The ``TrainConfig`` of a run: flags over defaults, or a resumed run's saved config.

    Raises:
      ValueError: a resumed run given a flag (other than those of :data:`RESUME_FIELDS`)
        that differs from its saved config.
    """
    from jnet2net.train import TrainConfig

    given = {
        field: getattr(args, dest)
        for dest, field in TRAIN_FLAGS.items()
        if getattr(args, dest, None) is not None
    }
    log_path = str(pathlib.Path(args.out) / "metrics.jsonl")
    if saved is None:
        given.setdefault("augment", DEFAULT_AUGMENT.get(dataset, TrainConfig.augment))
        return TrainConfig(**given, log_path=log_path)
    config = TrainConfig.from_dict(saved)
    for field, value in given.items():
        if field not in RESUME_FIELDS and value != getattr(config, field):
            flag = next(d for d, f in TRAIN_FLAGS.items() if f == field).replace("_", "-")
            raise ValueError(
                f"--{flag} {value} differs from the resumed run's --{flag} "
                f"{getattr(config, field)}; a resumed run keeps its config (only --epochs, "
                "--max-steps, --eval-every-steps, --progress may change): drop the flag or "
                "start a new --out"
            )
    changes = {k: v for k, v in given.items() if k in RESUME_FIELDS}
    changes.setdefault("max_steps", None)
    return config.replace(**changes, log_path=log_path)


def cmd_train(args: argparse.Namespace) -> int:
    """``jnet2net train``: joins a multi-process run first when asked, then holds
    ``--out``'s lock (process 0) while it trains; only process 0 prints to stdout."""
    from jnet2net import distributed

    start_distributed(args)
    check_out(args.out)
    # Orbax's directory checks are collective: all look before process 0 creates --out
    distributed.barrier("check_out")
    quiet = contextlib.nullcontext() if distributed.is_primary() else _stdout_to_devnull()
    with distributed.primary_locked(args.out), quiet:
        train_run(args)
    return 0


def start_distributed(args: argparse.Namespace) -> None:
    """``jnet2net.distributed.initialize`` when ``--distributed``, ``--coordinator``,
    ``--num-processes`` or ``--process-id`` is given (before any JAX work)."""
    from jnet2net import distributed

    given = (args.coordinator, args.num_processes, args.process_id)
    if args.distributed or any(v is not None for v in given):
        info = distributed.initialize(*given)
        if info.process_id == 0:
            print(
                f"{info.num_processes} processes, {info.global_devices} devices "
                f"({info.local_devices} in this process)"
            )


@contextlib.contextmanager
def _stdout_to_devnull() -> Any:
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield


def set_aside_damaged_checkpoints(out: pathlib.Path) -> None:
    """Before a resume: damaged checkpoints at the end of the run are moved aside, one line
    each on stderr, so the run continues from its newest intact checkpoint.

    Raises:
      ValueError: no checkpoint of the run is intact.
    """
    from jnet2net import checkpoint

    moved = checkpoint.set_aside_damaged(out)
    if not moved:
        return
    step = checkpoint.latest_step(out)
    for i, (_, target, reason) in enumerate(moved):
        then = f", resuming from step {step}" if step is not None and i == len(moved) - 1 else ""
        print(f"{PROG} train: {reason}; moved it to {target.name}{then}", file=sys.stderr)
    if step is None:
        raise ValueError(
            f"{out} holds no intact checkpoint to resume (damaged ones were moved to "
            f"{', '.join(t.name for _, t, _ in moved)}); start a new --out"
        )


def check_run_log(log: pathlib.Path) -> None:
    """Before a resume: a partial last line of ``log`` (a write cut by a kill) is dropped with
    a line on stderr; any other unreadable line is an error naming the file and line."""
    from jnet2net.train import repair_jsonl

    if log.is_file():
        dropped = repair_jsonl(log)
        if dropped is not None:
            print(
                f"{PROG} train: dropped the partial last line of {log} (a write cut short): "
                f"{dropped[:60]!r}",
                file=sys.stderr,
            )


def check_epochs_left(info: Any, config: Any, steps_per_epoch: int, out: pathlib.Path) -> bool:
    """Whether a resumed run has steps left; raises ValueError when ``--epochs`` ends before the
    run's latest checkpoint (the run would do nothing)."""
    end = config.epochs * steps_per_epoch
    if info.step > end:
        done = info.step / steps_per_epoch
        raise ValueError(
            f"--epochs {config.epochs} ends at step {end}, but the run in {out} is already at "
            f"step {info.step} (epoch {done:g}); pass --epochs {math.ceil(done)} or more to train "
            "on, or start a new --out"
        )
    return info.step < end


def train_run(args: argparse.Namespace) -> Any:
    """Runs ``jnet2net train``; returns ``jnet2net.train.FitResult``."""
    import jax
    import numpy as np

    from jnet2net import checkpoint, distributed, train

    out = check_out(args.out)
    saved_steps = checkpoint.all_steps(out)
    if saved_steps and not args.resume:
        raise FileExistsError(
            f"{out} already holds a run (checkpoint steps {saved_steps}); pass --resume to "
            "continue it, or choose another --out"
        )
    resuming = args.resume and bool(saved_steps)
    if resuming and (args.source or args.arch or args.arch_json or args.width_mult):
        raise ValueError(
            "--resume continues the run in --out with its own architecture; drop "
            "--from/--arch/--arch-json/--width-mult"
        )
    if args.source and (args.arch or args.arch_json or args.width_mult):
        raise ValueError(
            "--from takes the architecture from the checkpoint; drop "
            "--arch/--arch-json/--width-mult"
        )
    if resuming:
        set_aside_damaged_checkpoints(out)
        if jax.process_index() == 0:  # the log's one writer
            check_run_log(out / "metrics.jsonl")
    dataset = _dataset_name(args, out if resuming else args.source, strict=resuming)
    flags = _data_flags(args, out if resuming else args.source, strict=resuming)
    saved_config = checkpoint.checkpoint_info(out).train_config if resuming else None
    train_set, test_set = training_data(
        dataset, flags, args, args.input or (saved_config or {}).get("input", "auto")
    )
    signals.check_interrupt()
    start_dir = out if resuming else args.source
    if start_dir is not None:
        hint = "" if resuming else "; for other classes, 'jnet2net transfer --num-classes N' first"
        check_dataset_fits(checkpoint.checkpoint_info(start_dir), train_set, hint)
    spe = train.steps_per_epoch(len(train_set), _batch_size(args, out, resuming))

    state = variables = None
    metadata: dict[str, Any] = {"dataset": train_set.name, **data_metadata(flags)}
    if resuming:
        info = checkpoint.checkpoint_info(out)
        if info.train_config is None:
            raise ValueError(f"{info.path} has no training config to resume with")
        config = train_config_from_args(args, dataset, info.train_config)
        if not check_epochs_left(info, config, spe, out):
            print(f"run {out} already finished its {config.epochs} epochs (step {info.step})")
            return None
        model = info.model
        metadata.update(info.metadata)
        metadata.pop("record", None)
        abstract = jax.eval_shape(
            lambda: train.create_train_state(
                model,
                config,
                np.zeros((1, *train_set.image_shape), np.uint8),
                key=jax.random.key(0),
                steps_per_epoch=spe,
            )
        )
        state, restored = checkpoint.restore_train_state(out, abstract, model=model)
        print(f"resuming {restored.path}: {describe(model)}, step {restored.step}")
    else:
        config = train_config_from_args(args, dataset)
        if args.source:
            start = checkpoint.restore(args.source)
            model, variables = start.model, start.variables
            metadata["started_from"] = str(start.path)
            print(f"starting from {start.path}: {describe(model)}")
        else:
            model = model_from_args(
                args.arch, args.arch_json, args.width_mult, train_set.num_classes
            )
            check_param_limit(model, train_set.image_shape, args.max_params, "the network")
            print(f"new network: {describe(model)}")
    signals.check_interrupt()
    growth = ()
    if resuming and "growth" in metadata:
        if args.grow_at:
            raise ValueError(
                "a resumed run keeps its growth schedule; drop --grow-at (saved: "
                f"{metadata['growth']})"
            )
        growth = tuple(train.Grow(**fields) for fields in metadata["growth"])
    elif args.grow_at:
        if resuming:
            raise ValueError("--grow-at starts a growth schedule; a resumed run keeps its own")
        if args.scale_down:
            raise ValueError("--grow-at and --scale-down do not combine yet; pick one")
        growth = growth_events(
            model, args.grow_at, train_set.image_shape, max_params=args.max_params
        )
        metadata["growth"] = [event.to_dict() for event in growth]
        for event in growth:
            print(f"growth at epoch {event.at_epoch:g}: {event.to_dict()}")
    if args.scale_down:
        if resuming:
            raise ValueError(
                "a --scale-down run cannot be resumed (its frozen prefix is not a train "
                "state); start a new --out, e.g. --from its last checkpoint"
            )
        return _train_scale_down(args, model, train_set, test_set, config, variables, metadata)
    if args.scale_json:
        raise ValueError("--scale-json configures --scale-down; pass --scale-down too")
    keep = None if args.keep == 0 else args.keep
    save_epoch = checkpoint.epoch_saver(
        out,
        model,
        config,
        input_shape=train_set.image_shape,
        metadata=metadata,
        max_to_keep=keep,
    )

    savers = [save_epoch]
    board = None
    if args.tensorboard and distributed.is_primary():
        board = train.TensorBoardWriter(args.tensorboard)

    def on_epoch_end(state: Any, record: dict[str, Any]) -> None:
        if record["step"] > 0:  # step 0: the starting network's evaluation, not saved
            savers[-1](state, record)
        if board is not None:
            board.write(record)
        print_line(format_record(record, config.epochs), config.progress)
        signals.check_interrupt()

    def on_grow(new_model: Any, state: Any, record: dict[str, Any]) -> None:
        savers.append(
            checkpoint.epoch_saver(
                out,
                new_model,
                config,
                input_shape=train_set.image_shape,
                metadata=metadata,
                max_to_keep=keep,
            )
        )
        if board is not None:
            board.write(record)
        print_line(
            f"grew at epoch {record['epoch']:g} (step {record['step']}): {describe(new_model)}, "
            f"output error {record['output_error']:.1e}",
            config.progress,
        )
        signals.check_interrupt()

    with board if board is not None else contextlib.nullcontext():
        result = train.fit(
            model,
            train_set,
            test_set,
            config,
            state=state,
            variables=variables,
            on_epoch_end=on_epoch_end,
            growth=growth,
            on_grow=on_grow,
            initial_eval=variables is not None,
            on_step=lambda step: signals.check_interrupt(),
        )
    final = checkpoint.latest_step(out)
    if distributed.is_primary():
        print(run_summary(result.history))
    print(f"run {out}: checkpoint step {final}, metrics {config.log_path}")
    return result


def scale_down_config(text: str | None) -> Any:
    """A ``ScaleDownConfig`` from ``--scale-json`` (``None``: the defaults)."""
    from jnet2net.scale_down import ScaleDownConfig

    try:
        fields = json.loads(text) if text else {}
    except json.JSONDecodeError as err:
        raise ValueError(f"--scale-json is not valid JSON ({err}): {text!r}") from None
    if not isinstance(fields, dict):
        raise ValueError(f"--scale-json must be a JSON object, got {text!r}")
    known = {f.name for f in dataclasses.fields(ScaleDownConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown ScaleDownConfig fields {unknown}; known: {sorted(known)}")
    return ScaleDownConfig(**fields)


def _train_scale_down(
    args: argparse.Namespace,
    model: Any,
    train_set: Any,
    test_set: Any,
    config: Any,
    variables: Any,
    metadata: dict[str, Any],
) -> Any:
    """``train --scale-down``: Learn&Drop training; the whole network is saved at the end."""
    from jnet2net import checkpoint, train

    scale_config = scale_down_config(args.scale_json)

    def on_epoch_end(state: Any, record: dict[str, Any]) -> None:
        line = format_record(record, config.epochs)
        print_line(f"{line} cut {record.get('cut')}", config.progress)
        signals.check_interrupt()

    result = train.fit(
        model,
        train_set,
        test_set,
        config,
        scale_down=scale_config,
        variables=variables,
        on_epoch_end=on_epoch_end,
        on_step=lambda step: signals.check_interrupt(),
    )
    run = result.scale_down
    summary = json.loads(json.dumps(run.summary, default=str))
    path = checkpoint.save(
        args.out,
        model=model,
        variables=run.variables,
        step=summary["steps"],
        train_config=config,
        metadata={
            **metadata,
            "scale_down": dataclasses.asdict(scale_config),
            "cut": run.cut,
            "summary": summary,
        },
        input_shape=train_set.image_shape,
    )
    saved = summary.get("flops_saved")
    saved_text = "n/a" if saved is None else f"{saved:.1%}"
    print(
        f"scale-down: cut {run.cut} (frozen {summary.get('frozen')}), training FLOPs saved "
        f"{saved_text}; saved {path} (variables only: not resumable)"
    )
    return result


def _dataset_name(
    args: argparse.Namespace, source: str | pathlib.Path | None, *, strict: bool = False
) -> str:
    """``--dataset``, else the dataset that checkpoint ``source`` names, else ``digits``.

    ``strict`` (a resumed run): a ``--dataset`` other than the saved one is an error.
    """
    from jnet2net import checkpoint

    saved = None
    if source is not None:
        saved = checkpoint.checkpoint_info(source).metadata.get("dataset")
    if strict and args.dataset and saved and args.dataset != saved:
        raise ValueError(
            f"--dataset {args.dataset} differs from the resumed run's dataset {saved!r}"
        )
    return args.dataset or saved or "digits"


#: ``--flag`` dest -> its value when neither given nor saved with the checkpoint.
DATA_FLAGS = {"resolution": None, "train_subset": None, "subset_seed": 0}


def _data_flags(
    args: argparse.Namespace, source: str | pathlib.Path | None, *, strict: bool = False
) -> dict[str, int | None]:
    """``--resolution/--train-subset/--subset-seed``, else checkpoint ``source``'s, else defaults.

    ``strict`` (a resumed run): a flag other than the run's saved value is an error.
    """
    from jnet2net import checkpoint

    saved = {} if source is None else checkpoint.checkpoint_info(source).metadata
    flags: dict[str, int | None] = {}
    for key, default in DATA_FLAGS.items():
        given, kept = getattr(args, key), saved.get(key, default)
        if strict and given is not None and given != kept:
            flag = f"--{key.replace('_', '-')}"
            theirs = f"{flag} {kept}" if kept is not None else f"data (no {flag})"
            raise ValueError(
                f"{flag} {given} differs from the resumed run's {theirs}; a resumed run keeps "
                "its data"
            )
        flags[key] = given if given is not None else kept
    return flags


def training_data(
    dataset: str, flags: dict[str, int | None], args: argparse.Namespace, input_mode: str
) -> tuple[Any, Any]:
    """``(train, test)`` of ``jnet2net train``: :class:`~jnet2net.data.StreamSet` s of a
    tfds dataset under ``--input stream`` (digits, which lives in memory, is loaded and
    streamed from there by ``fit``), else :class:`~jnet2net.data.Dataset` s in memory.
    """
    from jnet2net import data

    if input_mode == "stream" and dataset != "digits":
        if flags["train_subset"] is not None:
            raise ValueError(
                "--train-subset picks an in-memory subset; with --input stream the whole "
                "training split is read (use --input memory or auto for the subset)"
            )
        return data.stream_protocol(
            dataset,
            data_dir=args.data_dir,
            download=args.download,
            image_size=flags["resolution"],
        )
    return data.load_protocol(
        dataset,
        data_dir=args.data_dir,
        download=args.download,
        resolution=flags["resolution"],
        train_subset=flags["train_subset"],
        seed=flags["subset_seed"],
    )


def data_metadata(flags: dict[str, int | None]) -> dict[str, int]:
    """The checkpoint metadata of a run's data flags: only those that change the data."""
    if flags["train_subset"] is None:
        return {} if flags["resolution"] is None else {"resolution": flags["resolution"]}
    return {k: v for k, v in flags.items() if v is not None}


def load_eval_split(
    name: str, split: str, flags: dict[str, int | None], *, data_dir: Any, download: bool
) -> Any:
    """The split ``jnet2net eval`` measures, normalised as its training run's data was.

    With ``flags['train_subset']``, ``split='train'`` is that subset and every other split
    carries the subset's ``mean``/``std`` (as ``fit`` normalised the test set).
    """
    from jnet2net import data

    common = {"data_dir": data_dir, "download": download, "resolution": flags["resolution"]}
    if flags["train_subset"] is None:
        return data.load(name, split, **common)
    train_set = data.load(
        name,
        "train",
        train_subset=flags["train_subset"],
        subset_seed=flags["subset_seed"],
        **common,
    )
    if split == "train":
        return train_set
    dataset = data.load(name, split, **common)
    return dataclasses.replace(dataset, mean=train_set.mean, std=train_set.std)


def _batch_size(args: argparse.Namespace, out: pathlib.Path, resuming: bool) -> int:
    """The batch size the run uses (a resumed run keeps its own)."""
    from jnet2net import checkpoint
    from jnet2net.train import TrainConfig

    if resuming:
        saved = checkpoint.checkpoint_info(out).train_config or {}
        return int(saved.get("batch_size", TrainConfig.batch_size))
    return args.batch_size or TrainConfig.batch_size


def print_line(text: str, progress: bool | None) -> None:
    """Prints ``text``; over the progress bar's line (which redraws below) when it is shown."""
    from jnet2net.train import progress_enabled

    if progress_enabled(progress):
        sys.stderr.write("\r" + " " * 100 + "\r")
        sys.stderr.flush()
    print(text, flush=True)


def format_record(record: dict[str, Any], epochs: int) -> str:
    """``epoch 3/10 step 66 loss 0.412 acc 0.871 test_loss 0.3 test_acc 0.903 (2.1 s)``;
    a record between epoch ends shows its fractional epoch, the step-0 record no loss."""
    text = f"epoch {record['epoch']:.4g}/{epochs} step {record['step']}"
    if record.get("train_loss") is not None:
        text += f" loss {record['train_loss']:.3f} acc {record['train_acc']:.3f}"
    if record.get("test_acc") is not None:
        text += f" test_loss {record['test_loss']:.3f} test_acc {record['test_acc']:.3f}"
    return text + f" ({record['wall_s']:.1f} s)"


# --- transfer --------------------------------------------------------------------------


def _add_transfer(sub: Any) -> None:
    p = sub.add_parser(
        "transfer",
        formatter_class=HelpFormatter,
        epilog=EXAMPLES["transfer"],
        help="initialise another architecture from a checkpoint (weight reuse), save it",
        description=(
            "Restore a checkpoint and build variables for another VGG/ResNet of the same "
            "family (deeper or shallower, wider or narrower, other kernel sizes or classes) "
            "that reuse its weights (jnet2net.reuse.transfer); print what was reused and save "
            "the result as a new checkpoint at step 0. A superset architecture computes the "
            "same function (the relative error is printed)."
        ),
    )
    _add_source_args(p)
    p.add_argument(
        "--to",
        metavar="ARCH",
        default=None,
        help="destination: a preset (resnet32, vgg13, ...) or a JSON spec with 'family'",
    )
    p.add_argument(
        "--arch-json", metavar="JSON", default=None, help="architecture JSON or --to overrides"
    )
    p.add_argument(
        "--width-mult",
        metavar="X",
        type=positive_float,
        default=None,
        help="scale every width field",
    )
    p.add_argument(
        "--num-classes", metavar="N", type=int, default=None, help="default: the source's"
    )
    p.add_argument(
        "--depth-map",
        choices=("proportional", "append"),
        default="proportional",
        help="where source layers go in a deeper stage: spread out, or new ones at the end",
    )
    p.add_argument(
        "--fill",
        choices=("identity", "repeat"),
        default="identity",
        help="new layers: identities (function kept) or copies of a source layer (not exact)",
    )
    p.add_argument(
        "--shrink",
        choices=("evenly", "first", "last"),
        default="evenly",
        help="which layers a shallower stage keeps: evenly spaced, the first or the last",
    )
    p.add_argument(
        "--noise", choices=NOISES, default="split", help="symmetry breaking of widened units"
    )
    p.add_argument("--noise-scale", metavar="X", type=float, default=0.1, help="size of that noise")
    p.add_argument("--seed", metavar="N", type=int, default=0, help="seeds mappings and noise")
    p.add_argument("--report", action="store_true", help="print the per-leaf report")
    _add_max_params(p)
    p.add_argument("--out", metavar="CKPT", required=True, help="new checkpoint directory")
    p.set_defaults(func=cmd_transfer)


def cmd_transfer(args: argparse.Namespace) -> int:
    """``jnet2net transfer``: holds ``--out``'s lock while it works."""
    from jnet2net import checkpoint, rundir

    to = args.to
    if to is not None and to.lstrip().startswith(("{", "[")) and args.arch_json is not None:
        raise ValueError("--to is a JSON spec: pass the architecture once, drop --arch-json")
    check_out(args.out)
    if checkpoint.latest_step(args.out) is not None:
        raise ValueError(f"{args.out} already holds a checkpoint")
    with rundir.locked(args.out):
        return transfer_run(args)


def transfer_run(args: argparse.Namespace) -> int:
    """Runs ``jnet2net transfer`` once ``--out`` is checked and locked."""
    import jax
    import numpy as np

    from jnet2net import checkpoint, model_config, output_error
    from jnet2net.reuse import transfer

    to, arch_json, json_flag = args.to, args.arch_json, "--arch-json"
    if to is not None and to.lstrip().startswith(("{", "[")):
        to, arch_json, json_flag = None, to, "--to"
    info = checkpoint.checkpoint_info(args.source, step=args.step)
    classes = info.model.num_classes if args.num_classes is None else args.num_classes
    dst_model = model_from_args(
        to, arch_json, args.width_mult, classes, arch_flag="--to", json_flag=json_flag
    )
    check_param_limit(dst_model, info.input_shape, args.max_params, "the destination")
    src = checkpoint.restore(args.source, step=info.step)
    print(f"source {src.path}: {describe(src.model)}")
    variables, report = transfer(
        src.model,
        src.variables,
        dst_model,
        key=jax.random.key(args.seed),
        depth_map=args.depth_map,
        fill=args.fill,
        shrink=args.shrink,
        noise=args.noise,
        noise_scale=args.noise_scale,
        input_shape=info.input_shape,
    )
    if args.report:
        print(report)
    print(
        f"destination: {describe(dst_model)}, {count_params(variables):,} params, "
        f"{report.reused_fraction:.1%} reused"
    )
    error = None
    if report.function_preserving:
        xs = np.random.default_rng(args.seed).standard_normal((2, 8, *info.input_shape[1:]))
        errors = output_error(src.model, src.variables, dst_model, variables, xs.astype("float32"))
        error = float(np.max(np.asarray(errors)))
        print(f"function preserved: max relative output error {error:.2e}")
    else:
        print("function changed by: " + "; ".join(report.approximations))
    path = checkpoint.save(
        args.out,
        model=dst_model,
        variables=variables,
        step=0,
        metadata={
            **(
                {"dataset": src.metadata["dataset"]}
                if classes == src.model.num_classes and "dataset" in src.metadata
                else {}
            ),
            "transferred_from": str(src.path),
            "source_model": model_config(src.model),
            "reused_fraction": report.reused_fraction,
            "approximations": list(report.approximations),
            "relative_error": error,
        },
        input_shape=info.input_shape if info.input_shape_given else None,
    )
    print(f"saved {path}")
    return 0


# --- eval ------------------------------------------------------------------------------


def _add_eval(sub: Any) -> None:
    p = sub.add_parser(
        "eval",
        formatter_class=HelpFormatter,
        epilog=EXAMPLES["eval"],
        help="loss and accuracy of a checkpoint on a dataset split",
        description="Restore a checkpoint and print its loss and accuracy on a dataset split.",
    )
    _add_source_args(p)
    _add_data_args(p)
    p.add_argument("--split", metavar="NAME", default="test", help="dataset split to measure")
    p.add_argument(
        "--batch-size", metavar="N", type=count_at_least(1), default=256, help="eval batch"
    )
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    """``jnet2net eval``."""
    from jnet2net import checkpoint, train

    restored = checkpoint.restore(args.source, step=args.step)
    name = _dataset_name(args, restored.path.parent)
    flags = _data_flags(args, restored.path.parent)
    dataset = load_eval_split(
        name, args.split, flags, data_dir=args.data_dir, download=args.download
    )
    check_dataset_fits(checkpoint.checkpoint_info(args.source, step=restored.step), dataset)
    loss, accuracy = train.evaluate(
        restored.model, restored.variables, dataset, batch_size=args.batch_size
    )
    metrics = {"loss": loss, "accuracy": accuracy}
    result = {
        "checkpoint": str(restored.path),
        "step": restored.step,
        "dataset": dataset.name,
        "split": args.split,
        "examples": len(dataset),
        **{k: float(v) for k, v in metrics.items()},
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{restored.path} (step {restored.step}) on {dataset.name}/{args.split}:")
        for k, v in metrics.items():
            print(f"  {k}: {float(v):.4f}")
    return 0


# --- plot ------------------------------------------------------------------------------


def _add_plot(sub: Any) -> None:
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


# --- demo ------------------------------------------------------------------------------


def _add_demo(sub: Any) -> None:
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


# --- entry point -----------------------------------------------------------------------

#: Subcommands in --help order: ``(name, adds its parser)``.
COMMANDS: list[Callable[[Any], None]] = [
    _add_demo,
    _add_train,
    _add_grow,
    _add_transfer,
    _add_eval,
    _add_plot,
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


#: Library names of settings -> the ``dest`` of the flag that sets them.
FLAG_ALIASES = {field: dest for dest, field in TRAIN_FLAGS.items()}


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


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``jnet2net ARGV``; returns the exit status.

    Errors print ``jnet2net COMMAND: error: ...`` and return 2 (argparse's status for bad
    arguments); an interrupt prints one line and returns 130 (``train``: 130 for SIGINT, 143
    for SIGTERM, see :mod:`jnet2net.signals`). ``JNET2NET_TRACEBACK=1`` raises instead, and
    leaves the warnings of absl and matplotlib on (otherwise quiet).
    """
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # reported by the command's parser: 'jnet2net train: error: ...'
        subparser(parser, args.command).error(f"unrecognized arguments: {' '.join(unknown)}")
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


if __name__ == "__main__":
    sys.exit(main())
