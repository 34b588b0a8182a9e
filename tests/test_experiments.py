"""Smoke tests of the experiment scripts in their smallest mode, plus their helpers."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shlex
import subprocess
import sys
import types

import chex
import jax
import numpy as np
import pytest

from experiments import common
from experiments import run as runner
from experiments import study as study_lib
from experiments.net2net import run as net2net
from experiments.net2net import symmetry
from experiments.scale_down import run as scale_down
from experiments.weight_reuse import run as weight_reuse
from jnet2net import cli, data
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


def test_data_for_takes_the_reduced_protocol_flags(tmp_path):
    parser = argparse.ArgumentParser()
    common.add_common_args(parser)
    args = parser.parse_args(["--resolution", "4", "--train-subset", "500", "--subset-seed", "2"])
    train, test = common.data_for(args)
    chex.assert_shape(train.images, (500, 4, 4, 1))
    chex.assert_shape(test.images, (360, 4, 4, 1))
    np.testing.assert_array_equal(np.bincount(train.labels, minlength=10), [50] * 10)
    assert (test.mean, test.std) == (train.mean, train.std)
    tiny, _ = common.data_for(parser.parse_args(["--tiny", "--train-subset", "500"]))
    assert len(tiny) == 256 and tiny.image_shape == (8, 8, 1)

    rng = np.random.default_rng(0)
    npz = tmp_path / "mine.npz"
    np.savez(
        npz,
        train_images=rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8),
        train_labels=np.arange(12) % 3,
        test_images=rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8),
        test_labels=np.arange(5) % 3,
    )
    argv = ["--dataset", "mine", "--npz", str(npz), "--resolution", "2", "--train-subset", "6"]
    train, test = common.data_for(parser.parse_args(argv))
    chex.assert_shape(train.images, (6, 2, 2, 3))
    chex.assert_shape(test.images, (5, 2, 2, 3))
    np.testing.assert_array_equal(np.bincount(train.labels), [2, 2, 2])
    assert (test.mean, test.std) == (train.mean, train.std) == data.channel_stats(train.images)


def test_markdown_table_formats_none_and_floats():
    text = common.markdown_table(["a", "b"], [[None, 0.123456], ["x", 3]])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| - | 0.1235 |", "| x | 3 |"]


def test_weight_reuse_curves_label_their_x_axis_epochs(monkeypatch, tmp_path):
    figures = []
    monkeypatch.setattr(common, "_save", lambda figure, path: figures.append(figure))
    entry = {"label": "x", "epochs": 2, "step": [5, 10], "train_s": [1.0, 2.0]}
    entry.update(test_acc=[0.5, 0.6], config={})
    weight_reuse.plot_setting(tmp_path, "s", {"random": entry, "reuse": entry})
    by_step, by_time = figures[0].axes
    assert by_step.get_xlabel() == "epoch" and by_time.get_xlabel() == "training seconds"
    assert list(by_step.lines[0].get_xdata()) == [1, 2]


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
    argv = ["--tiny", "--out", str(tmp_path), "--nets", "resnet18", "--seeds", "0"]
    # scale_down_views is scale_down under --tiny (no views), full_eq_flops a shorter full run
    arms = ["full", "scale_down", "freezeout", "full_eq_seconds"]
    summary = scale_down.main([*argv, "--arms", *arms])
    entry = summary["networks"]["resnet18"]
    assert set(entry["arms"]) == set(arms)
    (row,) = entry["per_seed"]
    full, scaled = row["arms"]["full"], row["arms"]["scale_down"]
    assert entry["speedup"] == pytest.approx(full["seconds"] / scaled["seconds"])
    assert entry["acc_drop_pts"] == pytest.approx(100 * (full["final_acc"] - scaled["final_acc"]))
    assert row["scale_down"]["candidate_cuts"] == [2, 3, 4]  # stem + stage 0, stages 1, 2
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["networks"]["resnet18"]["speedup"] == pytest.approx(entry["speedup"])
    assert "| resnet18 | scale_down |" in (tmp_path / "table.md").read_text()


def test_scale_down_refuses_a_network_outside_its_protocol(capsys):
    with pytest.raises(SystemExit):
        scale_down.main(["--summarize", "--nets", "resnet50"])
    assert "--nets resnet50: not in the cpu protocol" in capsys.readouterr().err
    assert set(scale_down.FULL_NETWORKS) >= set(scale_down.NETWORKS)


def test_study_flags_reach_the_configs(tmp_path):
    from experiments.progressive import run as progressive

    flags = ["--max-stages", "2", "--target", "0.65", "--lr-boost", "1.5"]
    args = scale_down.build_parser().parse_args(flags)
    scale_down.resolve_settings(args)
    config = scale_down.scale_config(args, "scale_down", spe=40)
    assert (config.max_stages, config.target_compute, config.check_every) == (2, 0.65, 10)
    assert config.lr_boost == 1.5
    default = scale_down.build_parser().parse_args([])
    scale_down.resolve_settings(default)
    default_config = scale_down.scale_config(default, "scale_down", spe=40)
    assert (default_config.max_stages, default_config.lr_boost) == (None, 3.0)
    assert default_config.target_compute == 0.65
    for arm in scale_down.BOOSTED_ARMS:  # full training at the scale-down arm's rates
        boosted = scale_down.scale_config(args, arm, spe=40)
        assert (boosted.target_compute, boosted.lr_boost) == (1.0, 1.5)
        assert boosted.ready_ratio is None  # no deadline and no readiness: nothing freezes
    args.lr_boost, args.out = 1.0, str(tmp_path)  # then full_boosted is the full arm: not run
    scale_down.run_arm(args, "resnet18", "full_boosted", 0, None, None)
    assert not scale_down.log_path(pathlib.Path(args.out), "resnet18", "full_boosted", 0).exists()
    args = progressive.build_parser().parse_args(["--ema-decay", "0.99"])
    assert progressive.train_config(args, 3, 0, tmp_path / "log.jsonl").ema_decay == 0.99
    args = progressive.build_parser().parse_args([])
    assert progressive.train_config(args, 3, 0, tmp_path / "log.jsonl").ema_decay is None


# --- tables and verdicts from recorded runs ------------------------------------------------


def _entry(start, acc, seconds, teacher_s=0.0, lr=0.1):
    n = len(acc)
    return {
        "label": start,
        "epochs": n,
        "step": [10 * (i + 1) for i in range(n)],
        "train_s": seconds,
        "test_acc": acc,
        "config": {"learning_rate": lr, "warmup_epochs": 0.0},
        "final_acc": acc[-1],
        "total_s": seconds[-1],
        "extra": {"start": start, "teacher_s": teacher_s, "teacher_steps": 7},
    }


def _family():
    scratch = _entry("scratch", [0.5, 0.8, 0.9, 1.0], [1.0, 2.0, 3.0, 4.0])
    grown = _entry("net2net_split", [0.98, 0.99, 0.99, 0.99], [1.5, 3.0, 4.5, 6.0], 0.5)
    return {"runs": {"wider": [scratch, grown]}}


def test_net2net_summary_reports_scratch_seconds_to_the_target():
    rows = [
        dict(zip(net2net.SUMMARY_HEADERS, r, strict=True))
        for r in net2net.summary_rows(_family(), "resnet")
    ]
    scratch, grown = rows
    assert scratch["steps to 98%"] == 40 and grown["steps to 98%"] == 10
    assert grown["steps / scratch's"] == pytest.approx(0.25)
    assert grown["s to 98% (+teacher)"] == pytest.approx(2.0)
    assert grown["scratch s to 98%"] == scratch["scratch s to 98%"] == pytest.approx(4.0)
    assert grown["teacher+student s"] == pytest.approx(6.5) and grown["scratch s"] == 4.0


def test_time_to_accuracy_verdict_compares_seconds_to_the_target():
    from benchmarks import time_to_accuracy

    scratch, grown = [time_to_accuracy.verdict(r) for r in net2net.summary_rows(_family(), "r")]
    # teacher + student reach 98% of scratch's final in 2.0 s, scratch in 4.0 s; the whole
    # budgets (6.5 s against 4.0 s) are not the question.
    assert grown["time_ok"] is True and grown["steps_ok"] is True
    assert scratch["time_ok"] is False and scratch["steps_ok"] is False
    never = _entry("random_pad", [0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4])
    family = _family()
    family["runs"]["wider"].append(never)
    last = time_to_accuracy.verdict(net2net.summary_rows(family, "r")[-1])
    assert last["time_ok"] is False and last["steps_ok"] is False


def test_weight_reuse_table_names_the_run_its_target_comes_from():
    assert "epochs to 90% of random's final" in weight_reuse.HEADERS


def test_scale_down_summary_compares_every_arm_with_full_training(tmp_path):
    runs = tmp_path / "runs"
    _write_log(runs / "resnet18_full_s0.jsonl", [0.5, 0.8], 10.0, 4.0)  # 20 FLOPs, 8 + 1 s
    _write_log(runs / "resnet18_scale_down_s0.jsonl", [0.5, 0.79], 6.0, 2.0)  # 12, 4 + 1 s
    _write_log(runs / "resnet18_freezeout_s0.jsonl", [0.5, 0.77], 6.0, 2.0)
    _write_log(runs / "resnet18_full_eq_flops_s0.jsonl", [0.75], 10.0, 4.0)
    _write_log(runs / "resnet18_full_boosted_s0.jsonl", [0.5, 0.82], 10.0, 4.0)
    _write_log(runs / "vgg11_full_s0.jsonl", [0.5, 0.8], 10.0, 4.0)  # no scale-down run yet
    summary = scale_down.summarize(tmp_path, ["resnet18", "vgg11"], 2)
    assert set(summary["networks"]) == {"resnet18"}
    entry = summary["networks"]["resnet18"]
    assert entry["acc_drop_same_lr_pts"] == pytest.approx(3.0)  # 82% with the same rates
    assert entry["acc_drop_same_lr_spread"]["n"] == 1
    assert entry["speedup"] == pytest.approx(9 / 5)
    assert entry["steps_speedup"] == pytest.approx(8 / 4)  # compiles left out
    assert entry["arms"]["scale_down"]["steps_speedup"]["mean"] == pytest.approx(2.0)
    assert entry["acc_drop_pts"] == pytest.approx(1.0)
    points = entry["per_seed"][0]["points_over"]
    assert points == {"freezeout": pytest.approx(2.0), "full_eq_flops": pytest.approx(4.0)}
    assert entry["arms"]["full_eq_flops"]["flops_ratio"]["mean"] == pytest.approx(0.5)
    scale_down.write_table(tmp_path, summary)
    table = (tmp_path / "table.md").read_text()
    assert "| resnet18 | scale_down | 79.0 | 1.00 | 0.60 | 1.80 | 2.00 |" in table
    assert (
        "- resnet18 (1 seed): 1.80x faster than full training at 0.60 of its FLOPs, "
        "1.0 points below it (3.0 below full training at the same learning rates); "
        "+2.0 points over freezeout, +4.0 over full_eq_flops" in table
    )


def test_time_to_accuracy_main_tiny_writes_its_table_to_out(tmp_path):
    from benchmarks import time_to_accuracy

    verdicts = time_to_accuracy.main(
        ["--tiny", "--out", str(tmp_path / "out"), "--json", str(tmp_path / "v.jsonl")]
    )
    assert [v["start"] for v in verdicts] == ["scratch", "random_pad", "net2net_split"]
    assert len((tmp_path / "v.jsonl").read_text().splitlines()) == 3
    assert "scratch s to 98%" in (tmp_path / "out" / "table.md").read_text()
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["family"]["runs"]["wider"][0]["extra"]["start"] == "scratch"


# --- the throughput benchmark -------------------------------------------------------------


def test_time_steps_leaves_the_warm_up_out():
    from benchmarks import throughput

    calls, synced = [], []

    def step():
        calls.append(1)
        if len(calls) == 1:  # a slow first call (the compile) in the warm-up
            import time

            time.sleep(0.3)
        return len(calls)

    seconds = throughput.time_steps(step, synced.append, warmup=2, steps=3)
    assert len(calls) == 5 and synced == [2, 5]
    assert seconds < 0.05


def test_throughput_without_torch_keeps_the_jnet2net_row(monkeypatch, tmp_path):
    from benchmarks import throughput

    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    monkeypatch.setattr(throughput, "jax_images_per_s", lambda *a: 123.0)
    rows = throughput.main(["--small", "--nets", "vgg16", "--json", str(tmp_path / "t.jsonl")])
    assert rows[0]["jnet2net_images_per_s"] == 123.0
    assert rows[0]["torch_eager_images_per_s"] is None
    saved = json.loads((tmp_path / "t.jsonl").read_text())
    assert saved["jnet2net_images_per_s"] == 123.0 and saved["torch"] is None


class _Shape:
    """A (c, h, w) or (features,) activation shape that the fake layers below propagate."""

    def __init__(self, *dims):
        self.dims = dims

    def __add__(self, other):
        assert self.dims == other.dims, (self.dims, other.dims)
        return self


def _fake_torch(log):
    """Enough of ``torch`` / ``torch.nn`` to build the twins, count parameters, trace shapes."""

    class Module:
        sizes: tuple = ()

        def parameters(self):
            yield from (types.SimpleNamespace(numel=lambda n=n: n) for n in self.sizes)
            for value in vars(self).values():
                for child in value if isinstance(value, list) else [value]:
                    if isinstance(child, Module):
                        yield from child.parameters()

        def __call__(self, x):
            return self.forward(x)

    class Sequential(Module):
        def __init__(self, *layers):
            self.layers = list(layers)

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    class Conv2d(Module):
        def __init__(self, c_in, c_out, k, stride=1, padding=0, bias=True):
            self.c_in, self.c_out, self.k, self.stride, self.padding = (
                c_in,
                c_out,
                k,
                stride,
                padding,
            )
            self.sizes = (c_out * c_in * k * k, *((c_out,) if bias else ()))

        def forward(self, x):
            c, h, w = x.dims
            assert c == self.c_in
            log.append(("conv", self.k, self.c_in, self.c_out))
            size = [(n + 2 * self.padding - self.k) // self.stride + 1 for n in (h, w)]
            return _Shape(self.c_out, *size)

    class BatchNorm2d(Module):
        def __init__(self, c):
            self.c, self.sizes = c, (c, c)

        def forward(self, x):
            assert x.dims[0] == self.c
            return x

    class ReLU(Module):
        def __init__(self, inplace=False):
            pass

        def forward(self, x):
            return x

    class MaxPool2d(Module):
        def __init__(self, k):
            self.k = k

        def forward(self, x):
            c, h, w = x.dims
            return _Shape(c, h // self.k, w // self.k)

    class AdaptiveAvgPool2d(Module):
        def __init__(self, size):
            assert size == 1

        def forward(self, x):
            log.append(("pool", *x.dims))
            return _Shape(x.dims[0], 1, 1)

    class Flatten(Module):
        def forward(self, x):
            return _Shape(int(np.prod(x.dims)))

    class Linear(Module):
        def __init__(self, n_in, n_out):
            self.n_in, self.n_out, self.sizes = n_in, n_out, (n_in * n_out, n_out)

        def forward(self, x):
            assert x.dims == (self.n_in,), (x.dims, self.n_in)
            return _Shape(self.n_out)

    nn = types.ModuleType("torch.nn")
    for cls in (Module, Sequential, Conv2d, BatchNorm2d, ReLU, MaxPool2d, AdaptiveAvgPool2d):
        setattr(nn, cls.__name__, cls)
    nn.Flatten, nn.Linear = Flatten, Linear
    torch = types.ModuleType("torch")
    torch.nn, torch.relu = nn, lambda x: x
    return torch, nn


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "vgg16"])
def test_torch_twin_has_our_layers_widths_and_strides(name, monkeypatch):
    from benchmarks import throughput

    log = []
    torch, nn = _fake_torch(log)
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch.nn", nn)
    twin = throughput.torch_model(name)
    assert twin(_Shape(3, 32, 32)).dims == (10,)
    theirs = sum(p.numel() for p in twin.parameters())

    model = throughput.JAX_MODELS[name]()
    x = jax.numpy.zeros((1, 32, 32, 3))
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    ours = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes["params"]))
    assert ours == theirs
    kernels = sorted(
        (leaf.shape[0], leaf.shape[2], leaf.shape[3])
        for leaf in jax.tree.leaves(shapes["params"])
        if leaf.ndim == 4
    )
    assert sorted(entry[1:] for entry in log if entry[0] == "conv") == kernels
    if name.startswith("resnet"):  # spatial size before the global pool: the strides agree
        stop = len(model.layer_names()) - 1
        feature = jax.eval_shape(
            lambda: model.apply(jax.tree.map(jax.numpy.zeros_like, shapes), x, stop=stop)
        )
        (pool,) = [entry[1:] for entry in log if entry[0] == "pool"]
        assert pool == (feature.shape[3], feature.shape[1], feature.shape[2])


# --- the GPU suite's wiring ---------------------------------------------------------------

SUITE = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_suite.sh"


def test_gpu_suite_is_valid_bash():
    subprocess.run(["bash", "-n", str(SUITE)], check=True)


def _run_suite_with_fake_python(tmp_path, **env_vars: str) -> list[list[str]]:
    """The argv of every Python call ``gpu_suite.sh`` makes, in order (nothing runs)."""
    calls = tmp_path / "calls.jsonl"
    fake = tmp_path / "python"
    fake.write_text(
        f"#!/bin/sh\nexec {sys.executable} -c 'import json, sys; "
        f'open("{calls}", "a").write(json.dumps(sys.argv[1:]) + "\\n")\' "$@"\n'
    )
    fake.chmod(0o755)
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": str(fake), **env_vars}
    subprocess.run(["bash", str(SUITE)], env=env, check=True, capture_output=True, timeout=60)
    return [json.loads(line) for line in calls.read_text().splitlines()]


@pytest.mark.parametrize("small", ["0", "1"])
def test_gpu_suite_passes_each_script_options_it_accepts(small, tmp_path):
    from benchmarks import throughput, time_to_accuracy
    from experiments.net2net import protocol as net2net_protocol
    from experiments.progressive import run as progressive

    invocations = _run_suite_with_fake_python(tmp_path, SMALL=small)
    parsers = {
        "benchmarks/throughput.py": throughput.build_parser(),
        "benchmarks/time_to_accuracy.py": time_to_accuracy.build_parser(),
        "experiments/progressive/run.py": progressive.build_parser(),
        "experiments/net2net/protocol.py": net2net_protocol.build_parser(),
        "experiments/scale_down/run.py": scale_down.build_parser(),
    }
    seen = []
    for argv in invocations:
        if argv[0] == "experiments/run.py":  # a study config: the study script's argv
            study = runner.resolved_study(runner.build_parser().parse_args(argv[1:]))
            argv = shlex.split(runner.command_text(study, study_lib.study_argv(study)))[1:]
        if argv[0] in parsers:
            parsers[argv[0]].parse_args(argv[1:])
            seen.append(argv[0])
        elif argv[:2] == ["-m", "jnet2net"]:
            cli.build_parser().parse_args(argv[2:])
            seen.append(argv[2])
        else:
            assert argv[0] == "-c", argv
    expected = ["benchmarks/throughput.py", "train"]
    expected += (
        ["experiments/progressive/run.py", "experiments/net2net/protocol.py"]
        if small == "0"
        else []
    )
    expected += ["benchmarks/time_to_accuracy.py"]
    expected += ["train", "train"]
    expected += (
        ["experiments/scale_down/run.py", "benchmarks/throughput.py"] if small == "0" else []
    )
    assert seen == expected


def test_gpu_suite_runs_the_steps_in_the_order_given_with_their_overrides(tmp_path):
    out = tmp_path / "out"
    full_log = out / "results" / "scale_down" / "runs" / "resnet50_full_s0.jsonl"
    full_log.parent.mkdir(parents=True)
    full_log.write_text('{"epoch": 1}\n')
    invocations = _run_suite_with_fake_python(
        tmp_path,
        STEPS="net2net scale_down_resnet50_alt no_such_step progressive",
        SET_net2net="seeds=0 budgets=10,20 changes=wider,deeper",
        SET_scale_down_resnet50_alt="target=0.7",
        COPY_TO=str(tmp_path / "copy"),
    )
    studies = [argv for argv in invocations if argv[0] == "experiments/run.py"]
    resolved = []
    for argv in studies:
        study = runner.resolved_study(runner.build_parser().parse_args(argv[1:]))
        parsed = study_lib.study_parser(study.study).parse_args(study_lib.study_argv(study))
        resolved.append((study.study, parsed))
    assert [name for name, _ in resolved] == ["net2net.protocol", "scale_down", "progressive"]
    net2net_args, alt_args = resolved[0][1], resolved[1][1]
    assert net2net_args.seeds == [0] and net2net_args.budgets == [10, 20]
    assert net2net_args.changes == ["wider", "deeper"]
    assert alt_args.target == 0.7 and alt_args.out == str(out / "results/scale_down_alt")
    # the alt step reuses the main step's full run, so only its scale-down arm trains
    assert (out / "results/scale_down_alt/runs/resnet50_full_s0.jsonl").read_text() == (
        full_log.read_text()
    )
    assert "no_such_step: no such step" in (out / "suite.log").read_text()
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == ["results.tgz", "suite.log"]


# --- the throughput benchmark's PyTorch twins (real torch) --------------------------------


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


# --- the progressive-growth study's summary -----------------------------------------------


def _write_log(path, accs, flops_per_epoch, seconds_per_epoch, events=()):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, acc in enumerate(accs, 1):
        lines.append(
            {
                "epoch": i,
                "step": 10 * i,
                "test_acc": acc,
                "train_flops": flops_per_epoch * i,
                "train_s": seconds_per_epoch * i,
                "compile_s": 1.0,
                "grow_s": 0.5 * len(events),
            }
        )
    for step in events:
        lines.append({"event": "grow", "step": step, "epoch": step / 10, "output_error": 1e-7})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_progressive_summary_ratios_to_target(tmp_path):
    from experiments.progressive import run as progressive

    runs = tmp_path / "runs"
    _write_log(runs / "scratch_s0.jsonl", [0.3, 0.5, 0.6, 0.7], 10.0, 2.0)
    _write_log(runs / "fresh_s0.jsonl", [0.2, 0.4, 0.65, 0.698], 5.0, 1.0, events=(10, 20))
    _write_log(runs / "scratch_eq_s0.jsonl", [0.4, 0.62], 10.0, 2.0)
    _write_log(runs / "none_s0.jsonl", [0.1, 0.2, 0.3, 0.4], 5.0, 1.0)
    summary = progressive.summarize(tmp_path, 4, "fresh")
    fresh = summary["arms"]["fresh"]["per_seed"][0]
    assert fresh["target_acc"] == pytest.approx(0.697)
    # fresh reaches 0.697 at epoch 4 (20 FLOPs, 4 + 1 + 1 s); scratch at epoch 4 (40, 8 + 1 s).
    assert fresh["flops_ratio_to_target"] == pytest.approx(20 / 40)
    assert fresh["seconds_ratio_to_target"] == pytest.approx(6 / 9)
    assert fresh["acc_before_after_events"] == [[0.2, 0.4], [0.4, 0.65]]
    gain = summary["arms"]["fresh"]["mean"]["points_over_scratch_at_equal_flops"]
    assert gain["mean"] == pytest.approx((0.698 - 0.62) * 100)
    none = summary["arms"]["none"]
    assert none["per_seed"][0]["flops_ratio_to_target"] is None
    assert none["mean"]["flops_ratio_to_target"]["missing"] == 1
    progressive.write_table(tmp_path, summary)
    assert "| fresh | 1 | 69.8 |" in (tmp_path / "table.md").read_text()


def test_net2net_protocol_summary_ratios_and_dip(tmp_path):
    from experiments.net2net import protocol

    runs = tmp_path / "runs"
    _write_log(runs / "resnet_teacher_s0.jsonl", [0.4, 0.5], 2.0, 1.0)
    _write_log(runs / "resnet_wider_student_b3_s0.jsonl", [0.47, 0.60, 0.62], 4.0, 1.0)
    _write_log(runs / "resnet_wider_scratch_b3_s0.jsonl", [0.3, 0.5, 0.6], 4.0, 1.0)
    summary = protocol.summarize(tmp_path, teacher_epochs=2)
    row = summary["resnet/wider/b3"]["per_seed"][0]
    assert row["target_acc"] == pytest.approx(0.597)
    assert row["flops_ratio_to_target"] == pytest.approx(8 / 12)  # epoch 2 against epoch 3
    assert row["teacher_flops_over_scratch"] == pytest.approx(4 / 12)
    assert row["dip_pts"] == pytest.approx(100 * (0.5 - 0.47))
    protocol.write_table(tmp_path, summary)
    assert (
        "| resnet/wider/b3 | 1 | 50.0 | 62.0 | 60.0 | 0.67 |" in (tmp_path / "table.md").read_text()
    )


def test_net2net_protocol_recipe_tag_shares_scratch_and_teacher(tmp_path):
    from experiments.net2net import protocol

    runs = tmp_path / "runs"
    _write_log(runs / "resnet_teacher_s0.jsonl", [0.4, 0.5], 2.0, 1.0)
    _write_log(runs / "resnet_wider_scratch_b3_s0.jsonl", [0.3, 0.5, 0.6], 4.0, 1.0)
    _write_log(runs / "resnet_wider_student_b3_s0.jsonl", [0.47, 0.60, 0.62], 4.0, 1.0)
    name = protocol.student_name("fresh-lr0.02")
    _write_log(runs / f"resnet_wider_{name}_b3_s0.jsonl", [0.49, 0.58, 0.59], 4.0, 1.0)
    summary = protocol.summarize(tmp_path, teacher_epochs=2)
    assert set(summary) == {"resnet/wider/b3", "resnet/wider[fresh-lr0.02]/b3"}
    tagged = summary["resnet/wider[fresh-lr0.02]/b3"]["per_seed"][0]
    assert tagged["scratch_acc"] == pytest.approx(0.6)
    assert tagged["flops_ratio_to_target"] is None  # 0.59 never reaches 0.597
    assert tagged["dip_pts"] == pytest.approx(100 * (0.5 - 0.49))
    with pytest.raises(ValueError, match="--tag"):
        protocol.student_name("a_b")


def test_net2net_protocol_pairs_moving_average_students_with_their_scratch(tmp_path):
    from experiments.net2net import protocol

    runs = tmp_path / "runs"
    student = protocol.student_name("fresh", 0.99)
    scratch = protocol.scratch_name(0.99)
    assert (student, scratch) == ("student-fresh-ema0.99", "scratch-ema0.99")
    _write_log(runs / "resnet_teacher_s0.jsonl", [0.4, 0.5], 2.0, 1.0)
    _write_log(runs / "resnet_wider_scratch_b3_s0.jsonl", [0.3, 0.5, 0.9], 4.0, 1.0)
    _write_log(runs / f"resnet_wider_{scratch}_b3_s0.jsonl", [0.3, 0.5, 0.6], 4.0, 1.0)
    log = runs / f"resnet_wider_{student}_b3_s0.jsonl"
    _write_log(log, [0.49, 0.60, 0.62], 4.0, 1.0)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    for record, live in zip(records, [0.45, 0.58, 0.62], strict=True):
        record["test_acc_live"] = live
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    row = protocol.summarize(tmp_path, teacher_epochs=2)["resnet/wider[fresh-ema0.99]/b3"]
    row = row["per_seed"][0]
    assert row["scratch_acc"] == pytest.approx(0.6)  # scratch-ema0.99, not plain scratch
    assert row["dip_pts"] == pytest.approx(1.0)
    assert row["dip_live_pts"] == pytest.approx(5.0)


def test_net2net_protocol_headline_grid_of_recommended_recipes(tmp_path):
    from experiments.net2net import protocol

    runs = tmp_path / "runs"
    student = protocol.student_name("fresh-lr0.05", 0.99)
    scratch = protocol.scratch_name(0.99)
    _write_log(runs / "resnet_teacher_s0.jsonl", [0.4, 0.5], 2.0, 1.0)
    _write_log(runs / f"resnet_wider_{scratch}_b3_s0.jsonl", [0.3, 0.5, 0.6], 4.0, 1.0)
    _write_log(runs / f"resnet_wider_{student}_b3_s0.jsonl", [0.49, 0.60, 0.62], 4.0, 1.0)
    _write_log(runs / f"resnet_wider_{scratch}_b10_s0.jsonl", [0.5] * 9 + [0.7], 4.0, 1.0)
    _write_log(runs / f"resnet_wider_{student}_b10_s0.jsonl", [0.55] * 10, 4.0, 1.0)
    # another recipe of the same change stays out of the headline
    _write_log(runs / "resnet_wider_student_b3_s0.jsonl", [0.1, 0.1, 0.1], 4.0, 1.0)
    summary = protocol.summarize(tmp_path, teacher_epochs=2)
    text = protocol.write_headline(tmp_path, summary)
    assert text == (tmp_path / "headline.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| resnet/wider |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[1] == "fresh-lr0.05-ema0.99"
    # epoch 2 of 3 against scratch's epoch 3; one seed where the protocol runs three
    assert cells[2] == "62.0 vs 60.0: 0.67 [1 seed]"
    assert cells[3] == "55.0 vs 70.0: never [1 seed]"
    assert cells[4] == "-"  # budget 20 not run
    assert cells[5] == "1.0"  # the worst mean dip below the teacher (50.0 -> 49.0)
    assert "resnet/deeper" not in text  # nothing run for it


def test_format_spread_gives_the_mean_and_its_spread():
    from experiments.common import format_spread, mean_spread

    assert format_spread(mean_spread([0.5, 0.7]), 1, scale=100) == "60.0 ± 10.0"
    assert format_spread(mean_spread([1.5, None])) == "1.50"  # one value known: no spread
