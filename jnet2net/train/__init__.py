"""Training: config, optimizers, state, jitted steps, data-parallel ``fit`` and ``evaluate``.

config = TrainConfig(epochs=5, batch_size=128, learning_rate=0.05)
result = fit(model, train, test, config)     # result.state, result.history
new_model, state = widen_train_state(result.state, model, key=key, widths=(32, 64, 128))
result = fit(narrow, train, test, config, growth=(Grow(3, widths=(32, 64, 128)),))
result = fit(model, train, test, config, scale_down=ScaleDownConfig(target_compute=0.6))
result.scale_down.summary                    # jnet2net.scale_down: the same loop and records
"""

from jnet2net.train.batches import augment_key, batch_indices, epoch_permutation, stream_key
from jnet2net.train.config import TrainConfig
from jnet2net.train.cost import CompiledStep, compile_step, flops_from_cost
from jnet2net.train.evaluation import (
    DeviceEvalSet,
    eval_batch_size,
    evaluate,
    put_eval_set,
    run_eval,
)
from jnet2net.train.events import Grow, grow_at_event, planned_models
from jnet2net.train.growth import (
    deepen_train_state,
    grow_train_state,
    transfer_train_state,
    widen_train_state,
)
from jnet2net.train.loop import FitResult, check_fit_inputs, fit, steps_per_epoch
from jnet2net.train.optim import decay_mask, make_optimizer, make_schedule
from jnet2net.train.progress import (
    ProgressBar,
    append_jsonl,
    progress_enabled,
    read_jsonl,
    repair_jsonl,
)
from jnet2net.train.records import epoch_means, nonfinite_loss_error
from jnet2net.train.sharding import (
    DATA_AXIS,
    batch_sharding,
    check_batch_size,
    data_mesh,
    put_batch,
    put_replicated,
    replicated,
)
from jnet2net.train.state import TrainState, create_train_state, init_variables, variables_of
from jnet2net.train.steps import (
    augment_batch,
    correct_predictions,
    cross_entropy_loss,
    eval_step_fn,
    make_eval_step,
    make_indexed_eval_step,
    make_indexed_train_step,
    make_train_step,
    train_step_fn,
    with_compute_dtype,
)
from jnet2net.train.tensorboard import TensorBoardWriter

__all__ = [
    "DATA_AXIS",
    "DeviceEvalSet",
    "CompiledStep",
    "FitResult",
    "Grow",
    "ProgressBar",
    "TrainConfig",
    "TensorBoardWriter",
    "TrainState",
    "append_jsonl",
    "augment_batch",
    "augment_key",
    "batch_indices",
    "batch_sharding",
    "check_fit_inputs",
    "compile_step",
    "check_batch_size",
    "correct_predictions",
    "create_train_state",
    "cross_entropy_loss",
    "data_mesh",
    "decay_mask",
    "deepen_train_state",
    "epoch_means",
    "epoch_permutation",
    "eval_batch_size",
    "eval_step_fn",
    "evaluate",
    "fit",
    "flops_from_cost",
    "grow_at_event",
    "grow_train_state",
    "init_variables",
    "make_eval_step",
    "make_indexed_eval_step",
    "make_indexed_train_step",
    "make_optimizer",
    "make_schedule",
    "make_train_step",
    "nonfinite_loss_error",
    "progress_enabled",
    "planned_models",
    "put_batch",
    "put_eval_set",
    "put_replicated",
    "read_jsonl",
    "repair_jsonl",
    "replicated",
    "run_eval",
    "steps_per_epoch",
    "stream_key",
    "train_step_fn",
    "transfer_train_state",
    "variables_of",
    "widen_train_state",
    "with_compute_dtype",
]
