"""The ``jnet2net`` command line, end to end on tiny settings (digits, 2 epochs, widths <= 16)."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import jnet2net
from jnet2net import checkpoint, cli
from jnet2net.train import read_jsonl

TINY = '{"stage_depths": [1, 1], "stage_widths": [4, 8]}'
TRAIN = ["--dataset", "digits", "--batch-size", "32", "--lr", "0.05", "--keep", "0"]
STEPS_PER_EPOCH = 1437 // 32


def _assert_bitwise(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A 2-epoch run of a tiny ResNet on digits, every epoch's checkpoint kept."""
    run = tmp_path_factory.mktemp("cli") / "teacher"
    args = ["train", "--arch", "resnet20", "--arch-json", TINY, "--epochs", "2", "--out", str(run)]
    assert cli.main(args + TRAIN) == 0
    return run


# --- help and argument parsing --------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ([], ["demo", "train", "grow", "transfer", "eval", "plot"]),
        (["demo"], ["--quick", "--epochs", "--out"]),
        (["train"], ["--arch", "--arch-json", "--from", "--resume", "--dtype", "--scale-down"]),
        (["transfer"], ["--from", "--to", "--arch-json", "--depth-map", "--fill", "--out"]),
        (["grow"], ["--from", "--widen", "--deepen", "--noise", "--seed", "--out"]),
        (["eval"], ["--from", "--dataset", "--data-dir"]),
        (["plot"], ["RUN", "--out", "--labels"]),
    ],
)
def test_help_of_every_command(capsys: pytest.CaptureFixture, command, expected) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: jnet2net")
    for word in expected:
        assert word in out


def test_python_dash_m_runs_the_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "jnet2net", "grow", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: jnet2net grow")


def test_a_command_is_required(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([])
    assert exit_info.value.code == 2
    assert "the following arguments are required: COMMAND" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--keep", "-1", "--out", "x"], "argument --keep: must be >= 0, got -1"),
        (["grow", "--from", "a", "--out", "b", "--step", "-3"], "argument --step: must be >= 0"),
        (["grow", "--from", "a", "--out", "b", "--check-batches", "0"], "must be >= 1, got 0"),
        (["eval", "--from", "a", "--batch-size", "0"], "argument --batch-size: must be >= 1"),
    ],
)
def test_counts_are_checked_by_the_parser(capsys: pytest.CaptureFixture, argv, message) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "current", "expected"),
    [
        ("8,16", (4, 8), (8, 16)),
        ("2x", (4, 8), (8, 16)),
        ("1.5x", (4, 6), (6, 9)),
        ("1.5x", (3, 5, 1), (5, 8, 2)),  # halves round up, not to even
        ("x1", (3,), (3,)),
    ],
)
def test_parse_widths(text, current, expected) -> None:
    assert cli.parse_widths(text, current) == expected


def test_scaled_model_rounds_halves_up() -> None:
    model = jnet2net.models.ResNet((1, 1), (3, 5), block="bottleneck", stem_width=1)
    scaled = cli.scaled_model(model, 1.5)
    assert (scaled.stage_widths, scaled.stem_width) == ((5, 8), 2)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("8", r"--widths needs 2 comma-separated values \(the model has \(4, 8\)\), got '8'"),
        ("a,b", r"--widths takes comma-separated ints, got 'a,b'"),
        ("0,4", r"--widths takes positive comma-separated ints"),
        ("-2x", r"a width multiplier must be positive, got '-2x'"),
        ("twox", r"a width multiplier looks like '1.5x', got 'twox'"),
    ],
)
def test_parse_widths_errors(text, message) -> None:
    with pytest.raises(ValueError, match=message):
        cli.parse_widths(text, (4, 8))


def test_parse_depths() -> None:
    assert cli.parse_depths("+1", (1, 2)) == (2, 3)
    assert cli.parse_depths("3,3", (1, 2)) == (3, 3)
    with pytest.raises(ValueError, match=r"--deepen needs 2 comma-separated depths"):
        cli.parse_depths("3", (1, 2))
    with pytest.raises(ValueError, match=r"'\+N' adds N to every stage, got '\+1,2'"):
        cli.parse_depths("+1,2", (1, 2))


def test_train_flags_reach_the_config() -> None:
    args = cli.build_parser().parse_args(
        ["train", "--out", "r", "--augment", "crop", "--dtype", "bfloat16", "--lr", "0.2"]
    )
    config = cli.train_config_from_args(args, "digits")
    assert (config.augment, config.compute_dtype, config.learning_rate) == ("crop", "bfloat16", 0.2)
    assert config.log_path == str(pathlib.Path("r") / "metrics.jsonl")


