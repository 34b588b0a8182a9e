"""Growth schedules: ``Grow`` events that widen and deepen a network inside one ``fit``.

A growth schedule is a sequence of :class:`Grow` events, each at a (possibly fractional)
epoch. At an event's step the model and the whole train state grow exactly
(:func:`grow_at_event`): params and BatchNorm statistics by ``jnet2net.widen`` /
``jnet2net.deepen``, optimizer moments mapped like their parameters, and ``step`` and the
learning-rate schedule carried on, so the schedule spans the whole run.

Example::

    growth = (Grow(3, widths=(16, 32, 64)), Grow(6, widths=(32, 64, 128), depths=(4, 4, 4)))
    result = fit(narrow, train, test, config, growth=growth, growth_key=jax.random.key(0))
    result.model  # the final, grown module

Any other linen module grows to a ``target`` module (``Grow(3, target=wider_module)``):
``jnet2net.widen``/``deepen`` with ``target=``, by the unit groups discovered from its
computation.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jnet2net.grow import NOISES, Noise, check_noise_scale
from jnet2net.reuse.layout import describe
from jnet2net.train.growth import (
    MOMENTS,
    Moments,
    deepen_train_state,
    target_train_state,
    widen_train_state,
)
from jnet2net.train.state import TrainState

#: The sizes a :class:`Grow` event may set, in the order they are applied (widen first).
WIDEN_FIELDS = ("widths", "hidden_widths", "inner_widths", "stem_width")
DEEPEN_FIELDS = ("depths", "hidden_depths")
#: A ViT's sizes (``jnet2net.grow_vit``), also widened first.
VIT_WIDEN_FIELDS = ("embed_dim", "mlp_dim", "num_heads")
VIT_DEEPEN_FIELDS = ("depth",)
WIDEN_FIELDS += VIT_WIDEN_FIELDS
DEEPEN_FIELDS += VIT_DEEPEN_FIELDS


@dataclasses.dataclass(frozen=True)
class Grow:
    """One growth event of a training run.

    Attributes:
      at_epoch: when to grow, in epochs from the start of the run (fractional allowed);
        the event happens before step ``round(at_epoch * steps_per_epoch)``.
      widths: new ``stage_widths`` (``jnet2net.widen``).
      hidden_widths: new VGG ``hidden_widths``.
      inner_widths: new ResNet ``inner_widths``.
      stem_width: new ResNet ``stem_width``.
      depths: new ``stage_depths`` (``jnet2net.deepen``; applied after widening).
      hidden_depths: new VGG hidden layer count.
      noise: ``widen``'s new-unit initialisation: ``'fresh'`` (default: new units with
        their own random incoming weights and zero outgoing weights; on the CPU CIFAR-10
        protocol it ended 4.5 points above ``'split'`` at equal FLOPs, see
        ``experiments/progressive``), ``'split'``, ``'none'`` or ``'paper'``.
      noise_scale: ``widen``'s ``noise_scale``.
      moments: ``'map'`` (optimizer moments follow their parameters) or ``'reset'``.
      rewarm_epochs: after the event, ramp the learning rate linearly from 0 back to the
        schedule's value over this many epochs (0: the schedule simply continues).
      embed_dim: new ViT embedding width (a multiple of the old one).
      mlp_dim: new ViT MLP width.
      num_heads: new ViT head count.
      depth: new ViT block count (applied after widening).
      target: instead of the sizes: the grown module itself (any linen module of the
        model's class, wider *or* deeper), grown by ``jnet2net.widen``/``deepen`` with
        ``target=`` (:func:`jnet2net.train.growth.target_train_state`).
      rules: with a deeper ``target``: ``deepen``'s ``rules`` for the new leaves.
    """

    at_epoch: float
    widths: tuple[int, ...] | None = None
    hidden_widths: tuple[int, ...] | None = None
    inner_widths: tuple[int, ...] | None = None
    stem_width: int | None = None
    depths: tuple[int, ...] | None = None
    hidden_depths: int | None = None
    noise: Noise = "fresh"
    noise_scale: float = 0.1
    moments: Moments = "map"
    rewarm_epochs: float = 0.0
    embed_dim: int | None = None
    mlp_dim: int | None = None
    num_heads: int | None = None
    depth: int | None = None
    target: nn.Module | None = None
    rules: tuple[tuple[str, Any], ...] | None = None

    def __post_init__(self) -> None:
        _check_real("at_epoch", self.at_epoch, positive=True)
        _check_real("rewarm_epochs", self.rewarm_epochs, positive=False)
        object.__setattr__(self, "at_epoch", float(self.at_epoch))
        object.__setattr__(self, "rewarm_epochs", float(self.rewarm_epochs))
        for name in ("widths", "hidden_widths", "inner_widths", "depths"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _int_tuple(name, value))
        for name in ("stem_width", "hidden_depths", *VIT_WIDEN_FIELDS, *VIT_DEEPEN_FIELDS):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _int(name, value))
        if self.noise not in NOISES:
            raise ValueError(f"Grow.noise must be one of {NOISES}, got {self.noise!r}")
        check_noise_scale(self.noise_scale)
        if self.moments not in MOMENTS:
            raise ValueError(f"Grow.moments must be one of {MOMENTS}, got {self.moments!r}")
        self._check_target()
        if not (self.widens or self.deepens):
            raise ValueError(
                f"Grow(at_epoch={self.at_epoch}) changes nothing: give widths, hidden_widths, "
                "inner_widths, stem_width, depths or hidden_depths (a ViT: embed_dim, mlp_dim, "
                "num_heads or depth)"
            )

    def _check_target(self) -> None:
        if self.target is None:
            if self.rules is not None:
                raise ValueError("Grow.rules apply to a target= event only")
            return
        if not isinstance(self.target, nn.Module):
            raise TypeError(
                f"Grow.target must be a flax linen module, got {type(self.target).__name__}"
            )
        sizes = [n for n in (*WIDEN_FIELDS, *DEEPEN_FIELDS) if getattr(self, n) is not None]
        if sizes:
            raise ValueError(f"Grow takes either target= or sizes ({', '.join(sizes)}), not both")
        if self.rules is not None:
            object.__setattr__(self, "rules", tuple(tuple(rule) for rule in self.rules))

    @property
    def widens(self) -> bool:
        """Whether the event sets any width (or a ``target``, which may widen)."""
        return self.target is not None or any(
            getattr(self, name) is not None for name in WIDEN_FIELDS
        )

    @property
    def deepens(self) -> bool:
        """Whether the event sets any depth."""
        return any(getattr(self, name) is not None for name in DEEPEN_FIELDS)

    def at_step(self, steps_per_epoch: int) -> int:
        """The global step before which the event happens."""
        return round(self.at_epoch * steps_per_epoch)

    def to_dict(self) -> dict[str, Any]:
        """The event's non-default fields as JSON values."""
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "target" and value is not None:
                out["target"] = module_text(value)
            elif field.name == "rules" and value is not None:
                out["rules"] = [[p, i if isinstance(i, str) else repr(i)] for p, i in value]
            elif field.name == "at_epoch" or value != field.default:
                out[field.name] = list(value) if isinstance(value, tuple) else value
        return out


def module_text(module: nn.Module) -> str:
    """``'MLP(width=9, depth=1)'``: the class and its fields (no ``parent``/``name``)."""
    fields = ", ".join(
        f"{f.name}={getattr(module, f.name)!r}"
        for f in dataclasses.fields(module)
        if f.name not in ("parent", "name")
    )
    return f"{type(module).__name__}({fields})"


def _check_real(name: str, value: Any, *, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"Grow.{name} must be a number, got {value!r}")
    bad = not math.isfinite(value) or (value <= 0 if positive else value < 0)
    if bad:
        raise ValueError(
            f"Grow.{name} must be a finite number {'>' if positive else '>='} 0, got {value!r}"
        )


def _int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"Grow.{name} must hold ints >= 1, got {value!r}")
    return int(value)


