"""Orbax checkpoints: bitwise round trips, architecture checks, clear errors, resume, growth."""

from __future__ import annotations

import gc
import json
import pathlib
import shutil
import time
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state

import jnet2net
from jnet2net import checkpoint

RESNET = jnet2net.ResNet(stage_depths=(1, 1), stage_widths=(4, 8), num_classes=3)
VGG = jnet2net.VGG(stage_depths=(1, 1), stage_widths=(4, 8), hidden_widths=(6,), num_classes=3)
IMAGES = (1, 8, 8, 1)


def _init(model: Any, seed: int = 0) -> dict:
    return model.init(jax.random.key(seed), jnp.zeros(IMAGES))


def _perturbed(variables: dict, seed: int) -> dict:
    """Variables with every leaf moved off its init value (non-trivial batch stats too)."""
    leaves, treedef = jax.tree.flatten(variables)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    moved = [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    return jax.tree.unflatten(treedef, moved)


def _arch_file(step_dir: pathlib.Path) -> pathlib.Path:
    """Where Orbax keeps the JSON of the ``arch`` item."""
    path = step_dir / "arch" / "metadata"
    assert path.is_file(), sorted(p.name for p in step_dir.rglob("*"))
    return path


def _assert_bitwise(a: Any, b: Any) -> None:
    chex.assert_trees_all_equal_structs(a, b)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


@pytest.mark.slow
@pytest.mark.parametrize("model", [RESNET, VGG], ids=["resnet", "vgg"])
def test_round_trip_is_bitwise(tmp_path: pathlib.Path, model: Any) -> None:
    variables = _perturbed(_init(model), 1)
    tx = optax.adamw(1e-3)
    opt_state = tx.init(variables["params"])
    opt_state = jax.tree.map(lambda x: x + 0.5 if x.dtype == jnp.float32 else x + 2, opt_state)
    rng = jax.random.key(7)
    path = checkpoint.save(
        tmp_path,
        model=model,
        variables=variables,
        step=12,
        opt_state=opt_state,
        rng=rng,
        train_config={"lr": 0.1, "widths": (1, 2)},
        metadata={"grown_from": "teacher"},
    )
    assert path == tmp_path.resolve() / "12"
    restored = checkpoint.restore(
        tmp_path, opt_state_like=jax.eval_shape(tx.init, variables["params"])
    )
    assert restored.model == model
    assert restored.step == 12
    assert restored.train_config == {"lr": 0.1, "widths": [1, 2]}
    assert restored.metadata == {"grown_from": "teacher"}
    assert restored.path == path
    _assert_bitwise(restored.variables, variables)
    _assert_bitwise(restored.opt_state, opt_state)
    _assert_bitwise(jax.random.key_data(restored.rng), jax.random.key_data(rng))
    assert jax.random.key_impl(restored.rng) == jax.random.key_impl(rng)
    # Without a target the optimizer state keeps its leaves, in plain containers.
    plain = checkpoint.restore(tmp_path)
    _assert_bitwise(jax.tree.leaves(plain.opt_state), jax.tree.leaves(opt_state))


@pytest.mark.slow  # several seconds on a 2-core machine
def test_raw_key_variables_only_and_latest_step(tmp_path: pathlib.Path) -> None:
    variables = _init(RESNET)
    raw_key = jax.random.PRNGKey(3)
    assert checkpoint.latest_step(tmp_path / "nothing") is None
    checkpoint.save(tmp_path, model=RESNET, variables=variables, step=0, rng=raw_key)
    checkpoint.save(tmp_path, model=RESNET, variables=_perturbed(variables, 2), step=5)
    assert checkpoint.all_steps(tmp_path) == [0, 5]
    assert checkpoint.latest_step(tmp_path) == 5
    first = checkpoint.restore(tmp_path, step=0, model=RESNET)
    _assert_bitwise(first.rng, raw_key)
    _assert_bitwise(first.variables, variables)
    assert first.opt_state is None and first.train_config is None
    last = checkpoint.restore(tmp_path)
    assert last.step == 5 and last.rng is None


def test_extra_arrays_round_trip_and_are_checksummed(tmp_path: pathlib.Path) -> None:
    variables = _init(RESNET)
    extra = {"snapshot": {"a": jnp.arange(3.0)}, "norms": jnp.ones((2,), jnp.int32)}
    checkpoint.save(tmp_path, model=RESNET, variables=variables, step=1, extra=extra)
    checkpoint.save(tmp_path, model=RESNET, variables=variables, step=2)
    assert checkpoint.checkpoint_info(tmp_path, step=1).has_extra
    assert "has_extra" not in json.loads(_arch_file(tmp_path / "2").read_text())
    _assert_bitwise(checkpoint.restore(tmp_path, step=1).extra, extra)
    assert checkpoint.restore(tmp_path, step=2).extra is None
    checksums = checkpoint.checkpoint_info(tmp_path, step=1).checksums
    assert {"extra/snapshot/a", "extra/norms"} <= set(checksums)


def test_max_to_keep_and_other_files_are_left_alone(tmp_path: pathlib.Path) -> None:
    variables = _init(RESNET)
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    for step in (1, 2, 3):
        checkpoint.save(tmp_path, model=RESNET, variables=variables, step=step, max_to_keep=2)
    assert checkpoint.all_steps(tmp_path) == [2, 3]
    assert (tmp_path / "metrics.jsonl").read_text() == "{}\n"


def test_save_refuses_step_like_directories_that_are_not_checkpoints(
    tmp_path: pathlib.Path,
) -> None:
    """Orbax takes any directory named like a step for one, and max_to_keep deletes it."""
    variables = _init(RESNET)
    checkpoint.save(tmp_path, model=RESNET, variables=variables, step=1)
    (tmp_path / "100").mkdir()
    (tmp_path / "100" / "notes.txt").write_text("precious")
    (tmp_path / "plots").mkdir()
    with pytest.raises(
        ValueError, match=r"named like checkpoint steps that are not checkpoints: .*100; Orbax"
    ):
        checkpoint.save(tmp_path, model=RESNET, variables=variables, step=2, max_to_keep=1)
    assert (tmp_path / "100" / "notes.txt").read_text() == "precious"
    assert (tmp_path / "1").is_dir() and not (tmp_path / "2").exists()
    shutil.rmtree(tmp_path / "100")
    checkpoint.save(tmp_path, model=RESNET, variables=variables, step=2, max_to_keep=1)
    assert checkpoint.all_steps(tmp_path) == [2] and (tmp_path / "plots").is_dir()


def test_wrong_expected_architecture_names_path_and_fields(tmp_path: pathlib.Path) -> None:
    checkpoint.save(tmp_path, model=RESNET, variables=_init(RESNET), step=4)
    wider = RESNET.clone(stage_widths=(4, 16))
    with pytest.raises(
        ValueError,
        match=r"/4 holds another architecture.*"
        r"stage_widths: checkpoint \[4, 8\], expected \[4, 16\]",
    ):
        checkpoint.restore(tmp_path, model=wider)
    with pytest.raises(ValueError, match=r"family: checkpoint 'ResNet', expected 'VGG'"):
        checkpoint.restore(tmp_path, model=VGG)


def test_missing_and_empty_directories(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(FileNotFoundError, match=f"{missing} does not exist"):
        checkpoint.restore(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty holds no checkpoint"):
        checkpoint.restore(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        checkpoint.checkpoint_info(tmp_path / "file")
    checkpoint.save(tmp_path / "run", model=RESNET, variables=_init(RESNET), step=2)
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at step 3; it has steps \[2\]"):
        checkpoint.restore(tmp_path / "run", step=3)
    run = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match=rf"is step 2 of the run {run}: pass {run}"):
        checkpoint.restore(run / "2")


def test_corrupt_checkpoints_raise_value_errors(tmp_path: pathlib.Path) -> None:
    variables = _init(RESNET)
    checkpoint.save(tmp_path / "a", model=RESNET, variables=variables, step=1)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.copytree(tmp_path / "a", tmp_path / "c")
    shutil.copytree(tmp_path / "a", tmp_path / "d")

    _arch_file(tmp_path / "a" / "1").write_text("not json {")
    with pytest.raises(ValueError, match=r"a/1 is corrupt: cannot read its 'arch' item"):
        checkpoint.restore(tmp_path / "a")

    shutil.rmtree(tmp_path / "b" / "1" / "state")
    with pytest.raises(ValueError, match=r"b/1 is corrupt"):
        checkpoint.restore(tmp_path / "b")

    bad_model = {"format": 1, "model": {"family": "MLP"}, "input_shape": [1]}
    _arch_file(tmp_path / "c" / "1").write_text(json.dumps(bad_model))
    with pytest.raises(ValueError, match=r"c/1 holds an invalid architecture.*'MLP'"):
        checkpoint.checkpoint_info(tmp_path / "c")

    _arch_file(tmp_path / "d" / "1").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match=r"d/1 is corrupt or not a jnet2net checkpoint"):
        checkpoint.restore(tmp_path / "d")


# Orbax's reader threads report "Event loop is closed" after a failed read of corrupt data.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_corrupt_array_data_raises_value_error(tmp_path: pathlib.Path) -> None:
    checkpoint.save(tmp_path, model=RESNET, variables=_init(RESNET), step=1)
    for p in (tmp_path / "1" / "state").rglob("*"):
        if p.is_file() and ("ocdbt" in str(p.parent) or p.parent.name == "d"):
            p.write_bytes(b"\0garbage")
    with pytest.raises(ValueError, match=r"/1 is corrupt or does not match the architecture"):
        checkpoint.restore(tmp_path)
    gc.collect()
    time.sleep(0.5)  # let those reports land in this test


def test_state_that_lies_about_its_architecture_is_refused(tmp_path: pathlib.Path) -> None:
    """An arch item edited to another width: the state no longer restores, loudly."""
    checkpoint.save(tmp_path, model=RESNET, variables=_init(RESNET), step=1)
    arch_file = _arch_file(tmp_path / "1")
    arch = json.loads(arch_file.read_text())
    arch["model"]["stage_widths"] = [4, 16]
    arch_file.write_text(json.dumps(arch))
    with pytest.raises(
        ValueError,
        match=r"1 is corrupt: its state does not fit the architecture in its 'arch' item "
        r"\(\d+ leaves differ\): batch_stats/stage1_block0/bn1/mean stored with shape \(8,\), "
        r"the architecture needs \(16,\)",
    ):
        checkpoint.restore(tmp_path)


def test_save_checks_its_inputs(tmp_path: pathlib.Path) -> None:
    variables = _init(RESNET)
    with pytest.raises(
        ValueError, match=r"variables do not match ResNet: .*stage1_block0/.* has shape \(8,\)"
    ):
        checkpoint.save(
            tmp_path, model=RESNET.clone(stage_widths=(4, 16)), variables=variables, step=0
        )
    with pytest.raises(ValueError, match=r"step must be an int >= 0, got -1"):
        checkpoint.save(tmp_path, model=RESNET, variables=variables, step=-1)
    with pytest.raises(ValueError, match=r"also have \['intermediates'\]"):
        checkpoint.save(
            tmp_path, model=RESNET, variables={**variables, "intermediates": {}}, step=0
        )
    with pytest.raises(TypeError, match=r"train_config must be a dict.*got int"):
        checkpoint.save(tmp_path, model=RESNET, variables=variables, step=0, train_config=3)
    checkpoint.save(tmp_path, model=RESNET, variables=variables, step=0)
    with pytest.raises(ValueError, match=r"already holds a checkpoint at step 0"):
        checkpoint.save(tmp_path, model=RESNET, variables=variables, step=0)


# --- resume through Orbax ------------------------------------------------------------


class _State(train_state.TrainState):
    batch_stats: Any
    rng: jax.Array


def _new_state(model: Any) -> _State:
    variables = _init(model)
    return _State.create(
        apply_fn=model.apply,
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        tx=optax.sgd(optax.cosine_decay_schedule(0.1, 10), momentum=0.9),
        rng=jax.random.key(4),
    )


@jax.jit
def _step(state: _State, images: jax.Array, labels: jax.Array) -> _State:
    rng, dropout_key = jax.random.split(state.rng)
    noise = 0.01 * jax.random.normal(dropout_key, images.shape)

    def loss_fn(params):
        logits, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            images + noise,
            train=True,
            mutable=["batch_stats"],
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, updates

    grads, updates = jax.grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=updates["batch_stats"])
    return state.replace(rng=rng)


@pytest.mark.slow
def test_resume_through_orbax_equals_one_run(tmp_path: pathlib.Path) -> None:
    images = jax.random.normal(jax.random.key(1), (5, 8, 8, 8, 1))
    labels = jax.random.randint(jax.random.key(2), (5, 8), 0, 3)
    straight = _new_state(RESNET)
    for i in range(5):
        straight = _step(straight, images[i], labels[i])

    first = _new_state(RESNET)
    for i in range(2):
        first = _step(first, images[i], labels[i])
    checkpoint.save_train_state(tmp_path, RESNET, first, {"epochs": 1})
    abstract = jax.eval_shape(lambda: _new_state(RESNET))
    resumed, restored = checkpoint.restore_train_state(tmp_path, abstract, model=RESNET)
    assert restored.step == 2 and restored.train_config == {"epochs": 1}
    resumed = resumed.replace(apply_fn=straight.apply_fn, tx=straight.tx)
    for i in range(2, 5):
        resumed = _step(resumed, images[i], labels[i])

    assert int(resumed.step) == int(straight.step) == 5
    _assert_bitwise(resumed.params, straight.params)
    _assert_bitwise(resumed.batch_stats, straight.batch_stats)
    _assert_bitwise(resumed.opt_state, straight.opt_state)
    _assert_bitwise(jax.random.key_data(resumed.rng), jax.random.key_data(straight.rng))


def test_restore_train_state_needs_optimizer_state(tmp_path: pathlib.Path) -> None:
    checkpoint.save(tmp_path, model=RESNET, variables=_init(RESNET), step=0)
    with pytest.raises(ValueError, match=r"holds no optimizer state, so it cannot resume"):
        checkpoint.restore_train_state(tmp_path, jax.eval_shape(lambda: _new_state(RESNET)))


def test_restore_train_state_refuses_a_state_of_another_architecture(
    tmp_path: pathlib.Path,
) -> None:
    """Even when the optimizer state holds no params-shaped trees (plain SGD)."""
    variables = _init(RESNET)
    state = _State.create(
        apply_fn=RESNET.apply,
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        tx=optax.sgd(0.1),
        rng=jax.random.key(4),
    )
    checkpoint.save_train_state(tmp_path, RESNET, state)
    wide = RESNET.clone(stage_widths=(4, 6))
    wide_vars = _init(wide)
    wide_state = state.replace(params=wide_vars["params"], batch_stats=wide_vars["batch_stats"])
    with pytest.raises(ValueError, match=r"another architecture than the train state .*\(8,\)"):
        checkpoint.restore_train_state(tmp_path, jax.eval_shape(lambda: wide_state))
    same, _ = checkpoint.restore_train_state(tmp_path, jax.eval_shape(lambda: state))
    _assert_bitwise(same.params, state.params)


# --- growth from a checkpoint --------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("model", [RESNET, VGG], ids=["resnet", "vgg"])
def test_grow_checkpoint_is_exact(tmp_path: pathlib.Path, model: Any) -> None:
    teacher_vars = _perturbed(_init(model), 3)
    checkpoint.save(tmp_path / "teacher", model=model, variables=teacher_vars, step=9)
    grown = checkpoint.grow_checkpoint(
        tmp_path / "teacher",
        tmp_path / "student",
        key=jax.random.key(0),
        widen={"widths": (6, 12), "noise": "split"},
        deepen={"depths": (2, 2)},
    )
    assert grown.model == model.clone(stage_widths=(6, 12), stage_depths=(2, 2))
    assert grown.relative_error < 1e-5
    assert grown.path == (tmp_path / "student").resolve() / "0"
    _assert_bitwise(grown.teacher.variables, teacher_vars)

    restored = checkpoint.restore(tmp_path / "student", model=grown.model)
    _assert_bitwise(restored.variables, grown.variables)
    assert restored.metadata["grown_from"] == str((tmp_path / "teacher").resolve() / "9")
    assert restored.metadata["teacher_step"] == 9
    assert restored.metadata["widen"]["widths"] == [6, 12]
    xs = jax.random.normal(jax.random.key(5), (2, 4, *IMAGES[1:]))
    jnet2net.assert_function_preserved(model, teacher_vars, restored.model, restored.variables, xs)
    # The teacher's checkpoint cannot stand in for the student.
    with pytest.raises(ValueError, match="holds another architecture"):
        checkpoint.restore(tmp_path / "teacher", model=grown.model)


def test_grow_checkpoint_refusals(tmp_path: pathlib.Path) -> None:
    checkpoint.save(tmp_path / "teacher", model=RESNET, variables=_init(RESNET), step=1)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="nothing to grow"):
        checkpoint.grow_checkpoint(tmp_path / "teacher", tmp_path / "s", key=key)
    with pytest.raises(ValueError, match=r"widen cannot shrink stage1_stream"):
        checkpoint.grow_checkpoint(
            tmp_path / "teacher", tmp_path / "s", key=key, widen={"widths": (4, 6)}
        )
    assert checkpoint.latest_step(tmp_path / "s") is None
    checkpoint.save(tmp_path / "teacher", model=RESNET, variables=_init(RESNET), step=0)
    with pytest.raises(ValueError, match=r"teacher already holds a checkpoint at step 0"):
        checkpoint.grow_checkpoint(
            tmp_path / "teacher", tmp_path / "teacher", key=key, deepen={"depths": (2, 1)}
        )


