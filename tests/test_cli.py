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
        (["train"], ["--resolution", "--train-subset", "--subset-seed"]),
        (["transfer"], ["--from", "--to", "--arch-json", "--depth-map", "--fill", "--out"]),
        (["grow"], ["--from", "--widen", "--deepen", "--noise", "--seed", "--out"]),
        (["eval"], ["--from", "--dataset", "--data-dir", "--resolution", "--train-subset"]),
        (["plot"], ["RUN", "--out", "--labels", "--x"]),
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
        (["train", "--out", "x", "--resolution", "0"], "argument --resolution: must be >= 1"),
        (["eval", "--from", "a", "--train-subset", "-5"], "argument --train-subset: must be >="),
        (["train", "--out", "x", "--subset-seed", "-1"], "argument --subset-seed: must be >= 0"),
        (["train", "--out", "x", "--save-every", "0"], "argument --save-every: must be >= 1"),
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
        ("-2x", r"a width multiplier must be a positive finite number, got '-2x'"),
        ("twox", r"a width multiplier looks like '1.5x', got 'twox'"),
        ("xx2x", r"a width multiplier looks like '1.5x', got 'xx2x'"),
        ("4,,8", r"--widths takes comma-separated ints, got '4,,8'"),
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
    moments = [np.asarray(x) for x in jax.tree.leaves(restored.opt_state) if np.ndim(x) > 0]
    assert moments and any(np.abs(m).sum() > 0 for m in moments)  # trained momentum, kept


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


def test_step_intervals_and_max_steps_resume_to_the_same_run(
    teacher_run: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture
) -> None:
    """A run stopped by --max-steps mid-epoch, checkpointed by --eval-every-steps, resumes
    to the uninterrupted run's state bitwise."""
    run = tmp_path / "run"
    args = ["train", "--arch", "resnet20", "--arch-json", TINY, "--epochs", "2", "--out", str(run)]
    assert cli.main([*args, *TRAIN, "--eval-every-steps", "20", "--max-steps", "50"]) == 0
    assert checkpoint.all_steps(run) == [20, 40, 44, 50]
    out = capsys.readouterr().out
    assert f"epoch {20 / STEPS_PER_EPOCH:.4g}/2 step 20 loss " in out
    assert cli.main(["train", "--out", str(run), "--resume"]) == 0
    resumed, straight = checkpoint.restore(run), checkpoint.restore(teacher_run)
    assert resumed.step == 2 * STEPS_PER_EPOCH
    _assert_bitwise(resumed.variables, straight.variables)
    _assert_bitwise(resumed.opt_state, straight.opt_state)
    steps = [r["step"] for r in read_jsonl(run / "metrics.jsonl")]
    assert steps == [20, 40, 44, 50, 60, 80, 88]


