"""The config tree of a training run (:class:`RunConfig`), its JSON values and config files."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import numbers
import os
import pathlib
from collections.abc import Mapping
from typing import Any

from jnet2net.config.model import model_from_fields
from jnet2net.scale_down.config import ScaleDownConfig
from jnet2net.train.config import TrainConfig
from jnet2net.train.events import Grow


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A network: a preset, field overrides and a width multiplier.

    Attributes:
      arch: a preset name (``jnet2net.preset``: ``'resnet20'``, ``'vgg11'``, ...), or
        ``None`` when ``fields`` holds a whole architecture.
      fields: field overrides of the preset (``{'stage_widths': (4, 8)}``), or a whole
        architecture with ``'family'`` (``jnet2net.model_config`` output). JSON lists become
        tuples.
      width_mult: multiplies every width field (``None``: as given).
    """

    arch: str | None = None
    fields: dict[str, Any] = dataclasses.field(default_factory=dict)
    width_mult: float | None = None

    def __post_init__(self) -> None:
        if self.arch is not None and not isinstance(self.arch, str):
            raise TypeError(f"model.arch must be a preset name or None, got {self.arch!r}")
        if not isinstance(self.fields, Mapping) or not all(isinstance(k, str) for k in self.fields):
            raise TypeError(f"model.fields must be a dict of field names, got {self.fields!r}")
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in self.fields.items()}
        object.__setattr__(self, "fields", fields)
        if self.width_mult is not None:
            value = self.width_mult
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"model.width_mult must be a number or None, got {value!r}")
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"model.width_mult must be a finite number > 0, got {value}")
            object.__setattr__(self, "width_mult", float(value))

    @property
    def given(self) -> bool:
        """Whether the spec names anything (an empty spec: the network comes from elsewhere,
        e.g. a checkpoint)."""
        return self.arch is not None or bool(self.fields) or self.width_mult is not None

    def build(self, num_classes: int, **names: str) -> Any:
        """The linen module for ``num_classes`` (``names``: ``arch_name``/``fields_name``
        of :func:`~jnet2net.config.model.model_from_fields`, for messages)."""
        return model_from_fields(self.arch, self.fields, self.width_mult, num_classes, **names)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The training and test data (``jnet2net.data.load_protocol``).

    ``None`` means: a resumed run's or a starting checkpoint's saved value, else the default.

    Attributes:
      dataset: ``digits`` (offline), ``cifar10``, ``cifar100``, ``mnist``, ``fashion_mnist``,
        ... (default: digits).
      data_dir: tfds data dir or folder of npz packs.
      download: let tfds download the dataset.
      resolution: downsample images to N x N by k x k means.
      train_subset: train on a seeded stratified subset of N training examples.
      subset_seed: seed of ``train_subset`` (default 0).
    """

    dataset: str | None = None
    data_dir: str | None = None
    download: bool = False
    resolution: int | None = None
    train_subset: int | None = None
    subset_seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("dataset", "data_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise TypeError(f"data.{name} must be a string or None, got {value!r}")
            if value is not None:
                object.__setattr__(self, name, os.fspath(value))
        if not isinstance(self.download, bool):
            raise TypeError(f"data.download must be a bool, got {self.download!r}")
        for name, minimum in (("resolution", 1), ("train_subset", 1), ("subset_seed", 0)):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"data.{name} must be an int or None, got {value!r}")
            if value < minimum:
                raise ValueError(f"data.{name} must be >= {minimum}, got {value}")
            object.__setattr__(self, name, int(value))


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a training run is: network, data, training, growth and scale-down.

    Attributes:
      model: the network (:class:`ModelSpec`).
      data: the data (:class:`DataConfig`).
      train: how to train (``jnet2net.train.TrainConfig``).
      growth: ``jnet2net.train.Grow`` events inside the run, in any order.
      scale_down: ``jnet2net.scale_down.ScaleDownConfig`` for Learn&Drop training, or
        ``None`` (plain training).
    """

    model: ModelSpec = dataclasses.field(default_factory=ModelSpec)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    growth: tuple[Grow, ...] = ()
    scale_down: ScaleDownConfig | None = None

    def __post_init__(self) -> None:
        for name, kind in (("model", ModelSpec), ("data", DataConfig), ("train", TrainConfig)):
            if not isinstance(getattr(self, name), kind):
                raise TypeError(
                    f"RunConfig.{name} must be a {kind.__name__}, got {getattr(self, name)!r}"
                )
        if not isinstance(self.growth, (tuple, list)) or not all(
            isinstance(g, Grow) for g in self.growth
        ):
            raise TypeError(f"RunConfig.growth must be a tuple of Grow events, got {self.growth!r}")
        object.__setattr__(self, "growth", tuple(self.growth))
        if self.scale_down is not None and not isinstance(self.scale_down, ScaleDownConfig):
            raise TypeError(
                f"RunConfig.scale_down must be a ScaleDownConfig or None, got {self.scale_down!r}"
            )