def _int_tuple(name: str, values: Any) -> tuple[int, ...]:
    if not isinstance(values, (tuple, list)):
        raise TypeError(f"Grow.{name} must be a tuple of ints, got {values!r}")
    return tuple(_int(name, v) for v in values)


# --- a schedule of events -----------------------------------------------------------------


def check_growth(growth: Any, epochs: int, steps_per_epoch: int) -> tuple[Grow, ...]:
    """The events of ``growth`` in order; raises unless each lies inside the run.

    Raises:
      TypeError: ``growth`` is not a sequence of :class:`Grow`.
      ValueError: an event at or past the last epoch, at step 0, or two at one step.
    """
    if growth is None:
        return ()
    if not isinstance(growth, Sequence) or not all(isinstance(g, Grow) for g in growth):
        raise TypeError(f"growth must be a sequence of train.Grow events, got {growth!r}")
    events = tuple(sorted(growth, key=lambda g: g.at_epoch))
    total = epochs * steps_per_epoch
    steps = []
    for event in events:
        step = event.at_step(steps_per_epoch)
        if not 0 < step < total:
            raise ValueError(
                f"Grow(at_epoch={event.at_epoch}) lies at step {step}, outside the run's steps "
                f"1..{total - 1} ({epochs} epochs of {steps_per_epoch} steps): grow after the "
                "first step and before the last epoch ends"
            )
        if step in steps:
            raise ValueError(
                f"two growth events fall on step {step}; merge them into one Grow event"
            )
        steps.append(step)
    return events


