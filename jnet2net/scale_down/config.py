"""Settings of training-time scale-down, checked when they are made."""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Literal

import numpy as np

Mode = Literal["nograd", "cache"]
CacheAugment = Literal["crop", "views", "flip", "none"]

MODES = ("nograd", "cache")
CACHE_AUGMENTS = ("crop", "views", "flip", "none")


@dataclasses.dataclass(frozen=True)
class ScaleDownConfig:
    """Which stages freeze, by when, and how the frozen prefix runs.

    Candidate cuts sit at stage boundaries only (a ResNet's stem with stage 0, then each
    further stage; a VGG's pooling blocks). By default the last stage and the head always
    train (``max_stages``). Times are fractions of the run's ``epochs * steps_per_epoch``
    steps.

    Budget: every candidate cut's training step is compiled ahead (while cut 0 trains,
    with ``fit``'s ``precompile``) and its FLOPs read from XLA's cost analysis of that
    executable. The run's training FLOPs
    (steps, cache builds and BatchNorm recalibrations) over full training's must come to at
    most ``target_compute``. The policy places the candidate freezes ``min_spacing`` apart,
    the first no earlier than ``not_before``, and as late as that budget allows: these are
    the *deadlines* (:func:`~jnet2net.scale_down.policy.plan_freezes`).

    Readiness (``ready_ratio``): every ``check_every`` steps each stage's relative update
    ``||theta(t) - theta(t - K)|| / ||theta(t - K)||`` is measured. The next stage to
    freeze is *ready* when its update is below ``ready_ratio`` times the median update of
    the deeper stages still training (the head left out); all of them share the learning
    rate, so the ratio is the ratio of updates per unit learning rate. After ``patience``
    ready checks in a row the stage freezes as soon as its ramp allows, never before
    ``not_before`` nor closer than ``min_spacing`` to the previous freeze: a score only
    ever brings a freeze earlier than its deadline. ``ready_ratio=None`` keeps the fixed
    schedule of deadlines.

    Freezing a stage (FreezeOut): its learning rate ramps to zero over the ``ramp``
    before its freeze step (a per-stage multiplier on the optimizer's updates, half a
    cosine; until then the stages that may freeze train at ``lr_boost`` times the learning
    rate, FreezeOut's larger rate for the layers that stop early), then its BatchNorm
    running statistics are recalibrated from ``bn_batches`` training batches (train-mode
    forward passes, the mean of their batch statistics) and it joins the frozen prefix,
    which runs in eval mode: without gradient every step
    (``mode='nograd'``, the usual augmentation) or from a cache of its outputs computed
    once per example (``mode='cache'``). What a cache keeps of the augmentation
    (``cache_augment``): ``'flip'`` (with an augmentation that flips) holds each image and
    its mirror image and each step picks the view the augmentation would have flipped (no
    random crops); ``'crop'`` holds the prefix's output on each image zero-padded as the
    random crop pads it (and on its mirror image) and each step crops those maps where the
    no-grad step would crop the images (at cuts whose stride divides the padding; other
    cuts cache the plain maps, as ``'flip'``), exact away from each crop's border where the
    offset is a multiple of the stride, at ``((h + 2 p) / h)^2`` times the memory; ``'views'`` holds
    ``cache_views`` augmented copies of each image (random crops and flips drawn once, as
    the training augmentation draws them) and each step picks one at random; ``'none'``
    holds the plain images.

    Attributes:
      target_compute: the run's training FLOPs over full training's, in ``(0, 1]``.
      not_before: earliest freeze, in ``[0, 1)``.
      min_spacing: least time between two freezes, in ``[0, 1)``.
      ramp: length of the learning-rate ramp to zero before a freeze, in ``[0, 1)``.
      lr_boost: learning-rate factor of the stages that may freeze (> 0; 1: none).
      max_stages: most stages that may freeze (``None``: every stage but the last; the
        head never freezes).
      check_every: steps ``K`` between readiness checks.
      ready_ratio: readiness threshold, > 0, or ``None`` (fixed schedule).
      patience: ready checks in a row that bring a freeze forward.
      bn_batches: training batches that recalibrate a freezing stage's BatchNorm
        statistics (0: keep its running averages).
      mode: ``'nograd'`` or ``'cache'``.
      cache_augment: ``'crop'``, ``'views'``, ``'flip'`` or ``'none'`` (cache mode only).
      cache_views: augmented copies per example with ``cache_augment='views'`` (>= 1).
      cache_max_bytes: largest activation cache (over all devices); a cut whose cache
        would not fit runs in no-grad mode instead (``None``: half the accelerator's free
        memory where the device reports it, else no limit).
    """

    target_compute: float = 0.75
    not_before: float = 0.3
    min_spacing: float = 0.1
    ramp: float = 0.05
    lr_boost: float = 1.0
    max_stages: int | None = None
    check_every: int = 100
    ready_ratio: float | None = 0.5
    patience: int = 2
    bn_batches: int = 8
    mode: Mode = "nograd"
    cache_augment: CacheAugment = "flip"
    cache_views: int = 4
    cache_max_bytes: int | None = None

    def __post_init__(self) -> None:
        self._set("target_compute", _real("target_compute", self.target_compute))
        if not 0.0 < self.target_compute <= 1.0:
            raise ValueError(
                f"ScaleDownConfig.target_compute must be in (0, 1] (the run's training FLOPs "
                f"over full training's), got {self.target_compute}"
            )
        for name in ("not_before", "min_spacing", "ramp"):
            value = _real(name, getattr(self, name))
            if not 0.0 <= value < 1.0:
                raise ValueError(
                    f"ScaleDownConfig.{name} must be in [0, 1) (a fraction of training), "
                    f"got {value}"
                )
            self._set(name, value)
        self._set("lr_boost", _real("lr_boost", self.lr_boost))
        if self.lr_boost <= 0.0:
            raise ValueError(f"ScaleDownConfig.lr_boost must be > 0, got {self.lr_boost}")
        if self.max_stages is not None:
            self._set("max_stages", _non_negative_int("max_stages", self.max_stages))
        self._set("check_every", _positive_int("check_every", self.check_every))
        if self.ready_ratio is not None:
            self._set("ready_ratio", _real("ready_ratio", self.ready_ratio))
            if self.ready_ratio <= 0.0:
                raise ValueError(
                    f"ScaleDownConfig.ready_ratio must be > 0 or None, got {self.ready_ratio}"
                )
        self._set("patience", _positive_int("patience", self.patience))
        self._set("bn_batches", _non_negative_int("bn_batches", self.bn_batches))
        self._set("cache_views", _positive_int("cache_views", self.cache_views))
        if self.cache_max_bytes is not None:
            self._set("cache_max_bytes", _non_negative_int("cache_max_bytes", self.cache_max_bytes))
        _choice("mode", self.mode, MODES)
        _choice("cache_augment", self.cache_augment, CACHE_AUGMENTS)

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