def to_dict(config: RunConfig) -> dict[str, Any]:
    """``config`` as JSON values (tuples as lists; growth events by their non-default fields;
    a ``target=`` event's module as its text, which :func:`from_dict` does not read back)."""
    return {
        "model": _json_ready(dataclasses.asdict(config.model)),
        "data": dataclasses.asdict(config.data),
        "train": config.train.to_dict(),
        "growth": [event.to_dict() for event in config.growth],
        "scale_down": None if config.scale_down is None else dataclasses.asdict(config.scale_down),
    }


def from_dict(values: Mapping[str, Any]) -> RunConfig:
    """The config of :func:`to_dict` output (missing keys: defaults).

    Raises:
      ValueError: an unknown key, naming where it is and the known ones.
    """
    _check_keys("the config", values, [f.name for f in dataclasses.fields(RunConfig)])
    fields: dict[str, Any] = {}
    for name, kind in (("model", ModelSpec), ("data", DataConfig), ("train", TrainConfig)):
        if name in values:
            fields[name] = _dataclass_from_dict(kind, values[name], name)
    if "growth" in values:
        events = values["growth"]
        if not isinstance(events, (list, tuple)):
            raise TypeError(f"growth must be a list of events, got {events!r}")
        fields["growth"] = tuple(
            _dataclass_from_dict(Grow, event, f"growth[{i}]") for i, event in enumerate(events)
        )
    if values.get("scale_down") is not None:
        fields["scale_down"] = _dataclass_from_dict(
            ScaleDownConfig, values["scale_down"], "scale_down"
        )
    return RunConfig(**fields)


def load_config(path: str | os.PathLike) -> RunConfig:
    """The config in ``path``: a Python file whose ``get_config()`` returns a
    :class:`RunConfig`, or a JSON file of :func:`to_dict` output.

    Raises:
      FileNotFoundError: no such file.
      ValueError: another suffix, or a file without ``get_config``.
      TypeError: ``get_config()`` returned something else.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    if path.suffix == ".json":
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"config file {path} is not valid JSON ({err})") from None
        if not isinstance(values, dict):
            raise ValueError(f"config file {path} must hold a JSON object")
        return from_dict(values)
    if path.suffix != ".py":
        raise ValueError(f"config file {path}: expected a .py file with get_config() or .json")
    return run_get_config(path, RunConfig, "a jnet2net.config.RunConfig", "config file")


def _dataclass_from_dict(kind: type, values: Any, where: str) -> Any:
    if not isinstance(values, Mapping):
        raise TypeError(f"{where} must be a JSON object of {kind.__name__} fields, got {values!r}")
    _check_keys(where, values, [f.name for f in dataclasses.fields(kind)])
    if kind is Grow and isinstance(values.get("target"), str):
        raise ValueError(f"{where}.target: a module cannot be read back from its text")
    return kind(**values)


def _check_keys(where: str, values: Mapping[str, Any], known: list[str]) -> None:
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known: {known}")


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_json_ready(v) for v in value]
    return value


def run_get_config(path: pathlib.Path, kind: type, kind_name: str, what: str) -> Any:
    """Imports the ``.py`` file ``path`` and returns its ``get_config()``, checked to be a
    ``kind`` (called ``kind_name`` in errors; ``what`` names the file's role).

    Raises:
      ValueError: the file defines no ``get_config``.
      TypeError: ``get_config()`` returned something else.
    """
    spec = importlib.util.spec_from_file_location(f"jnet2net_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "get_config", None)):
        raise ValueError(f"{what} {path} defines no get_config()")
    config = module.get_config()
    if not isinstance(config, kind):
        raise TypeError(
            f"get_config() of {path} must return {kind_name}, got {type(config).__name__}"
        )
    return config
