"""Smoke tests of the experiment scripts in their smallest mode, plus their helpers."""

from __future__ import annotations

import json

import chex
import jax
import numpy as np
import pytest

from experiments import common
from experiments.net2net import run as net2net
from experiments.net2net import symmetry
from experiments.scale_down import run as scale_down
from experiments.weight_reuse import run as weight_reuse
from jnet2net.models import ResNet
from jnet2net.train import init_variables

# --- helpers ------------------------------------------------------------------------------


def _run(acc: list[float]) -> common.Run:
    n = len(acc)
    return common.Run(
        "r", n, [10 * (i + 1) for i in range(n)], [1.5 * (i + 1) for i in range(n)], acc, {}
    )


def test_first_reaching_returns_first_epoch_at_or_above_target():
    run = _run([0.2, 0.5, 0.49, 0.9])
    assert common.first_reaching(run, 0.5) == (20, 3.0)
    assert common.first_reaching(run, 0.95) == (None, None)


def test_run_from_history_counts_first_step_at_mean_step_time():
    history = [
        {"step": 11, "epoch_s": 1.0, "first_step_s": 30.0, "test_acc": 0.5},
        {"step": 22, "epoch_s": 2.0, "test_acc": 0.6},
    ]
    run = common.run_from_history("x", 2, history, net2net.TrainConfig(epochs=2))
    np.testing.assert_allclose(run.train_s, [1.1, 3.1])
    assert run.final_acc == 0.6


def test_markdown_table_formats_none_and_floats():
    text = common.markdown_table(["a", "b"], [[None, 0.123456], ["x", 3]])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| - | 0.1235 |", "| x | 3 |"]


def test_random_pad_copies_teacher_into_leading_slices():
    teacher = ResNet(stage_depths=(1,), stage_widths=(2,))
    student = teacher.clone(stage_depths=(2,), stage_widths=(4,))
    images = np.zeros((1, 8, 8, 1), np.uint8)
    t_vars = init_variables(teacher, images, key=jax.random.key(0))
    s_vars = init_variables(student, images, key=jax.random.key(1))
    padded = net2net.random_pad(t_vars, s_vars)
    old = t_vars["params"]["stage0_block0"]["conv1"]["kernel"]
    new = padded["params"]["stage0_block0"]["conv1"]["kernel"]
    chex.assert_shape(new, (3, 3, 4, 4))
    np.testing.assert_array_equal(new[:, :, :2, :2], old)
    np.testing.assert_array_equal(
        new[:, :, 2:, 2:], s_vars["params"]["stage0_block0"]["conv1"]["kernel"][:, :, 2:, 2:]
    )
    np.testing.assert_array_equal(
        padded["params"]["stage0_block1"]["conv1"]["kernel"],
        s_vars["params"]["stage0_block1"]["conv1"]["kernel"],
    )


def test_random_pad_rejects_a_smaller_student():
    big = ResNet(stage_depths=(1,), stage_widths=(4,))
    small = big.clone(stage_widths=(2,))
    images = np.zeros((1, 8, 8, 1), np.uint8)
    big_vars = init_variables(big, images, key=jax.random.key(0))
    small_vars = init_variables(small, images, key=jax.random.key(0))
    with pytest.raises(
        ValueError,
        match=r"random_pad: batch_stats/stage0_block0/bn1/mean is \(4,\) in the teacher and \(2,\)",
    ):
        net2net.random_pad(big_vars, small_vars)


# --- the scripts, smallest mode -----------------------------------------------------------


def test_net2net_main_tiny(tmp_path):
    results = net2net.main(
        [
            "--tiny",
            "--out",
            str(tmp_path),
            "--archs",
            "resnet",
            "--changes",
            "wider",
            "--noises",
            "split",
        ]
    )
    runs = results["families"]["resnet"]["runs"]["wider"]
    assert [r["extra"]["start"] for r in runs] == ["scratch", "random_pad", "net2net_split"]
    assert all(0.0 <= r["final_acc"] <= 1.0 and r["total_s"] > 0 for r in runs)
    assert runs[2]["config"]["learning_rate"] == pytest.approx(
        0.5 * runs[0]["config"]["learning_rate"]
    )
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["environment"]["note"] == common.REDUCED_NOTE
    assert "steps to 98%" in (tmp_path / "table.md").read_text()
    for name in ("curves_resnet_wider.png", "budget_resnet_wider.png"):
        assert (tmp_path / name).stat().st_size > 1000


def test_symmetry_main_tiny(tmp_path):
    results = symmetry.main(["--tiny", "--out", str(tmp_path), "--archs", "vgg"])
    family = results["families"]["vgg"]
    assert [(r["noise"], r["noise_scale"]) for r in family["students"]] == list(symmetry.NOISES)
    assert all(len(r["test_acc"]) == 1 for r in family["students"])
    saved = json.loads((tmp_path / "symmetry.json").read_text())
    assert saved["families"]["vgg"]["student_widths"] == [12, 24]
    assert "widen, split" in (tmp_path / "symmetry.md").read_text()


def test_weight_reuse_main_tiny(tmp_path):
    results = weight_reuse.main(["--tiny", "--out", str(tmp_path), "--settings", "resnet_width"])
    item = results["settings_results"]["resnet_width"]
    assert item["function_preserving"] is True
    assert 0.0 < item["reused_fraction"] <= 1.0
    assert "epochs to 90%" in (tmp_path / "table.md").read_text()
    assert (tmp_path / "curves_resnet_width.png").stat().st_size > 1000


def test_scale_down_main_tiny(tmp_path):
    results = scale_down.main(["--tiny", "--out", str(tmp_path), "--archs", "resnet18"])
    item = results["archs"]["resnet18"]
    assert item["full"]["epochs"] == item["scale_down"]["epochs"] == 1
    assert "fwd FLOPs saved" in (tmp_path / "table.md").read_text()
    assert (tmp_path / "curves_resnet18.png").stat().st_size > 1000


# --- the throughput benchmark's PyTorch twins ---------------------------------------------


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "vgg16"])
def test_torch_reference_has_the_same_parameter_count(name):
    pytest.importorskip("torch")
    from benchmarks import throughput

    model = throughput.JAX_MODELS[name]()
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jax.numpy.zeros((1, 32, 32, 3)), train=False)
    )
    ours = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes["params"]))
    theirs = sum(p.numel() for p in throughput.torch_model(name).parameters())
    assert ours == theirs
