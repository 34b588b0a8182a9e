"""jnet2net.train exports what a user calls, and each export resolves."""

import jnet2net.train

#: What README.md, notebooks/ and experiments/ call: configure, fit, evaluate, grow the
#: training state, build optimizers and steps, place data, read the logs.
USER_API = {
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
}


def test_all_is_the_user_api_and_every_name_resolves():
    exported = jnet2net.train.__all__
    assert len(exported) == len(set(exported))
    assert set(exported) == USER_API
    for name in exported:
        value = getattr(jnet2net.train, name)
        assert callable(value), name
        assert value.__module__.startswith("jnet2net.train."), (name, value.__module__)


def test_plumbing_stays_in_its_module():
    from jnet2net.train import sharding, steps

    for name in ("put_batch", "batch_sharding", "replicated"):
        assert not hasattr(jnet2net.train, name)
        assert callable(getattr(sharding, name))
    assert not hasattr(jnet2net.train, "train_step_fn")
    assert callable(steps.train_step_fn)