def event_key(growth_key: jax.Array, index: int) -> jax.Array:
    """The key of the ``index``-th event of a schedule (its place in time order)."""
    return jax.random.fold_in(growth_key, index)


def planned_models(
    model: nn.Module, events: Sequence[Grow], example_shape: tuple[int, ...]
) -> tuple[nn.Module, ...]:
    """The modules after each event of ``events``, grown from ``model`` in turn.

    Only shapes are traced (``jax.eval_shape``), so a schedule that shrinks a size or does
    not fit the model fails here, before any training.

    Args:
      model: the module before the first event.
      events: the events, in time order.
      example_shape: ``(h, w, c)`` of one input image.

    Raises:
      ValueError: an event does not fit the module it would grow (naming the event).
    """
    example = jax.ShapeDtypeStruct((1, *example_shape), jnp.float32)
    abstract = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), example)
    models = []
    for event in events:
        model, abstract = _planned_step(model, abstract, event, example_input(example_shape))
        models.append(model)
    return tuple(models)


def example_input(image_shape: Sequence[int]) -> np.ndarray:
    """A zero batch of one image ``(1, h, w, c)`` float32: the input a ``target`` event
    traces the model with (numpy, so it stays concrete inside ``jax.jit``)."""
    return np.zeros((1, *image_shape), np.float32)


def _planned_step(
    model: nn.Module, abstract: Any, event: Grow, example: np.ndarray
) -> tuple[nn.Module, Any]:
    """``(grown module, abstract grown variables)`` of one event, traced on shapes only."""
    captured: list[nn.Module] = []

    def grow(variables: Any) -> Any:
        new_model, new_variables = grow_variables(
            model, variables, event, jax.random.key(0), example_input=example
        )
        captured.append(new_model)
        return new_variables

    try:
        abstract = jax.eval_shape(grow, abstract)
    except (ValueError, TypeError) as err:
        where = f"Grow(at_epoch={event.at_epoch}) on {describe(model)}"
        raise type(err)(f"{where}: {err}") from None
    return captured[0], abstract


def _sizes(event: Grow, fields: tuple[str, ...]) -> dict[str, Any]:
    return {name: getattr(event, name) for name in fields if getattr(event, name) is not None}