def test_grow_checkpoint_refuses_a_directory_with_other_steps(tmp_path: pathlib.Path) -> None:
    """The student at step 0 would not be the latest step there: nothing is written."""
    checkpoint.save(tmp_path / "teacher", model=RESNET, variables=_init(RESNET), step=1)
    checkpoint.save(tmp_path / "run", model=RESNET, variables=_init(RESNET), step=7)
    with pytest.raises(ValueError, match=r"run already holds a checkpoint at step 7; save the"):
        checkpoint.grow_checkpoint(
            tmp_path / "teacher", tmp_path / "run", key=jax.random.key(0), deepen={"depths": (2, 1)}
        )
    assert checkpoint.all_steps(tmp_path / "run") == [7]


def test_input_shape_is_stored_and_checked(tmp_path: pathlib.Path) -> None:
    variables = _init(RESNET)
    checkpoint.save(
        tmp_path / "a", model=RESNET, variables=variables, step=0, input_shape=(8, 8, 1)
    )
    assert checkpoint.checkpoint_info(tmp_path / "a").input_shape == (1, 8, 8, 1)
    checkpoint.save(tmp_path / "b", model=RESNET, variables=variables, step=0)
    assert checkpoint.checkpoint_info(tmp_path / "b").input_shape == (1, 32, 32, 1)
    vgg_vars = _init(VGG)
    with pytest.raises(
        ValueError, match=r"input_shape \(1, 16, 16, 1\) does not fit .*hidden0/kernel"
    ):
        checkpoint.save(
            tmp_path / "c", model=VGG, variables=vgg_vars, step=0, input_shape=(16, 16, 1)
        )
    with pytest.raises(ValueError, match=r"input_shape must be \(h, w, c\) or \(n, h, w, c\)"):
        checkpoint.save(tmp_path / "c", model=VGG, variables=vgg_vars, step=0, input_shape=(8, 8))


