"""Training: config, optimizers, state, jitted steps, data-parallel ``fit`` and ``evaluate``.

config = TrainConfig(epochs=5, batch_size=128, learning_rate=0.05)
result = fit(model, train, test, config)     # result.state, result.history
new_model, state = widen_train_state(result.state, model, key=key, widths=(32, 64, 128))
result = fit(narrow, train, test, config, growth=(Grow(3, widths=(32, 64, 128)),))
result = fit(model, train, test, config, scale_down=ScaleDownConfig(target_compute=0.6))
result.scale_down.summary                    # jnet2net.scale_down: the same loop and records

The package exports what a user calls; the parts these are built from stay in their modules:
:mod:`~jnet2net.train.batches` (data order and random streams), :mod:`~jnet2net.train.sharding`
(device placement), :mod:`~jnet2net.train.steps` (losses and step functions),
:mod:`~jnet2net.train.evaluation`, :mod:`~jnet2net.train.events`, :mod:`~jnet2net.train.cost`,
:mod:`~jnet2net.train.progress` and :mod:`~jnet2net.train.records`.
"""

from jnet2net.train.config import TrainConfig
from jnet2net.train.evaluation import evaluate
from jnet2net.train.events import Grow, planned_models
from jnet2net.train.growth import (
    deepen_train_state,
    grow_train_state,
    transfer_train_state,
    widen_train_state,
)
from jnet2net.train.loop import FitResult, fit, steps_per_epoch
from jnet2net.train.optim import make_optimizer, make_schedule
from jnet2net.train.progress import read_jsonl
from jnet2net.train.sharding import data_mesh
from jnet2net.train.state import TrainState, create_train_state, init_variables, variables_of
from jnet2net.train.steps import make_eval_step, make_train_step
from jnet2net.train.tensorboard import TensorBoardWriter

__all__ = [
    "FitResult",
    "Grow",
    "TensorBoardWriter",
    "TrainConfig",
    "TrainState",
    "create_train_state",
    "data_mesh",
    "deepen_train_state",
    "evaluate",
    "fit",
    "grow_train_state",
    "init_variables",
    "make_eval_step",
    "make_optimizer",
    "make_schedule",
    "make_train_step",
    "planned_models",
    "read_jsonl",
    "steps_per_epoch",
    "transfer_train_state",
    "variables_of",
    "widen_train_state",
]