def grow_variables(
    model: nn.Module, variables: Any, event: Grow, key: jax.Array, *, example_input: Any = None
) -> tuple[nn.Module, Any]:
    """``(new_model, new_variables)``: ``event``'s widening, then its deepening (a
    ``target`` event: the one it makes, traced with ``example_input``)."""
    from jnet2net.grow import deepen, widen

    if event.target is not None:
        return _to_target(model, variables, event, key, example_input)
    widen_key, deepen_key = jax.random.split(key)
    if event.widens:
        model, variables = widen(
            model,
            variables,
            key=widen_key,
            noise=event.noise,
            noise_scale=event.noise_scale,
            **_sizes(event, WIDEN_FIELDS),
        )
    if event.deepens:
        model, variables = deepen(model, variables, key=deepen_key, **_sizes(event, DEEPEN_FIELDS))
    return model, variables


def _to_target(
    model: nn.Module, variables: Any, event: Grow, key: jax.Array, example: Any
) -> tuple[nn.Module, Any]:
    """``widen``/``deepen(target=event.target)`` of ``variables``, as the event's state."""
    from jnet2net.grow import deepen, widen
    from jnet2net.grow_any import target_kind

    kwargs = {"key": key, "target": event.target, "example_input": example}
    kwargs["apply_kwargs"] = {"train": False}
    if target_kind(model, variables, event.target, example, kwargs["apply_kwargs"]) == "deepen":
        return deepen(model, variables, rules=event.rules, **kwargs)
    return widen(model, variables, noise=event.noise, noise_scale=event.noise_scale, **kwargs)


def grow_at_event(
    model: nn.Module,
    state: TrainState,
    event: Grow,
    key: jax.Array,
    *,
    example_input: Any = None,
) -> tuple[nn.Module, TrainState]:
    """The grown ``(model, state)`` of one event: params, batch_stats and moments.

    ``step``, ``tx`` and the optimizer's counters are kept, so the schedule continues.
    With the same ``key`` the params equal :func:`grow_variables`'s. A ``target`` event
    traces the model with ``example_input`` (default: a batch of one of the presets'
    ``example_input``; other modules need it).
    """
    if event.target is not None:
        if example_input is None:
            example_input = _preset_example(model, state)
        return target_train_state(
            state,
            model,
            event.target,
            key=key,
            example_input=example_input,
            noise=event.noise,
            noise_scale=event.noise_scale,
            rules=event.rules,
            moments=event.moments,
        )
    widen_key, deepen_key = jax.random.split(key)
    if event.widens:
        model, state = widen_train_state(
            state,
            model,
            key=widen_key,
            noise=event.noise,
            noise_scale=event.noise_scale,
            moments=event.moments,
            **_sizes(event, WIDEN_FIELDS),
        )
    if event.deepens:
        model, state = deepen_train_state(
            state, model, key=deepen_key, moments=event.moments, **_sizes(event, DEEPEN_FIELDS)
        )
    return model, state


def _preset_example(model: nn.Module, state: TrainState) -> Any:
    if not hasattr(model, "example_input"):
        raise ValueError(
            f"a Grow(target=...) event traces {type(model).__name__} to find its unit groups: "
            "pass example_input= (train.fit passes a batch of one of its images)"
        )
    return model.example_input(state.variables)


def rewarm_windows(events: Sequence[Grow], steps_per_epoch: int) -> tuple[tuple[int, int], ...]:
    """``(start_step, length)`` of each event's learning-rate re-warm (length >= 1)."""
    windows = []
    for event in events:
        length = round(event.rewarm_epochs * steps_per_epoch)
        if length >= 1:
            windows.append((event.at_step(steps_per_epoch), length))
    return tuple(windows)


def relative_output_error(old: Any, new: Any) -> float:
    """``max |new - old| / max |old|`` of two logit arrays, as a Python float."""
    old, new = np.asarray(old, np.float64), np.asarray(new, np.float64)
    scale = max(float(np.max(np.abs(old))), 1e-30)
    return float(np.max(np.abs(new - old)) / scale)