def test_epoch_saver_saves_each_epoch(tmp_path: pathlib.Path) -> None:
    state = _new_state(RESNET)
    saver = checkpoint.epoch_saver(tmp_path, RESNET, {"epochs": 2}, input_shape=(8, 8, 1))
    saver(state.replace(step=jnp.asarray(3, jnp.int32)), {"epoch": 1, "test_acc": 0.5})
    saver(state.replace(step=jnp.asarray(6, jnp.int32)), {"epoch": 2, "test_acc": None})
    assert checkpoint.all_steps(tmp_path) == [3, 6]
    restored = checkpoint.restore(tmp_path)
    assert restored.metadata == {"record": {"epoch": 2, "test_acc": None}}
    assert restored.train_config == {"epochs": 2}
    _assert_bitwise(jax.random.key_data(restored.rng), jax.random.key_data(state.rng))


@pytest.mark.slow  # several seconds on a 2-core machine
def test_grown_checkpoint_keeps_whether_the_input_shape_was_given(tmp_path: pathlib.Path) -> None:
    variables = _init(RESNET)
    key = jax.random.key(0)
    for given, shape in ((True, (8, 8, 1)), (False, None)):
        teacher, student = tmp_path / f"t{given}", tmp_path / f"s{given}"
        checkpoint.save(teacher, model=RESNET, variables=variables, step=0, input_shape=shape)
        checkpoint.grow_checkpoint(teacher, student, key=key, deepen={"depths": (2, 1)})
        info = checkpoint.checkpoint_info(student)
        assert info.input_shape_given is given
        assert info.input_shape == checkpoint.checkpoint_info(teacher).input_shape


