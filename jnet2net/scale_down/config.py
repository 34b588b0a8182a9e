"""Settings of training-time scale-down, checked when they are made."""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Literal

import numpy as np

Mode = Literal["nograd", "cache"]
CacheAugment = Literal["flip", "none"]
Normalize = Literal["peak", "none"]
FlopCount = Literal["compiled", "lowered", "off"]

MODES = ("nograd", "cache")
CACHE_AUGMENTS = ("flip", "none")
NORMALIZES = ("peak", "none")
FLOP_COUNTS = ("compiled", "lowered", "off")


@dataclasses.dataclass(frozen=True)
class ScaleDownConfig:
    """How layers are scored, when the next one stops training and how the rest runs.

    Scores (every ``check_every`` steps, per layer ``l`` still training):
    ``s_l = ||theta_l(t) - theta_l(t - K)|| / ||theta_l(t - K)||`` over all parameters of
    the layer, smoothed by an exponential moving average with factor ``smoothing``. The
    *level* compared with ``threshold`` is the smoothed score divided by its largest value
    so far (``normalize='peak'``, free of the learning rate's scale) or the smoothed score
    itself (``'none'``). The *trend* is the least-squares slope of the last
    ``trend_window`` smoothed scores, per check, divided by their mean.

    Policy: a layer is *still learning* while its level is at or above ``threshold`` or its
    trend is above ``trend_tolerance`` (its change rate is rising again). A layer that is
    not still learning for ``patience`` checks in a row (counted after ``warmup_steps``) is
    *quiet*. The cut (number of layers dropped from training, counted from the input)
    advances over every quiet layer directly after it, never past ``max_frozen`` layers and
    never into the head.

    Execution: ``mode='nograd'`` runs the dropped prefix every step in eval mode without
    gradient; ``mode='cache'`` computes the prefix once per example (once per cut move, for
    the newly dropped layers only) and trains the suffix on the stored activations. Cached
    activations see no random crops: ``cache_augment='flip'`` stores them for the image
    and its mirror image and picks one per example and step (exactly the flip half of the
    usual augmentation; an augmentation without flips, ``'crop'`` or ``'none'``, gets the
    plain view only); ``'none'`` uses the unaugmented images only.

    Defaults suit CIFAR-10 at batch 128 (~390 steps per epoch: a check every quarter
    epoch, five epochs of warm-up) with SGD + momentum and a cosine schedule. Under such a
    schedule the scores fall with the learning rate, so ``threshold`` mostly sets *when*
    layers go (a higher one drops them earlier) and the early peak of each layer sets the
    order; :func:`~jnet2net.scale_down.policy.replay_policy` tries thresholds on the
    scores of one recorded run (``max_frozen=0`` records every layer and drops none).

    Attributes:
      check_every: steps ``K`` between parameter snapshots (score checks).
      smoothing: EMA factor in ``[0, 1)`` of the scores (0: no smoothing).
      normalize: ``'peak'`` or ``'none'`` (see above).
      threshold: level below which a layer may be quiet (in ``(0, 1]`` with ``'peak'``).
      trend_window: smoothed scores (>= 2) in the trend's line fit.
      trend_tolerance: relative rise per check above which a layer is still learning.
      patience: consecutive not-learning checks that make a layer quiet.
      warmup_steps: steps before any check counts toward patience.
      max_frozen: most layers ever dropped (``None``: every layer but the head).
      mode: ``'nograd'`` or ``'cache'``.
      cache_augment: ``'flip'`` or ``'none'`` (cache mode only).
      cache_max_bytes: largest activation cache; a cut whose cache would not fit runs in
        no-grad mode instead (``None``: half the accelerator's free memory where the device
        reports it, else no limit).
      flop_count: FLOPs from XLA's cost analysis of ``'compiled'`` or ``'lowered'``
        functions, or ``'off'`` (no extra compiles; FLOPs reported as ``nan``).
    """

    check_every: int = 100
    smoothing: float = 0.7
    normalize: Normalize = "peak"
    threshold: float = 0.5
    trend_window: int = 5
    trend_tolerance: float = 0.02
    patience: int = 4
    warmup_steps: int = 2000
    max_frozen: int | None = None
    mode: Mode = "nograd"
    cache_augment: CacheAugment = "flip"
    cache_max_bytes: int | None = None
    flop_count: FlopCount = "compiled"

    def __post_init__(self) -> None:
        self._set("check_every", _positive_int("check_every", self.check_every))
        self._set("patience", _positive_int("patience", self.patience))
        self._set("trend_window", _positive_int("trend_window", self.trend_window))
        if self.trend_window < 2:
            raise ValueError(f"ScaleDownConfig.trend_window must be >= 2, got {self.trend_window}")
        self._set("warmup_steps", _non_negative_int("warmup_steps", self.warmup_steps))
        if self.max_frozen is not None:
            self._set("max_frozen", _non_negative_int("max_frozen", self.max_frozen))
        if self.cache_max_bytes is not None:
            self._set("cache_max_bytes", _non_negative_int("cache_max_bytes", self.cache_max_bytes))
        self._set("smoothing", _real("smoothing", self.smoothing))
        if not 0.0 <= self.smoothing < 1.0:
            raise ValueError(f"ScaleDownConfig.smoothing must be in [0, 1), got {self.smoothing}")
        self._set("threshold", _real("threshold", self.threshold))
        if self.threshold <= 0.0:
            raise ValueError(f"ScaleDownConfig.threshold must be > 0, got {self.threshold}")
        if self.normalize == "peak" and self.threshold > 1.0:
            raise ValueError(
                "ScaleDownConfig.threshold must be in (0, 1] with normalize='peak' (the level "
                f"is the score over its peak), got {self.threshold}"
            )
        self._set("trend_tolerance", _real("trend_tolerance", self.trend_tolerance))
        if self.trend_tolerance < 0.0:
            raise ValueError(
                f"ScaleDownConfig.trend_tolerance must be >= 0, got {self.trend_tolerance}"
            )
        _choice("mode", self.mode, MODES)
        _choice("cache_augment", self.cache_augment, CACHE_AUGMENTS)
        _choice("normalize", self.normalize, NORMALIZES)
        _choice("flop_count", self.flop_count, FLOP_COUNTS)

    def _set(self, name: str, value: object) -> None:
        """Stores a checked value as its plain Python type (numpy scalars become int/float)."""
        object.__setattr__(self, name, value)


def _positive_int(name: str, value: object) -> int:
    value = _int(name, value)
    if value < 1:
        raise ValueError(f"ScaleDownConfig.{name} must be positive, got {value}")
    return value


def _int(name: str, value: object) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"ScaleDownConfig.{name} must be an int, got {value!r}")
    return int(value)


def _non_negative_int(name: str, value: object) -> int:
    value = _int(name, value)
    if value < 0:
        raise ValueError(f"ScaleDownConfig.{name} must be >= 0, got {value}")
    return value


def _real(name: str, value: object) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"ScaleDownConfig.{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"ScaleDownConfig.{name} must be finite, got {value}")
    return float(value)


def _choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(
            f"ScaleDownConfig.{name} must be one of {', '.join(map(repr, choices))}, got {value!r}"
        )