def test_resume_into_an_empty_out_starts_the_run(
    teacher_run: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """One command for every restart of a preemptible job: the first start is a fresh run."""
    run = tmp_path / "run"
    argv = ["train", "--arch", "resnet20", "--arch-json", TINY, "--epochs", "2", "--out", str(run)]
    assert cli.main([*argv, "--resume", *TRAIN]) == 0
    _assert_bitwise(checkpoint.restore(run).variables, checkpoint.restore(teacher_run).variables)


def test_train_refusals(teacher_run: pathlib.Path, capsys: pytest.CaptureFixture) -> None:
    base = ["train", "--dataset", "digits", "--out", str(teacher_run)]
    assert cli.main([*base, "--arch", "resnet20"]) == 2
    assert (
        "already holds a run (checkpoint steps [44, 88]); pass --resume" in capsys.readouterr().err
    )
    assert cli.main([*base, "--resume", "--lr", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "--lr 0.1 differs from the resumed run's --lr 0.05; a resumed run keeps" in err
    assert cli.main([*base, "--resume", "--arch", "resnet20"]) == 2
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

    assert cli.main([*args, "--out", str(grown_dir)]) == 2
    assert "already holds a checkpoint at step 0" in capsys.readouterr().err

    student_dir = tmp_path / "student"
    train = ["train", "--from", str(grown_dir), "--epochs", "1", "--out", str(student_dir)]
    assert cli.main(train + TRAIN) == 0
    student = checkpoint.restore(student_dir)
    assert student.model == grown.model and student.step == STEPS_PER_EPOCH
    assert student.metadata["started_from"] == str(grown.path)
    # The grown network's head start is the log's first record, at step 0.
    first = read_jsonl(student_dir / "metrics.jsonl")[0]
    taught = read_jsonl(teacher_run / "metrics.jsonl")[-1]["test_acc"]
    assert (first["epoch"], first["step"]) == (0, 0)
    assert first["test_acc"] == pytest.approx(taught, abs=0.02)
    assert "epoch 0/1 step 0 test_loss " in capsys.readouterr().out
    assert checkpoint.all_steps(student_dir) == [STEPS_PER_EPOCH]


def test_grow_with_fresh_units_preserves_the_function(
    teacher_run: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture
) -> None:
    grown_dir = tmp_path / "grown_fresh"
    args = ["grow", "--from", str(teacher_run), "--widen", "2x", "--noise", "fresh"]
    assert cli.main([*args, "--out", str(grown_dir)]) == 0
    assert "function preserved" in capsys.readouterr().out
    teacher, grown = checkpoint.restore(teacher_run), checkpoint.restore(grown_dir)
    xs = jax.random.normal(jax.random.key(1), (2, 8, 8, 8, 1))
    jnet2net.assert_function_preserved(
        teacher.model, teacher.variables, grown.model, grown.variables, xs
    )
    # fresh units: the old units keep their incoming weights, the new ones differ from them
    pairs = zip(
        jax.tree_util.tree_leaves(teacher.variables["params"]),
        jax.tree_util.tree_leaves(grown.variables["params"]),
        strict=True,
    )
    old, new = next(  # the first conv: same input channels, twice the output channels
        (a, b) for a, b in pairs if a.ndim == 4 and b.shape == (*a.shape[:-1], 2 * a.shape[-1])
    )
    width = old.shape[-1]
    np.testing.assert_array_equal(new[..., :width], old)
    assert not np.allclose(new[..., width:], old)
    # transfer maps replicas only: 'fresh' is not one of its choices
    with pytest.raises(SystemExit):
        cli.main(["transfer", "--from", str(teacher_run), "--noise", "fresh", "--out", "x"])
    assert "invalid choice: 'fresh'" in capsys.readouterr().err


def test_grow_errors(teacher_run: pathlib.Path, tmp_path: pathlib.Path, capsys) -> None:
    out = str(tmp_path / "grown")
    assert cli.main(["grow", "--from", str(teacher_run), "--out", out]) == 2
    assert "nothing to grow: pass --widen and/or --deepen" in capsys.readouterr().err
    assert cli.main(["grow", "--from", str(teacher_run), "--widen", "2,4", "--out", out]) == 2
    assert "widen cannot shrink stage0_stream" in capsys.readouterr().err
    missing = tmp_path / "missing"
    assert cli.main(["grow", "--from", str(missing), "--widen", "2x", "--out", out]) == 2
    assert f"{missing} does not exist" in capsys.readouterr().err


def test_eval_matches_the_training_log(teacher_run: pathlib.Path, capsys) -> None:
    assert cli.main(["eval", "--from", str(teacher_run), "--dataset", "digits", "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)  # stdout is the JSON object alone
    assert captured.out.count("\n") == 1 and "[eval took" in captured.err
    last = read_jsonl(teacher_run / "metrics.jsonl")[-1]
    assert result["step"] == last["step"] and result["examples"] == 360
    assert result["accuracy"] == pytest.approx(last["test_acc"], abs=1e-9)
    assert result["loss"] == pytest.approx(last["test_loss"], rel=1e-5)

    assert cli.main(["eval", "--from", str(teacher_run), "--step", "44"]) == 0
    assert "(step 44) on digits/test:\n  loss: " in capsys.readouterr().out
    assert cli.main(["eval", "--from", str(teacher_run), "--dataset", "imagenet"]) == 2
    assert "imagenet" in capsys.readouterr().err


def test_train_eval_and_resume_on_a_reduced_protocol(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture
) -> None:
    """Digits at 4x4 from a stratified 500-example subset; eval and resume reuse the flags."""
    run = tmp_path / "run"
    argv = ["train", "--arch", "resnet20", "--arch-json", TINY, "--out", str(run), *TRAIN]
    data_flags = ["--resolution", "4", "--train-subset", "500", "--subset-seed", "1"]
    assert cli.main([*argv, "--epochs", "1", *data_flags]) == 0
    steps = 500 // 32
    assert checkpoint.all_steps(run) == [steps]
    info = checkpoint.checkpoint_info(run)
    assert info.input_shape == (1, 4, 4, 1)
    expected = {"dataset": "digits", "resolution": 4, "train_subset": 500, "subset_seed": 1}
    assert expected.items() <= info.metadata.items()

    capsys.readouterr()
    assert cli.main(["eval", "--from", str(run), "--json"]) == 0  # flags from the checkpoint
    result = json.loads(capsys.readouterr().out.splitlines()[0])
    last = read_jsonl(run / "metrics.jsonl")[-1]
    assert result["examples"] == 360
    assert result["accuracy"] == pytest.approx(last["test_acc"], abs=1e-9)
    assert result["loss"] == pytest.approx(last["test_loss"], rel=1e-5)
    assert cli.main(["eval", "--from", str(run), "--split", "train", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["examples"] == 500

    err = _error_of(["train", "--out", str(run), "--resume", "--resolution", "8"], capsys)
    assert "--resolution 8 differs from the resumed run's --resolution 4" in err
    err = _error_of(["train", "--out", str(run), "--resume", "--subset-seed", "0"], capsys)
    assert "--subset-seed 0 differs from the resumed run's --subset-seed 1" in err
    assert cli.main(["train", "--out", str(run), "--resume", "--epochs", "2"]) == 0
    assert checkpoint.all_steps(run) == [steps, 2 * steps]
    assert expected.items() <= checkpoint.checkpoint_info(run).metadata.items()

    grown = tmp_path / "grown"  # a grown checkpoint keeps its teacher's data flags
    assert cli.main(["grow", "--from", str(run), "--widen", "2x", "--out", str(grown)]) == 0
    assert expected.items() <= checkpoint.checkpoint_info(grown).metadata.items()
    capsys.readouterr()
    assert cli.main(["eval", "--from", str(grown), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["examples"] == 360


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--resolution", "3"], "resolution 3 does not divide the image height 8"),
        (["--train-subset", "5"], "--train-subset 5 is smaller than the number of classes 10"),
    ],
)
def test_reduced_protocol_data_errors(
    flags: list[str], message: str, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    assert message in _error_of(["train", "--arch", "resnet20", "--out", str(run), *flags], capsys)
    assert checkpoint.all_steps(run) == []


def test_plot_runs_and_logs(teacher_run: pathlib.Path, tmp_path: pathlib.Path, capsys) -> None:
    png = tmp_path / "curves.png"
    log = str(teacher_run / "metrics.jsonl")
    assert cli.main(["plot", str(teacher_run), log, "--labels", "a,b", "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {png}" in capsys.readouterr().out
    assert cli.main(["plot", str(teacher_run), "--labels", "a,b", "--out", str(png)]) == 2
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
    assert cli.main([*args, "--out", str(out)]) == 2
    assert "already holds a checkpoint" in capsys.readouterr().err
    no_arch = ["transfer", "--from", str(teacher_run), "--out", str(tmp_path / "none")]
    assert cli.main(no_arch) == 2
    assert "name an architecture: --to NAME (a preset) or --arch-json" in capsys.readouterr().err


# --- user errors: one line, exit 2, never a traceback ------------------------------------


@pytest.fixture(scope="module")
def untrained(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A checkpoint of an untrained tiny ResNet for 8x8x1 digits (saved, never trained)."""
    run = tmp_path_factory.mktemp("untrained") / "run"
    model = jnet2net.ResNet(stage_depths=(1, 1), stage_widths=(4, 8))
    variables = model.init(jax.random.key(0), np.zeros((1, 8, 8, 1), np.float32))
    metadata = {"dataset": "digits"}
    checkpoint.save(
        run, model=model, variables=variables, step=0, metadata=metadata, input_shape=(8, 8, 1)
    )
    return run


def _pack(folder: pathlib.Path, name: str, shape: tuple[int, ...], classes: int) -> pathlib.Path:
    """A raw npz pack ``folder/name.npz`` of 8 random images per split."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    splits = {}
    for split in ("train", "test"):
        splits[f"{split}_images"] = rng.integers(0, 255, (8, *shape), dtype=np.uint8)
        splits[f"{split}_labels"] = np.arange(8) % classes
    names = np.array([str(i) for i in range(classes)])
    np.savez(folder / f"{name}.npz", class_names=names, **splits)
    return folder


def _error_of(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """Runs the CLI and returns its one-line error (exit status 2 checked)."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"jnet2net {argv[0]}: error: "), err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("command", ["grow", "transfer"])
def test_out_that_is_a_file_or_a_step_directory_is_refused(
    untrained: pathlib.Path, tmp_path: pathlib.Path, capsys, command
) -> None:
    size = ["--widen", "2x"] if command == "grow" else ["--to", "resnet20", "--arch-json", TINY]
    base = [command, "--from", str(untrained), *size, "--out"]
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    err = _error_of([*base, str(a_file)], capsys)
    assert f"--out {a_file} exists and is not a directory" in err
    assert a_file.read_text() == "keep me"
    # the teacher's own step directory: saving there would write into the teacher
    step_dir = untrained / "0"
    before = sorted(p.name for p in step_dir.iterdir())
    err = _error_of([*base, str(step_dir)], capsys)
    assert f"--out {step_dir} is a directory that holds no run" in err
    assert sorted(p.name for p in step_dir.iterdir()) == before
    assert checkpoint.all_steps(step_dir) == []


def test_train_out_into_a_foreign_directory_is_refused(tmp_path: pathlib.Path, capsys) -> None:
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "main.py").write_text("print()")
    (folder / ".hidden").write_text("")
    argv = ["train", "--arch", "resnet20", "--arch-json", TINY, "--out", str(folder)]
    err = _error_of(argv, capsys)
    assert "holds no run (it has main.py)" in err
    assert sorted(p.name for p in folder.iterdir()) == [".hidden", "main.py"]


def test_save_into_a_file_is_refused_before_any_work(
    untrained: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    a_file = tmp_path / "f"
    a_file.write_text("x")
    restored = checkpoint.restore(untrained)
    with pytest.raises(FileExistsError, match=r"exists and is not a directory"):
        checkpoint.save(a_file, model=restored.model, variables=restored.variables, step=0)
    with pytest.raises(FileExistsError, match=r"exists and is not a directory"):
        checkpoint.grow_checkpoint(
            untrained, a_file, key=jax.random.key(0), deepen={"depths": (2, 1)}
        )
    assert a_file.read_text() == "x"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("inf", "argument --width-mult: must be a positive finite number, got 'inf'"),
        ("0", "argument --width-mult: must be a positive finite number, got '0'"),
        ("-1", "argument --width-mult: must be a positive finite number, got '-1'"),
    ],
)
def test_width_mult_is_checked_by_the_parser(capsys, value, message) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(
            ["transfer", "--from", "a", "--to", "resnet20", "--width-mult", value, "--out", "b"]
        )
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("value", ["nan", "-0.5", "0"])
def test_rtol_is_checked_by_the_parser(capsys, value) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["grow", "--from", "a", "--widen", "2x", "--rtol", value, "--out", "b"])
    assert exit_info.value.code == 2
    assert f"argument --rtol: must be a positive finite number, got '{value}'" in (
        capsys.readouterr().err
    )


def test_hidden_sizes_of_a_network_without_a_dense_head() -> None:
    resnet = jnet2net.ResNet(stage_depths=(1, 1), stage_widths=(4, 8))
    with pytest.raises(ValueError, match=r"--widen-hidden applies to VGG hidden layers; "):
        cli.growth_kwargs(resnet, widen_hidden="4")


def test_default_plot_labels(tmp_path: pathlib.Path, monkeypatch) -> None:
    run = tmp_path / "teacher"
    run.mkdir()
    monkeypatch.chdir(run)
    assert cli.default_labels([".", str(run) + "/", "../x/log.jsonl"]) == [
        "teacher",
        "teacher",
        "log",
    ]


def test_transfer_to_a_json_spec(untrained: pathlib.Path, tmp_path: pathlib.Path, capsys) -> None:
    spec = '{"family": "ResNet", "stage_depths": [2, 1], "stage_widths": [4, 8]}'
    out = tmp_path / "deeper"
    assert cli.main(["transfer", "--from", str(untrained), "--to", spec, "--out", str(out)]) == 0
    assert checkpoint.restore(out).model == jnet2net.ResNet(
        stage_depths=(2, 1), stage_widths=(4, 8)
    )
    assert checkpoint.checkpoint_info(out).input_shape == (1, 8, 8, 1)
    assert "[transfer took" in capsys.readouterr().err  # timing goes to stderr
    argv = ["transfer", "--from", str(untrained), "--to", spec, "--arch-json", "{}"]
    err = _error_of([*argv, "--out", str(tmp_path / "x")], capsys)
    assert "--to is a JSON spec: pass the architecture once" in err
    vgg = '{"family": "VGG", "stage_depths": [1, 1], "stage_widths": [4, 8]}'
    argv = ["transfer", "--from", str(untrained), "--to", vgg, "--out", str(tmp_path / "v")]
    assert "a ResNet and a VGG have no layers in common" in _error_of(argv, capsys)
    assert not (tmp_path / "v").exists()
    for bad, message in (('{"family": ', "--to is not valid JSON"), ("[1]", "--to must be a")):
        argv = ["transfer", "--from", str(untrained), "--to", bad, "--out", str(tmp_path / "b")]
        err = _error_of(argv, capsys)
        assert message in err and "--arch-json" not in err


def test_arch_json_unknown_fields_are_named() -> None:
    with pytest.raises(
        ValueError, match=r"--arch-json: unknown ResNet fields \['stage_widthz'\]; "
    ):
        cli.model_from_args("resnet20", '{"stage_widthz": [4, 8]}', None, 10)
    with pytest.raises(ValueError, match=r"--arch-json: unknown VGG fields \['block'\]; known: "):
        cli.model_from_args("vgg11", '{"block": "basic"}', None, 10)


@pytest.mark.parametrize(
    ("name", "shape", "classes", "message"),
    [
        (
            "mnist",
            (12, 12, 1),
            10,
            r"images of shape (12, 12, 1), the checkpoint's network (8, 8, 1)",
        ),
        (
            "cifar10",
            (8, 8, 3),
            10,
            r"images of shape (8, 8, 3), the checkpoint's network (8, 8, 1)",
        ),
        ("mnist", (8, 8, 1), 12, r"12 classes, the checkpoint's network 10"),
    ],
)
def test_eval_and_train_from_on_a_dataset_that_does_not_fit(
    untrained: pathlib.Path, tmp_path: pathlib.Path, capsys, name, shape, classes, message
) -> None:
    folder = _pack(tmp_path / "packs", name, shape, classes)
    data = ["--dataset", name, "--data-dir", str(folder)]
    err = _error_of(["eval", "--from", str(untrained), *data], capsys)
    assert message in err and str(untrained) in err
    out = tmp_path / "run"
    err = _error_of(["train", "--from", str(untrained), *data, "--out", str(out)], capsys)
    assert message in err
    assert checkpoint.all_steps(out) == []


def test_eval_of_a_checkpoint_that_does_not_know_its_image_size(
    untrained: pathlib.Path, tmp_path: pathlib.Path, capsys
) -> None:
    """Saved without input_shape, a ResNet checkpoint records 32x32: only channels count."""
    restored = checkpoint.restore(untrained)
    run = tmp_path / "run"
    checkpoint.save(run, model=restored.model, variables=restored.variables, step=0)
    assert checkpoint.checkpoint_info(run).input_shape == (1, 32, 32, 1)
    assert not checkpoint.checkpoint_info(run).input_shape_given
    assert checkpoint.checkpoint_info(untrained).input_shape_given
    assert cli.main(["eval", "--from", str(run), "--dataset", "digits", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["examples"] == 360
    rgb = _pack(tmp_path / "packs", "cifar10", (8, 8, 3), 10)
    err = _error_of(
        ["eval", "--from", str(run), "--dataset", "cifar10", "--data-dir", str(rgb)], capsys
    )
    assert "images of shape (8, 8, 3), the checkpoint's network (32, 32, 1)" in err


def test_plot_errors(tmp_path: pathlib.Path, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1, "wall_s": 1.0, "test_acc": 0.5}\n{nope\n')
    err = _error_of(["plot", str(bad), "--out", str(tmp_path / "c.png")], capsys)
    assert f"{bad} line 2 is not JSON" in err
    good = tmp_path / "good.jsonl"
    good.write_text('{"step": 1, "wall_s": 1.0, "test_acc": 0.5}\n')
    err = _error_of(["plot", str(good), "--out", str(tmp_path)], capsys)
    assert f"--out {tmp_path} is a directory; name the image, e.g. {tmp_path / 'curves.png'}" in err
    assert cli.main(["plot", str(good), "--out", str(tmp_path / "curves")]) == 0
    assert f"wrote {tmp_path / 'curves.png'}" in capsys.readouterr().out
    assert (tmp_path / "curves.png").is_file()


def test_demo_out_that_cannot_be_written(tmp_path: pathlib.Path, capsys) -> None:
    a_file = tmp_path / "f"
    a_file.write_text("x")
    err = _error_of(["demo", "--quick", "--out", str(a_file / "demo")], capsys)
    assert str(a_file) in err


def test_unexpected_errors_and_interrupts_print_one_line(monkeypatch, capsys) -> None:
    def crash(args):
        raise RuntimeError("boom")

    def interrupt(args):
        raise KeyboardInterrupt

    args = ["eval", "--from", "x"]
    monkeypatch.setattr(cli.evaluate, "cmd_eval", crash)  # the modules the parser reads
    monkeypatch.setattr(cli.plot, "cmd_plot", interrupt)
    err = _error_of(args, capsys)
    assert "RuntimeError: boom (JNET2NET_TRACEBACK=1 shows the traceback)" in err
    monkeypatch.setenv("JNET2NET_TRACEBACK", "1")
    with pytest.raises(RuntimeError, match="boom"):
        cli.main(args)
    monkeypatch.delenv("JNET2NET_TRACEBACK")
    assert cli.main(["plot", "x"]) == 130
    assert capsys.readouterr().err == "jnet2net plot: interrupted\n"


def test_interrupted_train_resumes_to_the_same_run(
    teacher_run: pathlib.Path, tmp_path: pathlib.Path, capsys, monkeypatch
) -> None:
    """Ctrl-C after the first epoch's checkpoint; --resume then equals the straight run."""
    real_saver = checkpoint.epoch_saver

    def interrupting_saver(*args, **kwargs):
        save = real_saver(*args, **kwargs)

        def save_then_interrupt(state, record):
            save(state, record)
            raise KeyboardInterrupt

        return save_then_interrupt

    run = tmp_path / "run"
    argv = ["train", "--arch", "resnet20", "--arch-json", TINY, "--epochs", "2", "--out", str(run)]
    monkeypatch.setattr(checkpoint, "epoch_saver", interrupting_saver)
    assert cli.main(argv + TRAIN) == 130
    err = capsys.readouterr().err
    assert f"resume with: jnet2net train --out {run} --resume" in err
    monkeypatch.setattr(checkpoint, "epoch_saver", real_saver)
    assert checkpoint.all_steps(run) == [STEPS_PER_EPOCH]
    assert cli.main(["train", "--out", str(run), "--resume"]) == 0
    resumed, straight = checkpoint.restore(run), checkpoint.restore(teacher_run)
    _assert_bitwise(resumed.variables, straight.variables)
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2]


def test_save_every_writes_every_nth_epoch_and_the_last(
    teacher_run: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """--save-every 2 over 3 epochs: checkpoints after epochs 2 and 3 only, and the final
    one equals the run that saved every epoch."""
    run = tmp_path / "run"
    argv = ["train", "--arch", "resnet20", "--arch-json", TINY, "--epochs", "3", "--out", str(run)]
    assert cli.main(argv + TRAIN + ["--save-every", "2"]) == 0
    assert checkpoint.all_steps(run) == [2 * STEPS_PER_EPOCH, 3 * STEPS_PER_EPOCH]
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3]
    two_epochs = checkpoint.restore(run, step=2 * STEPS_PER_EPOCH).variables
    assert jax.tree.structure(two_epochs) == jax.tree.structure(
        checkpoint.restore(teacher_run).variables
    )


@pytest.mark.parametrize(
    ("step", "epoch", "every", "signal", "due"),
    [
        (0, 0, 1, False, False),  # the starting network's evaluation
        (10, 1, 1, False, True),
        (10, 1, 2, False, False),
        (20, 2, 2, False, True),
        (30, 3, 2, False, True),  # the last epoch
        (10, 1, 5, True, True),  # a pending SIGTERM: save before stopping
        (15, 1.5, 1, False, True),  # an eval_every_steps record
        (15, 1.5, 2, False, False),
    ],
)
def test_checkpoint_due(step, epoch, every, signal, due) -> None:
    from jnet2net.cli.train import checkpoint_due

    record = {"step": step, "epoch": epoch}
    assert checkpoint_due(record, epochs=3, save_every=every, signal_pending=signal) is due


# --- growth schedules ---------------------------------------------------------------------

GROW_TRAIN = ["--dataset", "digits", "--train-subset", "320", "--batch-size", "32", "--keep", "0"]
GROW_STEPS = 10  # 320 digits in batches of 32


@pytest.fixture(scope="module")
def grown_run(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """Three epochs of a tiny ResNet that widens after epoch 1 and deepens after epoch 2."""
    run = tmp_path_factory.mktemp("cli") / "grown"
    args = ["train", "--arch", "resnet20", "--arch-json", TINY, "--epochs", "3", "--out", str(run)]
    grow = ["--grow-at", "2:deepen=+1", "--grow-at", "1:widen=2x,noise=fresh"]  # explicit
    assert cli.main(args + GROW_TRAIN + grow) == 0
    return run


def test_grow_at_grows_the_run_and_its_checkpoints(grown_run: pathlib.Path) -> None:
    final = checkpoint.restore(grown_run)
    assert final.model.stage_widths == (8, 16) and final.model.stage_depths == (2, 2)
    first = checkpoint.restore(grown_run, step=GROW_STEPS)
    assert first.model.stage_widths == (4, 8)  # saved before the event at its step
    second = checkpoint.restore(grown_run, step=2 * GROW_STEPS)
    assert second.model.stage_widths == (8, 16) and second.model.stage_depths == (1, 1)
    records = read_jsonl(grown_run / "metrics.jsonl")
    events = [r for r in records if r.get("event") == "grow"]
    assert [e["step"] for e in events] == [GROW_STEPS, 2 * GROW_STEPS]
    assert all(e["output_error"] < 1e-5 for e in events)
    assert events[0]["grow"] == {"at_epoch": 1.0, "widths": [8, 16]}  # fresh: the default
    assert final.metadata["growth"][1] == {"at_epoch": 2.0, "depths": [2, 2]}


@pytest.mark.parametrize("kept", [1, 2])
def test_resume_across_growth_events_is_bitwise(
    grown_run: pathlib.Path, tmp_path: pathlib.Path, kept: int
) -> None:
    """Stopped after epoch ``kept`` (the event at that step still to come), then resumed."""
    run = tmp_path / "run"
    shutil.copytree(grown_run, run)
    for epoch in range(kept + 1, 4):
        shutil.rmtree(run / str(epoch * GROW_STEPS))
    assert cli.main(["train", "--out", str(run), "--resume", *GROW_TRAIN[:4]]) == 0
    resumed, straight = checkpoint.restore(run), checkpoint.restore(grown_run)
    assert resumed.model == straight.model
    _assert_bitwise(resumed.variables, straight.variables)
    _assert_bitwise(resumed.opt_state, straight.opt_state)
    steps = [(r.get("event"), r["step"]) for r in read_jsonl(run / "metrics.jsonl")]
    assert steps == [(None, 10), ("grow", 10), (None, 20), ("grow", 20), (None, 30)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("3", "--grow-at takes EPOCH:KEY=VALUE"),
        ("x:widen=2x", "'x' is not an epoch number"),
        ("0:widen=2x", "needs an epoch > 0"),
        ("1:grow=2x", "unknown key 'grow'"),
        ("1:noise=fresh", "changes nothing"),
        ("1:widen=2x,widen=3x", "'widen' given twice"),
        ("1:widen=", "'widen' has no value"),
        ("1:widen=xx2x", "a width multiplier looks like '1.5x'"),
        ("1:deepen=4,,4", "got '1:deepen=4,,4'"),
        ("1:widen=0.5x", "cannot shrink"),
        ("1:widen=2x,noise_scale=big", "noise_scale= takes a number"),
        ("1:widen=2x,moments=keep", "moments must be one of"),
        ("5:widen=2x", "outside the run's steps"),
    ],
)
def test_bad_grow_at_gets_a_one_line_error(
    capsys: pytest.CaptureFixture, tmp_path: pathlib.Path, text: str, message: str
) -> None:
    args = ["train", "--arch", "resnet20", "--arch-json", TINY, "--epochs", "3"]
    code = cli.main([*args, "--out", str(tmp_path / "r"), *GROW_TRAIN, "--grow-at", text])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


SCALE_FORCED = (
    '{"target_compute": 1.0, "not_before": 0.3, "min_spacing": 0.0, "ramp": 0.0, '
    '"check_every": 2, "ready_ratio": 1e9, "patience": 1, "bn_batches": 2, "max_stages": 1}'
)


def test_a_scale_down_run_saves_each_epoch_and_resumes_bitwise(
    teacher_run: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture
) -> None:
    """Stopped mid-epoch after its freeze, then resumed: the uninterrupted run's state."""
    args = ["train", "--arch", "resnet20", "--arch-json", TINY, "--epochs", "3", *GROW_TRAIN]
    scale = ["--scale-down", "--scale-json", SCALE_FORCED, "--augment", "none"]
    whole, run = tmp_path / "whole", tmp_path / "run"
    assert cli.main([*args, *scale, "--out", str(whole)]) == 0
    assert "scale-down: cut 2 " in capsys.readouterr().out
    straight = checkpoint.restore(whole)
    assert checkpoint.all_steps(whole) == [10, 20, 30] and straight.opt_state is not None
    assert straight.metadata["scale_down"]["check_every"] == 2
    assert cli.main([*args, *scale, "--out", str(run), "--max-steps", "15"]) == 0
    assert checkpoint.all_steps(run) == [10, 15]
    capsys.readouterr()
    other = ["--scale-down", "--scale-json", '{"check_every": 3}']
    assert cli.main(["train", "--out", str(run), "--resume", *other]) == 2
    assert "a resumed scale-down run keeps its own config" in capsys.readouterr().err
    assert cli.main(["train", "--out", str(run), "--resume"]) == 0
    assert "resuming " in capsys.readouterr().out
    resumed = checkpoint.restore(run)
    assert resumed.step == straight.step == 30
    _assert_bitwise(resumed.variables, straight.variables)
    _assert_bitwise(resumed.opt_state, straight.opt_state)
    records = read_jsonl(run / "metrics.jsonl")
    assert [(r.get("event"), r["step"]) for r in records if "summary" not in r] == [
        (None, 10),
        ("freeze", 10),
        (None, 15),
        (None, 20),
        (None, 30),
    ]
    plain = tmp_path / "plain"
    shutil.copytree(teacher_run, plain)
    again = ["train", "--out", str(plain), "--resume", "--epochs", "3", "--scale-down"]
    assert cli.main(again) == 2
    assert "trains the whole network; resume it without --scale-down" in capsys.readouterr().err
    tiny = ["train", "--arch", "resnet20", "--arch-json", TINY, "--epochs", "1", *GROW_TRAIN]
    assert cli.main([*tiny, "--scale-json", "{}", "--out", str(tmp_path / "x")]) == 2
    assert "--scale-json configures --scale-down" in capsys.readouterr().err
    bad = ["--scale-down", "--scale-json", '{"every": 3}', "--out", str(tmp_path / "y")]
    assert cli.main([*tiny, *bad]) == 2
    assert "unknown ScaleDownConfig fields ['every']" in capsys.readouterr().err


# --- ViT checkpoints ----------------------------------------------------------------------


def test_width_mult_of_a_vit_scales_embed_heads_and_mlp() -> None:
    vit = cli.model_from_args("vit_tiny", '{"embed_dim": 8, "num_heads": 2, "mlp_dim": 6}', 2, 10)
    assert (vit.embed_dim, vit.num_heads, vit.mlp_dim, vit.head_dim) == (16, 4, 12, None)
    odd = cli.scaled_model(vit, 0.3)  # 5 units, 1 head of the old width 4
    assert (odd.embed_dim, odd.num_heads, odd.mlp_dim, odd.resolved_head_dim()) == (5, 1, 4, 4)


def test_transfer_of_a_vit_checkpoint(tmp_path: pathlib.Path, capsys) -> None:
    src = tmp_path / "vit"
    model = jnet2net.ViT(patch_size=4, embed_dim=8, depth=1, num_heads=2, mlp_dim=8)
    variables = model.init(jax.random.key(0), np.zeros((1, 8, 8, 1), np.float32))
    checkpoint.save(src, model=model, variables=variables, step=0, input_shape=(8, 8, 1))
    sizes = '{"embed_dim": 8, "depth": 2, "num_heads": 2, "mlp_dim": 8}'
    argv = ["transfer", "--from", str(src), "--to", "vit_tiny", "--arch-json", sizes]
    out = tmp_path / "big"
    assert cli.main([*argv, "--width-mult", "2", "--report", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "params/block1/mlp_out/kernel" in printed and "function-preserving: yes" in printed
    error = float(printed.split("max relative output error ")[1].split()[0])
    assert error < 1e-5
    big = model.clone(embed_dim=16, depth=2, num_heads=4, mlp_dim=16)
    assert checkpoint.restore(out).model == big
    argv = ["transfer", "--from", str(src), "--to", "resnet20", "--out", str(tmp_path / "r")]
    assert "a ViT and a ResNet have no layers in common" in _error_of(argv, capsys)
    bad = json.dumps({**jnet2net.model_config(model), "patch_size": 3})
    argv = ["transfer", "--from", str(src), "--to", bad, "--out", str(tmp_path / "p")]
    assert "h and w multiples of 3, got shape (1, 8, 8, 1)" in _error_of(argv, capsys)


def test_the_noise_choices_match_the_engine_s() -> None:
    """The CLI keeps its own tuples (no jax import to parse flags); they must not drift."""
    from jnet2net.engine import widening

    assert set(cli.GROW_NOISES) == set(widening.NOISES)
    assert set(cli.NOISES) == set(widening.REPLICA_NOISES)