def _data_files(step_dir: pathlib.Path) -> list[pathlib.Path]:
    """The state's data files: under ``state/d`` and ``state/ocdbt.process_0/d``."""
    return [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]


def _flip_bytes_of_data_files(step_dir: pathlib.Path) -> None:
    """XORs 16 bytes in the middle of every data file of the state (which of them a restore
    reads varies from save to save)."""
    for path in _data_files(step_dir):
        data = bytearray(path.read_bytes())
        middle = len(data) // 2
        data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
        path.write_bytes(bytes(data))


def test_flipped_bytes_in_array_data_fail_the_restore(tmp_path: pathlib.Path) -> None:
    """Flipped bytes fail the restore in one line: TensorStore's own checks where they hit
    compressed index blocks, the checksums saved beside the state where they hit raw data."""
    variables = _perturbed(_init(RESNET), 1)
    opt_state = optax.sgd(0.1, momentum=0.9).init(variables["params"])
    checkpoint.save(tmp_path, model=RESNET, variables=variables, step=3, opt_state=opt_state)
    assert checkpoint.checkpoint_info(tmp_path).checksums  # saved with the checkpoint
    _flip_bytes_of_data_files(tmp_path / "3")
    with pytest.raises(checkpoint.CorruptCheckpointError) as info:
        checkpoint.restore(tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"checkpoint {tmp_path.resolve() / '3'} ")


