"""One config tree for a training run: the network, the data, the training settings, the
growth schedule and scale-down, as frozen dataclasses that the command line, experiments and
notebooks all read.

Example::

    from jnet2net.config import apply_overrides, load_config

    config = load_config("configs/resnet20_digits.py")  # get_config() -> RunConfig
    config = apply_overrides(config, ["train.epochs=30", "model.width_mult=0.5"])
    model = config.model.build(num_classes=10)

``to_dict``/``from_dict`` turn a config into JSON values and back (``jnet2net train`` saves it
as ``config.json`` beside the run). Names are imported on first use (JAX loads with
:mod:`jnet2net.train`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Public name -> the module that defines it.
_EXPORTS = {
    "DataConfig": "jnet2net.config.tree",
    "ModelSpec": "jnet2net.config.tree",
    "RunConfig": "jnet2net.config.tree",
    "from_dict": "jnet2net.config.tree",
    "load_config": "jnet2net.config.tree",
    "to_dict": "jnet2net.config.tree",
    "apply_overrides": "jnet2net.config.overrides",
    "config_keys": "jnet2net.config.overrides",
    "field_docs": "jnet2net.config.overrides",
    "parse_value": "jnet2net.config.overrides",
    "model_from_fields": "jnet2net.config.model",
    "scaled_model": "jnet2net.config.model",
}

__all__ = [
    "DataConfig",
    "ModelSpec",
    "RunConfig",
    "apply_overrides",
    "config_keys",
    "field_docs",
    "from_dict",
    "load_config",
    "model_from_fields",
    "parse_value",
    "scaled_model",
    "to_dict",
]

if TYPE_CHECKING:
    from jnet2net.config.model import model_from_fields, scaled_model
    from jnet2net.config.overrides import (
        apply_overrides,
        config_keys,
        field_docs,
        parse_value,
    )
    from jnet2net.config.tree import (
        DataConfig,
        ModelSpec,
        RunConfig,
        from_dict,
        load_config,
        to_dict,
    )


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'jnet2net.config' has no attribute {name!r}")
