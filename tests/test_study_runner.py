"""The study runner: a study config file resolves to the argv its study's own parser accepts
(no training here: every study's ``main`` is either not called or replaced)."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import subprocess
import sys

import pytest

from experiments import run as runner
from experiments import study as study_lib
from experiments.progressive import run as progressive
from jnet2net.config import load_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
STUDY_FILES = sorted((ROOT / "configs" / "studies").glob("*.py"))

#: benchmarks/gpu_suite.sh's progressive step before it called the runner.
GPU_PROGRESSIVE_ARGV = [
    "--protocol", "full", "--npz", "/tmp/cifar10_raw/cifar10.npz", "--epochs", "15",
    "--batch-size", "512", "--lr", "0.2", "--arms", "scratch", "fresh", "scratch_eq",
    "split0.1", "--seeds", "0", "1", "2", "--out", "/tmp/suite/results/progressive",
]  # fmt: skip
#: ... its net2net step.
GPU_NET2NET_ARGV = [
    "--protocol", "full", "--npz", "/tmp/cifar10_raw/cifar10.npz", "--archs", "resnet",
    "--changes", "wider", "deeper", "both", "--budgets", "3", "10", "20", "--teacher-epochs",
    "10", "--batch-size", "512", "--lr", "0.2", "--student-lr", "0.1", "--seeds", "0", "1",
    "2", "--out", "/tmp/suite/results/net2net", "--cache", "/tmp/net2net_teachers",
]  # fmt: skip
#: ... its scale_down_resnet50 step (target and not_before added after the first GPU run;
#: lr_boost pinned to the recorded runs' 1.0 when the study's default became 3).
GPU_SCALE_DOWN_ARGV = [
    "--protocol", "full", "--npz", "/tmp/cifar10_raw/cifar10.npz", "--nets", "resnet50",
    "--arms", "full", "scale_down", "--seeds", "0", "--epochs", "15", "--batch-size", "512",
    "--lr", "0.2", "--warmup-epochs", "2", "--dtype", "bfloat16", "--out",
    "/tmp/suite/results/scale_down", "--target", "0.5", "--not-before", "0.2",
    "--lr-boost", "1.0",
]  # fmt: skip


def _resolve(name: str, overrides: tuple[str, ...] = ()) -> tuple[list[str], object]:
    """``(argv, parsed namespace)`` of ``configs/studies/<name>.py`` with ``overrides``."""
    study = study_lib.with_overrides(
        study_lib.load_study(ROOT / "configs" / "studies" / f"{name}.py"), overrides
    )
    argv = study_lib.study_argv(study)
    return argv, study_lib.study_parser(study.study).parse_args(argv)


def test_the_study_configs_cover_every_committed_study():
    names = {study_lib.load_study(path).study for path in STUDY_FILES}
    assert names == set(study_lib.known_studies())


@pytest.mark.parametrize("path", STUDY_FILES, ids=lambda p: p.stem)
def test_every_study_config_resolves_to_argv_its_parser_accepts(path):
    study = study_lib.load_study(path)
    argv = study_lib.study_argv(study)
    args = study_lib.study_parser(study.study).parse_args(argv)
    for key, value in study.options.items():
        assert getattr(args, key) == (list(value) if isinstance(value, tuple) else value), key


@pytest.mark.parametrize(
    ("name", "step", "expected"),
    [
        ("progressive_gpu", "progressive", GPU_PROGRESSIVE_ARGV),
        ("net2net_protocol_gpu", "net2net", GPU_NET2NET_ARGV),
        ("scale_down_gpu_resnet50", "scale_down", GPU_SCALE_DOWN_ARGV),
    ],
)
def test_the_gpu_configs_give_the_suite_s_old_commands(name, step, expected):
    argv, _ = _resolve(name, (f"out=/tmp/suite/results/{step}",))
    assert argv == expected


def test_the_cpu_progressive_config_gives_the_docstring_command():
    argv, _ = _resolve("progressive_cpu")
    assert argv == ["--data-dir", "../shared/data", "--seeds", "0", "1", "2"]


@pytest.mark.parametrize(
    ("override", "key", "value"),
    [
        ("seeds=0,1", "seeds", [0, 1]),
        ("epochs=5", "epochs", 5),
        ("summarize=true", "summarize", True),
    ],
)
def test_an_override_changes_exactly_that_option(override, key, value):
    _, before = _resolve("progressive_gpu")
    _, after = _resolve("progressive_gpu", (override,))
    assert getattr(after, key) == value != getattr(before, key)
    changed = {k for k in vars(before) if getattr(before, k) != getattr(after, k)}
    assert changed == {key}


def test_a_bad_override_value_is_refused_by_the_study_parser():
    with pytest.raises(SystemExit):
        _resolve("progressive_gpu", ("seeds=0,x",))


@pytest.mark.parametrize(
    ("study", "match"),
    [
        (study_lib.Study("progressive", {"sedes": [0]}), r"unknown option 'sedes' .*'seeds'"),
        (study_lib.Study("nope"), r"unknown study 'nope'; known: .*progressive"),
        (study_lib.Study("../common"), r"unknown study '../common'"),
        (study_lib.Study("progressive", {"summarize": "yes"}), r"'summarize' is a flag"),
    ],
)
def test_bad_studies_give_one_line_errors(study, match):
    with pytest.raises(ValueError, match=match) as err:
        study_lib.study_argv(study)
    assert "\n" not in str(err.value)


def test_an_unknown_override_key_names_the_study_s_keys():
    with pytest.raises(ValueError, match=r"unknown option 'epoch' of study progressive; .*'epochs"):
        _resolve("progressive_gpu", ("epoch=3",))


def test_cli_errors_are_one_line(capsys, tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from experiments.study import Study\n\ndef get_config():\n")
    bad.write_text(bad.read_text() + "    return Study('nope')\n")
    assert runner.main([str(bad), "--dry-run"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "unknown study 'nope'" in lines[0]


def test_a_run_config_reaches_the_study_as_its_config_file(monkeypatch, tmp_path, capsys):
    path = tmp_path / "with_run.py"
    path.write_text(
        "import pathlib\n"
        "from experiments.study import Study\n"
        "from jnet2net.config import load_config\n\n"
        "def get_config():\n"
        f"    run = load_config({str(ROOT / 'configs' / 'resnet20_cifar10_progressive.py')!r})\n"
        "    return Study('progressive', {'seeds': [0]}, run=run)\n"
    )
    seen = {}

    def fake_main(argv):
        seen["argv"] = list(argv)
        seen["run"] = load_config(argv[argv.index("--config") + 1])
        return 0

    monkeypatch.setattr(progressive, "main", fake_main)
    assert runner.main([str(path), "--set", "run.train.epochs=3", "--summarize"]) == 0
    expected = load_config(ROOT / "configs" / "resnet20_cifar10_progressive.py")
    assert seen["run"] == dataclasses.replace(expected, train=expected.train.replace(epochs=3))
    assert seen["argv"][2:] == ["--seeds", "0", "--summarize"]
    capsys.readouterr()

    assert runner.main([str(path), "--dry-run"]) == 0
    command, config_line = capsys.readouterr().out.strip().splitlines()
    assert command.endswith("--config run_config.json --seeds 0")
    assert json.loads(config_line.partition(": ")[2])["train"]["epochs"] == 10


def test_a_run_config_needs_a_study_that_takes_config():
    run = load_config(ROOT / "configs" / "resnet20_digits.py")
    with pytest.raises(ValueError, match="weight_reuse takes no --config"):
        study_lib.study_argv(study_lib.Study("weight_reuse", run=run))
    with pytest.raises(ValueError, match="both"):
        study_lib.study_argv(study_lib.Study("progressive", {"config": "x.py"}, run=run))


@pytest.mark.slow  # the script's entry point in a fresh interpreter (imports JAX)
def test_the_script_prints_the_resolved_command():
    script = [sys.executable, "experiments/run.py", "configs/studies/progressive_cpu.py"]
    result = subprocess.run(
        [*script, "--set", "seeds=0", "--dry-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "python experiments/progressive/run.py --data-dir ../shared/data --seeds 0"
    )