def test_an_array_that_differs_from_its_checksum_is_named(tmp_path: pathlib.Path) -> None:
    variables = _perturbed(_init(RESNET), 1)
    checkpoint.save(tmp_path, model=RESNET, variables=variables, step=3)
    arch_file = _arch_file(tmp_path / "3")
    arch = json.loads(arch_file.read_text())
    path = sorted(arch["checksums"])[0]
    arch["checksums"][path][1] = "0" * 64  # as if the array's bytes had changed
    arch_file.write_text(json.dumps(arch))
    with pytest.raises(checkpoint.CorruptCheckpointError) as info:
        checkpoint.restore(tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert f"checkpoint {tmp_path.resolve() / '3'} (step 3) is corrupt: 1 of " in message
    assert f"differ from the checksums saved with them, first state/{path}" in message


def test_checkpoints_without_checksums_still_restore(tmp_path: pathlib.Path) -> None:
    variables = _perturbed(_init(RESNET), 1)
    checkpoint.save(tmp_path, model=RESNET, variables=variables, step=1)
    arch_file = _arch_file(tmp_path / "1")
    arch = json.loads(arch_file.read_text())
    del arch["checksums"]
    arch_file.write_text(json.dumps(arch))
    _assert_bitwise(checkpoint.restore(tmp_path).variables, variables)


# Orbax's reader threads report "Event loop is closed" after a failed read of corrupt data.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("state/_METADATA", r"its 'state' item has no readable metadata"),
        ("state/manifest.ocdbt", r"is corrupt or does not match the architecture"),
        ("truncate", r"is corrupt or does not match the architecture"),
    ],
)
def test_damaged_checkpoints_fail_with_one_line(
    tmp_path: pathlib.Path, damage: str, expected: str
) -> None:
    checkpoint.save(tmp_path, model=RESNET, variables=_init(RESNET), step=1)
    if damage == "truncate":  # every data file: which of them a restore reads varies
        for part in _data_files(tmp_path / "1"):
            part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    else:
        (tmp_path / "1" / damage).unlink()
    with pytest.raises(checkpoint.CorruptCheckpointError, match=expected) as info:
        checkpoint.restore(tmp_path)
    assert "\n" not in str(info.value)
    assert len(str(info.value)) < 400
    gc.collect()
    time.sleep(0.5)  # let Orbax's reports land in this test
