"""The checks :func:`~jnet2net.train.fit` makes of its data, model and config before it
trains, and the steps per epoch it trains for."""

from __future__ import annotations

from typing import Any

import flax.linen as nn

from jnet2net.data.dataset import Dataset
from jnet2net.data.streaming import StreamSet
from jnet2net.train.config import TrainConfig
from jnet2net.train.evaluation import check_model_outputs


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Full batches per epoch (the last partial batch is dropped)."""
    if batch_size > num_examples:
        raise ValueError(
            f"batch_size={batch_size} is larger than the {num_examples} training examples"
        )
    return num_examples // batch_size


def check_fit_inputs(
    model: nn.Module, train: Any, test: Any, config: Any, *, streams: bool = False
) -> None:
    """Raises TypeError/ValueError unless the datasets, model outputs and config fit
    (``streams``: :class:`~jnet2net.data.StreamSet` s are accepted too)."""
    kinds = (Dataset, StreamSet) if streams else (Dataset,)
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    for what, data in (("train", train), ("test", test)):
        if data is None and what == "test":
            continue
        if not isinstance(data, kinds):
            allowed = "Dataset or StreamSet" if streams else "Dataset"
            raise TypeError(f"{what} must be a jnet2net.data.{allowed}, got {type(data).__name__}")
        classes = getattr(model, "num_classes", data.num_classes)
        if classes != data.num_classes:
            raise ValueError(
                f"the model has {classes} outputs but the {what} set {data.name!r} has "
                f"{data.num_classes} classes"
            )
    if test is not None and test.image_shape != train.image_shape:
        raise ValueError(
            f"train images {train.image_shape} and test images {test.image_shape} differ in shape"
        )


def check_outputs_fit(model: nn.Module, variables: Any, train: Dataset, test: Any) -> None:
    """:func:`check_model_outputs` for the train set and, when given, the test set."""
    for what, data in (("train", train), ("test", test)):
        if data is not None:
            check_model_outputs(model, variables, data, what)
