"""Architecture from flags: ``--arch``/``--arch-json``/``--width-mult``, width and depth values
(``'1.5x'``, ``'+1'``, ``'16,32,64'``), the grown network of ``grow`` and ``--max-params``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from jnet2net.cli.args import json_object
from jnet2net.config.model import model_from_fields, scale_width, scaled_model


def parse_widths(text: str, current: Sequence[int], *, what: str = "widths") -> tuple[int, ...]:
    """``'16,32,64'`` -> that tuple; ``'1.5x'`` (or ``'x1.5'``) -> ``current`` scaled, rounded.

    Raises:
      ValueError: a malformed value, or a count that differs from ``len(current)``.
    """
    text = text.strip()
    factor = multiplier(text)
    if factor is not None:
        return tuple(scale_width(w, factor) for w in current)
    values = int_list(text, what)
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
        extra = int_list(text[1:], what)
        if len(extra) != 1:
            raise ValueError(f"--{what} '+N' adds N to every stage, got {text!r}")
        return tuple(d + extra[0] for d in current)
    values = int_list(text, what)
    if len(values) != len(current):
        raise ValueError(
            f"--{what} needs {len(current)} comma-separated depths (the model has "
            f"{tuple(current)}), got {text!r}"
        )
    return values


def multiplier(text: str) -> float | None:
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


def int_list(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--{what} takes comma-separated ints, got {text!r}") from None
    if not values or min(values) <= 0:
        raise ValueError(f"--{what} takes positive comma-separated ints, got {text!r}")
    return values


def widening_sizes(model: Any, text: str) -> dict[str, Any]:
    """``widen`` keyword arguments for ``--widen TEXT``: a multiplier scales every width field
    the model has (stage, hidden, inner, stem widths), a list sets ``stage_widths``."""
    if multiplier(text.strip()) is None:
        return {"widths": parse_widths(text, model.stage_widths, what="widen")}
    scaled = scaled_model(model, multiplier(text.strip()))
    sizes = {"widths": scaled.stage_widths}
    for field in ("hidden_widths", "inner_widths", "stem_width"):
        if getattr(model, field, None):
            sizes[field] = getattr(scaled, field)
    return sizes


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
    overrides = json_object(arch_json, json_flag) if arch_json else {}
    return model_from_fields(
        arch, overrides, width_mult, num_classes, arch_name=arch_flag, fields_name=json_flag
    )


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
        if text is not None and multiplier(text.strip()) is None:
            int_list(text.strip(), flag)
    if deepen is not None:
        text = deepen.strip()
        int_list(text[1:] if text.startswith("+") else text, "deepen")
