"""The training configuration: a frozen, JSON-ready dataclass."""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from typing import Any, Literal, get_args

import numpy as np

Optimizer = Literal["sgd", "adamw"]
Schedule = Literal["cosine", "onecycle", "constant"]
ComputeDtype = Literal["float32", "bfloat16"]
Augmentation = Literal["crop_flip", "crop", "flip", "none", "resized_crop_flip"]
#: Where training batches come from (see ``TrainConfig.input``).
Input = Literal["auto", "memory", "stream"]

OPTIMIZERS = get_args(Optimizer)
SCHEDULES = get_args(Schedule)
COMPUTE_DTYPES = get_args(ComputeDtype)
AUGMENTATIONS = get_args(Augmentation)
INPUTS = get_args(Input)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train; every field is a plain JSON value.

    Attributes:
      epochs: passes over the training set (the schedule spans all of them).
      batch_size: global batch (over all devices); a multiple of the device count.
      optimizer: ``'sgd'`` (with momentum, Nesterov by default) or ``'adamw'``.
      learning_rate: peak learning rate.
      momentum: SGD momentum.
      nesterov: Nesterov momentum for SGD.
      weight_decay: decay of kernels (parameters with ndim > 1; not biases or BatchNorm):
        L2 added to the gradient for SGD, decoupled for AdamW.
      schedule: ``'cosine'`` (warm-up, then cosine to 0), ``'onecycle'`` (cosine one-cycle,
        rising for ``warmup_epochs`` or 30% of training when that is 0) or ``'constant'``
        (warm-up, then constant).
      warmup_epochs: linear warm-up from 0, in epochs (may be fractional).
      label_smoothing: weight of the uniform distribution in the training targets.
      ema_decay: keep an exponential moving average of the weights (params and BatchNorm
        statistics), ``ema = decay * ema + (1 - decay) * new`` after every step, started at
        the starting weights; evaluation reports the average (``test_acc``) and the live
        weights (``test_acc_live``); ``None``: no average.
      compute_dtype: ``'float32'`` or ``'bfloat16'``; parameters stay float32.
      augment: ``'crop_flip'`` (random crop with ``crop_padding``, then a random
        horizontal flip), ``'crop'`` (for digits and letters, which flips would change),
        ``'flip'``, ``'none'``, or ``'resized_crop_flip'`` (ImageNet-style: a random box of
        ``min_crop_area..1`` of the image resized to the stream's resolution, then a flip;
        on the host, streaming input only).
      crop_padding: zero padding of the random crop, in pixels.
      min_crop_area: smallest share of the image area that ``'resized_crop_flip'`` keeps.
      input: ``'memory'`` (the whole training set on every device, batches gathered on
        device), ``'stream'`` (batches read from the host by a grain pipeline, each process
        its rows; :mod:`jnet2net.data.streaming`) or ``'auto'`` (memory for a
        ``Dataset`` that fits comfortably on a device, else stream). Both give the same
        batches for the same ``(seed, step)``.
      seed: seeds the initialisation, the data order and the augmentation.
      eval_batch_size: batch of the evaluation passes.
      progress: ``True``: a progress bar; ``False``: nothing; ``None``: the bar on a terminal
        (unless ``$CI`` is set), else a plain progress line now and then (log files).
      max_steps: stop at this global step (mid-epoch allowed), or ``None``: after ``epochs``;
        the schedule still spans ``epochs``.
      eval_every_steps: also evaluate and log a record every this many global steps (beside
        the one at each epoch's end), or ``None``.
      log_path: JSONL file that receives one line per epoch, or ``None``.
    """

    epochs: int = 10
    batch_size: int = 128
    optimizer: Optimizer = "sgd"
    learning_rate: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: Schedule = "cosine"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    ema_decay: float | None = None
    compute_dtype: ComputeDtype = "float32"
    augment: Augmentation = "crop_flip"
    crop_padding: int = 4
    min_crop_area: float = 0.08
    input: Input = "auto"
    seed: int = 0
    eval_batch_size: int = 512
    progress: bool | None = None
    max_steps: int | None = None
    eval_every_steps: int | None = None
    log_path: str | None = None

    def __post_init__(self) -> None:
        _check_int("epochs", self.epochs, minimum=1)
        _check_int("batch_size", self.batch_size, minimum=1)
        _check_int("eval_batch_size", self.eval_batch_size, minimum=1)
        _check_int("crop_padding", self.crop_padding, minimum=0)
        _check_int("seed", self.seed, minimum=0)
        for name in ("max_steps", "eval_every_steps"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), minimum=1)
                object.__setattr__(self, name, int(getattr(self, name)))
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("compute_dtype", self.compute_dtype, COMPUTE_DTYPES)
        _check_choice("augment", self.augment, AUGMENTATIONS)
        _check_choice("input", self.input, INPUTS)
        _check_number("min_crop_area", self.min_crop_area, low=0.0, high=1.0, low_open=True)
        _check_number("learning_rate", self.learning_rate, low=0.0, low_open=True)
        _check_number("momentum", self.momentum, low=0.0, high=1.0, high_open=True)
        _check_number("weight_decay", self.weight_decay, low=0.0)
        _check_number("warmup_epochs", self.warmup_epochs, low=0.0, high=self.epochs)
        _check_number("label_smoothing", self.label_smoothing, low=0.0, high=1.0, high_open=True)
        if self.ema_decay is not None:
            _check_number(
                "ema_decay", self.ema_decay, low=0.0, high=1.0, low_open=True, high_open=True
            )
            object.__setattr__(self, "ema_decay", float(self.ema_decay))
        if not isinstance(self.nesterov, bool):
            raise TypeError(f"TrainConfig.nesterov must be a bool, got {self.nesterov!r}")
        if self.progress is not None and not isinstance(self.progress, bool):
            raise TypeError(f"TrainConfig.progress must be None or a bool, got {self.progress!r}")
        if self.log_path is not None:
            if not isinstance(self.log_path, (str, os.PathLike)):
                raise TypeError(
                    f"TrainConfig.log_path must be a path or None, got {self.log_path!r}"
                )
            object.__setattr__(self, "log_path", os.fspath(self.log_path))
        for name in ("epochs", "batch_size", "eval_batch_size", "crop_padding", "seed"):
            object.__setattr__(self, name, int(getattr(self, name)))
        for name in (
            "learning_rate",
            "momentum",
            "weight_decay",
            "warmup_epochs",
            "label_smoothing",
            "min_crop_area",
        ):
            object.__setattr__(self, name, float(getattr(self, name)))

    def to_dict(self) -> dict[str, Any]:
        """Every field as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """The config with ``values`` over the defaults; unknown keys raise ValueError."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; known fields: {names}")
        return cls(**values)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` (validated)."""
        return dataclasses.replace(self, **changes)


def restrict(config: TrainConfig, fields: tuple[str, ...]) -> TrainConfig:
    """``config`` with every field outside ``fields`` at its default (e.g. a cache key)."""
    return TrainConfig(**{name: getattr(config, name) for name in fields})


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"TrainConfig.{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"TrainConfig.{name} must be >= {minimum}, got {value}")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"TrainConfig.{name} must be one of {choices}, got {value!r}")


def _check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"TrainConfig.{name} must be a number, got {value!r}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high or value != value:
        raise ValueError(
            f"TrainConfig.{name} must be {bounds_text(low, high, low_open, high_open)}, got {value}"
        )
    if math.isinf(value):
        raise ValueError(f"TrainConfig.{name} must be finite, got {value}")


def bounds_text(
    low: float | None, high: float | None, low_open: bool = False, high_open: bool = False
) -> str:
    """``'> 0'``, ``'>= 0 and < 1'``, ``'<= 2'``: the interval as words for a message."""
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}")
    return " and ".join(parts) or "a number"
