"""A network from a spec: a preset name, field overrides (or a whole architecture) and a width
multiplier."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def scale_width(width: int, factor: float) -> int:
    """``width * factor`` rounded half up (``1.5x`` of 3 is 5, of 5 is 8), at least 1."""
    return max(1, math.floor(width * factor + 0.5))


def scaled_model(model: Any, factor: float) -> Any:
    """``model`` with every width field multiplied by ``factor`` (at least 1 unit each).

    A ViT's ``embed_dim``, ``num_heads`` and ``mlp_dim`` are scaled and its head width kept
    (``head_dim`` is set when ``embed_dim`` is no longer ``num_heads`` heads of it).
    """
    if not hasattr(model, "stage_widths"):  # a ViT
        heads, embed = scale_width(model.num_heads, factor), scale_width(model.embed_dim, factor)
        head_dim = model.resolved_head_dim()
        return model.clone(
            embed_dim=embed,
            num_heads=heads,
            mlp_dim=scale_width(model.mlp_dim, factor),
            head_dim=None if embed == heads * head_dim else head_dim,
        )

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


def model_from_fields(
    arch: str | None,
    fields: Mapping[str, Any] | None,
    width_mult: float | None,
    num_classes: int,
    *,
    arch_name: str = "model.arch",
    fields_name: str = "model.fields",
) -> Any:
    """The module a preset ``arch`` with ``fields`` overrides names, for ``num_classes``.

    ``fields`` is either a whole architecture (``jnet2net.model_config`` output, with
    ``family``) or field overrides of the ``arch`` preset; ``width_mult`` then scales every
    width field. ``arch_name`` and ``fields_name`` name the two settings in messages (the
    command line passes its flags).

    Raises:
      ValueError: no architecture named, an unknown preset or field, or a ``num_classes``
        other than the dataset's.
    """
    from jnet2net import models

    fields = dict(fields or {})
    if "family" in fields:
        try:
            model = models.model_from_config({"num_classes": num_classes, **fields})
        except (TypeError, ValueError) as err:
            raise type(err)(f"{fields_name}: {err}") from None
    elif arch is None:
        raise ValueError(
            f"name an architecture: {arch_name} NAME (a preset) or {fields_name} with 'family'"
        )
    else:
        base = models.preset(arch)
        known = set(models.model_config(base)) - {"family"}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(
                f"{fields_name}: unknown {type(base).__name__} fields {unknown}; known: "
                f"{sorted(known)}"
            )
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
        model = models.preset(arch, **{"num_classes": num_classes, **fields})
    if model.num_classes != num_classes:
        raise ValueError(
            f"the architecture has num_classes={model.num_classes} but the dataset has "
            f"{num_classes} classes"
        )
    if width_mult is not None:
        model = scaled_model(model, width_mult)
    return model