def test_model_from_args() -> None:
    model = cli.model_from_args("resnet20", TINY, None, 10)
    assert model == jnet2net.ResNet(stage_depths=(1, 1), stage_widths=(4, 8))
    half = cli.model_from_args("vgg11", None, 0.25, 3)
    assert half.stage_widths == (16, 32, 64, 128, 128) and half.num_classes == 3
    full = cli.model_from_args(None, json.dumps(jnet2net.model_config(model)), 2.0, 10)
    assert full == model.clone(stage_widths=(8, 16))
    with pytest.raises(ValueError, match=r"unknown architecture 'resnet21'"):
        cli.model_from_args("resnet21", None, None, 10)
    with pytest.raises(ValueError, match=r"has num_classes=7 but the dataset has 10 classes"):
        cli.model_from_args("resnet20", '{"num_classes": 7}', None, 10)
    with pytest.raises(ValueError, match=r"--arch-json is not valid JSON"):
        cli.model_from_args("resnet20", "{nope", None, 10)
    with pytest.raises(ValueError, match=r"name an architecture"):
        cli.model_from_args(None, None, None, 10)


# --- commands end to end ----------------------------------------------------------------


def test_train_writes_checkpoints_and_metrics(teacher_run: pathlib.Path) -> None:
    assert checkpoint.all_steps(teacher_run) == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    records = read_jsonl(teacher_run / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[-1]["test_acc"] > 0.5
    restored = checkpoint.restore(teacher_run)
    assert restored.model == jnet2net.ResNet(stage_depths=(1, 1), stage_widths=(4, 8))
    assert restored.train_config["learning_rate"] == 0.05
    assert restored.train_config["augment"] == "none"  # no flips for digits
    assert restored.opt_state is not None


def test_resume_continues_the_same_run(teacher_run: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """Interrupted after epoch 1 (later checkpoints and log lines lost), then resumed."""
    run = tmp_path / "run"
    shutil.copytree(teacher_run, run)
    shutil.rmtree(run / str(2 * STEPS_PER_EPOCH))
    log = run / "metrics.jsonl"
    log.write_text(log.read_text().splitlines(keepends=True)[0])

    assert cli.main(["train", "--out", str(run), "--resume", "--dataset", "digits"]) == 0
    resumed, straight = checkpoint.restore(run), checkpoint.restore(teacher_run)
    assert resumed.step == straight.step == 2 * STEPS_PER_EPOCH
    _assert_bitwise(resumed.variables, straight.variables)
    _assert_bitwise(resumed.opt_state, straight.opt_state)
    records = read_jsonl(log)
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[1]["test_acc"] == read_jsonl(teacher_run / "metrics.jsonl")[1]["test_acc"]


def test_train_refusals(teacher_run: pathlib.Path, capsys: pytest.CaptureFixture) -> None:
    base = ["train", "--dataset", "digits", "--out", str(teacher_run)]
    assert cli.main([*base, "--arch", "resnet20"]) == 1
    assert (
        "already holds a run (checkpoint steps [44, 88]); pass --resume" in capsys.readouterr().err
    )
    assert cli.main([*base, "--resume", "--lr", "0.1"]) == 1
    err = capsys.readouterr().err
    assert "--lr 0.1 differs from the resumed run's learning_rate=0.05" in err
    assert cli.main([*base, "--resume", "--arch", "resnet20"]) == 1
    assert "--resume continues the run in --out" in capsys.readouterr().err


def test_grow_then_train_from_grown(
    teacher_run: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture
) -> None:
    grown_dir = tmp_path / "grown"
    args = ["grow", "--from", str(teacher_run), "--widen", "2x", "--deepen", "+1"]
    assert cli.main([*args, "--seed", "3", "--out", str(grown_dir)]) == 0
    out = capsys.readouterr().out
    assert "student: ResNet(depths=[2, 2], widths=[8, 16])" in out
    error = float(out.split("max relative output error ")[1].split()[0])
    assert error < 1e-5
    assert "restores bitwise" in out

    teacher, grown = checkpoint.restore(teacher_run), checkpoint.restore(grown_dir)
    assert grown.step == 0
    assert grown.metadata["grown_from"] == str(teacher.path)
    assert grown.metadata["relative_error"] == pytest.approx(error, rel=0.01)
    xs = jax.random.normal(jax.random.key(0), (2, 8, 8, 8, 1))
    jnet2net.assert_function_preserved(
        teacher.model, teacher.variables, grown.model, grown.variables, xs
    )

    assert cli.main([*args, "--out", str(grown_dir)]) == 1
    assert "already holds a checkpoint at step 0" in capsys.readouterr().err

    student_dir = tmp_path / "student"
    train = ["train", "--from", str(grown_dir), "--epochs", "1", "--out", str(student_dir)]
    assert cli.main(train + TRAIN) == 0
    student = checkpoint.restore(student_dir)
    assert student.model == grown.model and student.step == STEPS_PER_EPOCH
    assert student.metadata["started_from"] == str(grown.path)


def test_grow_errors(teacher_run: pathlib.Path, tmp_path: pathlib.Path, capsys) -> None:
    out = str(tmp_path / "grown")
    assert cli.main(["grow", "--from", str(teacher_run), "--out", out]) == 1
    assert "nothing to grow: pass --widen and/or --deepen" in capsys.readouterr().err
    assert cli.main(["grow", "--from", str(teacher_run), "--widen", "2,4", "--out", out]) == 1
    assert "widen cannot shrink stage0_stream" in capsys.readouterr().err
    missing = tmp_path / "missing"
    assert cli.main(["grow", "--from", str(missing), "--widen", "2x", "--out", out]) == 1
    assert f"{missing} does not exist" in capsys.readouterr().err


def test_eval_matches_the_training_log(teacher_run: pathlib.Path, capsys) -> None:
    assert cli.main(["eval", "--from", str(teacher_run), "--dataset", "digits", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[0])
    last = read_jsonl(teacher_run / "metrics.jsonl")[-1]
    assert result["step"] == last["step"] and result["examples"] == 360
    assert result["accuracy"] == pytest.approx(last["test_acc"], abs=1e-9)
    assert result["loss"] == pytest.approx(last["test_loss"], rel=1e-5)

    assert cli.main(["eval", "--from", str(teacher_run), "--step", "44"]) == 0
    assert "(step 44) on digits/test:\n  loss: " in capsys.readouterr().out
    assert cli.main(["eval", "--from", str(teacher_run), "--dataset", "imagenet"]) == 1
    assert "imagenet" in capsys.readouterr().err


def test_plot_runs_and_logs(teacher_run: pathlib.Path, tmp_path: pathlib.Path, capsys) -> None:
    png = tmp_path / "curves.png"
    log = str(teacher_run / "metrics.jsonl")
    assert cli.main(["plot", str(teacher_run), log, "--labels", "a,b", "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {png}" in capsys.readouterr().out
    assert cli.main(["plot", str(teacher_run), "--labels", "a,b", "--out", str(png)]) == 1
    assert "--labels has 2 entries for 1 runs" in capsys.readouterr().err


def test_transfer_to_a_deeper_network(
    teacher_run: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "deeper"
    dst = '{"stage_depths": [2, 1], "stage_widths": [4, 8]}'
    args = ["transfer", "--from", str(teacher_run), "--to", "resnet20", "--arch-json", dst]
    assert cli.main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "destination: ResNet(depths=[2, 1], widths=[4, 8])" in printed
    error = float(printed.split("max relative output error ")[1].split()[0])
    assert error < 1e-5
    restored = checkpoint.restore(out)
    assert restored.model == jnet2net.ResNet(stage_depths=(2, 1), stage_widths=(4, 8))
    assert restored.metadata["transferred_from"].startswith(str(teacher_run))
    assert restored.metadata["approximations"] == []
    assert cli.main([*args, "--out", str(out)]) == 1
    assert "already holds a checkpoint" in capsys.readouterr().err
    no_arch = ["transfer", "--from", str(teacher_run), "--out", str(tmp_path / "none")]
    assert cli.main(no_arch) == 1
    assert "name an architecture: --to NAME (a preset) or --arch-json" in capsys.readouterr().err


def test_train_scale_down(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "learn_drop"
    scale = '{"check_every": 5, "warmup_steps": 0, "patience": 1, "flop_count": "off"}'
    args = ["train", "--arch", "resnet20", "--arch-json", TINY, "--epochs", "1", "--out", str(out)]
    assert cli.main([*args, *TRAIN, "--scale-down", "--scale-json", scale]) == 0
    assert "scale-down: cut " in capsys.readouterr().out
    restored = checkpoint.restore(out)
    assert restored.step == STEPS_PER_EPOCH and restored.opt_state is None
    assert restored.metadata["scale_down"]["check_every"] == 5
    assert cli.main([*args, "--scale-json", "{}", "--out", str(tmp_path / "x")]) == 1
    assert "--scale-json configures --scale-down" in capsys.readouterr().err
    bad = ["--scale-down", "--scale-json", '{"every": 3}', "--out", str(tmp_path / "y")]
    assert cli.main([*args[:-2], *bad]) == 1
    assert "unknown ScaleDownConfig fields ['every']" in capsys.readouterr().err
