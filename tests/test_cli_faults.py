"""The CLI under faults: damaged checkpoints and logs, busy or unwritable run directories,
finished runs, and networks too big to build. Tiny settings (digits, widths <= 8)."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jnet2net import checkpoint, cli, rundir
from jnet2net.train import read_jsonl

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

TINY = '{"stage_depths": [1, 1], "stage_widths": [4, 8]}'
TRAIN = ["--dataset", "digits", "--batch-size", "32", "--lr", "0.05", "--keep", "0"]
SPE = 1437 // 32  # steps per epoch


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A finished 2-epoch run of a tiny ResNet on digits (checkpoints at both epochs)."""
    run = tmp_path_factory.mktemp("faults") / "run"
    argv = ["train", "--arch", "resnet20", "--arch-json", TINY, "--epochs", "2", "--out", str(run)]
    assert cli.main(argv + TRAIN) == 0
    return run


def _copy(run: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    return copy


def _flip_bytes(step_dir: pathlib.Path) -> None:
    """XORs 16 bytes in the middle of every data file under ``state``.

    Which file a restore reads depends on the layout: a multi-device save keeps copies
    under ``state/d`` and ``ocdbt.process_0/d``, and small arrays sit inline in compressed
    b-tree nodes (whose own checksums fail); the raw-data case that only our checksums
    catch is in ``test_checkpoint.py``."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    for path in files:  # every one: which of them a restore reads varies
        data = bytearray(path.read_bytes())
        middle = len(data) // 2
        data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
        path.write_bytes(bytes(data))


def _one_line_error(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"jnet2net {argv[0]}: error: "), err
    assert len(err.strip().splitlines()) == 1, err
    return err


def _assert_bitwise(a, b) -> None:
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_eval_of_a_corrupted_checkpoint_fails_with_one_line(
    finished_run: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture
) -> None:
    run = _copy(finished_run, tmp_path)
    _flip_bytes(run / str(2 * SPE))
    err = _one_line_error(["eval", "--from", str(run), "--json"], capsys)
    assert f"checkpoint {run.resolve() / str(2 * SPE)} " in err and " is corrupt" in err
    assert capsys.readouterr().out == ""


def test_resume_falls_back_to_the_newest_intact_checkpoint(
    finished_run: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture
) -> None:
    """Killed while writing epoch 2: its checkpoint damaged, its log line cut short."""
    run = _copy(finished_run, tmp_path)
    _flip_bytes(run / str(2 * SPE))
    log = run / "metrics.jsonl"
    first, second = log.read_text().splitlines(keepends=True)
    log.write_text(first + second[:30])
    capsys.readouterr()
    assert cli.main(["train", "--out", str(run), "--resume"]) == 0
    err = capsys.readouterr().err
    assert f"{run.resolve() / str(2 * SPE)} " in err and " is corrupt" in err
    assert f"moved it to {2 * SPE}.damaged, resuming from step {SPE}" in err
    assert f"dropped the partial last line of {log}" in err
    assert (run / f"{2 * SPE}.damaged").is_dir()
    assert checkpoint.all_steps(run) == [SPE, 2 * SPE]
    _assert_bitwise(checkpoint.restore(run).variables, checkpoint.restore(finished_run).variables)
    assert [r["epoch"] for r in read_jsonl(log)] == [1, 2]


def test_resume_without_an_intact_checkpoint_fails(
    finished_run: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture
) -> None:
    run = _copy(finished_run, tmp_path)
    _flip_bytes(run / str(2 * SPE))
    (run / str(SPE) / "state" / "_METADATA").unlink()
    assert cli.main(["train", "--out", str(run), "--resume"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3  # one per damaged checkpoint, then the error
    assert "its 'state' item has no readable metadata" in lines[1]
    assert (
        f"holds no intact checkpoint to resume (damaged ones were moved to {2 * SPE}." in (lines[2])
    )


def test_a_corrupt_line_inside_the_log_is_an_error(
    finished_run: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture
) -> None:
    run = _copy(finished_run, tmp_path)
    shutil.rmtree(run / str(2 * SPE))
    log = run / "metrics.jsonl"
    first, second = log.read_text().splitlines(keepends=True)
    log.write_text(first + '{"epoch": 2, "st\n' + second)
    err = _one_line_error(["train", "--out", str(run), "--resume"], capsys)
    assert f"{log} line 2 is not a JSON object" in err
    assert log.read_text() == first + '{"epoch": 2, "st\n' + second  # nothing dropped


def test_resume_of_a_finished_run(
    finished_run: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture
) -> None:
    run = _copy(finished_run, tmp_path)
    err = _one_line_error(["train", "--out", str(run), "--resume", "--epochs", "1"], capsys)
    assert f"--epochs 1 ends at step {SPE}, but the run in {run} is already at step {2 * SPE}" in (
        err
    )
    assert cli.main(["train", "--out", str(run), "--resume"]) == 0  # the same command again
    assert "already finished its 2 epochs" in capsys.readouterr().out
    assert checkpoint.all_steps(run) == [SPE, 2 * SPE]


def test_a_run_directory_in_use_is_refused(
    finished_run: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture
) -> None:
    run = _copy(finished_run, tmp_path)
    with rundir.locked(run):  # another writer (here: a lock held by this process)
        err = _one_line_error(["train", "--out", str(run), "--resume", "--epochs", "3"], capsys)
    assert f"--out {run} is in use by another process (pid {rundir.holder_pid(run)})" in err
    assert checkpoint.all_steps(run) == [SPE, 2 * SPE]


def test_an_unwritable_out_fails_before_training(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "file").write_text("x")
    argv = ["train", "--arch", "resnet20", "--arch-json", TINY, "--epochs", "1", *TRAIN]
    err = _one_line_error([*argv, "--out", str(tmp_path / "file" / "run")], capsys)
    assert "file/run cannot be written: Not a directory" in err
    assert "epoch" not in capsys.readouterr().out


def test_growth_flags_are_checked_before_the_checkpoint(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture
) -> None:
    missing = str(tmp_path / "missing")
    for flag, value, message in [
        ("--widen", "xx2x", "a width multiplier looks like '1.5x'"),
        ("--deepen", "4,,4", "--deepen takes comma-separated ints"),
    ]:
        argv = ["grow", "--from", missing, flag, value, "--out", str(tmp_path / "g")]
        assert message in _one_line_error(argv, capsys)
    assert not (tmp_path / "g").exists()


@pytest.mark.parametrize(
    "argv",
    [
        [
            "transfer",
            "--to",
            '{"family": "ResNet", "stage_depths": [1000000000, 1], "stage_widths": [4, 8]}',
        ],
        ["grow", "--deepen", "1000000000,1"],
        ["grow", "--widen", "100000x"],
    ],
    ids=["transfer", "deepen", "widen"],
)
def test_networks_above_max_params_are_refused_quickly(
    finished_run: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture, argv
) -> None:
    out = tmp_path / "big"
    start = time.perf_counter()
    command = [*argv, "--from", str(finished_run), "--out", str(out)]
    err = _one_line_error(command, capsys)
    assert time.perf_counter() - start < 20
    assert "parameters (" in err and "more than --max-params 500,000,000" in err
    assert not out.exists()


@pytest.mark.parametrize(
    "flags",
    [
        [
            "--arch-json",
            '{"family": "ResNet", "stage_depths": [1000000000, 1], "stage_widths": [4, 8]}',
        ],
        ["--arch", "resnet20", "--arch-json", TINY, "--grow-at", "1:deepen=1000000000,1"],
    ],
    ids=["new", "grow-at"],
)
def test_train_refuses_networks_above_max_params_before_training(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture, flags
) -> None:
    start = time.perf_counter()
    argv = ["train", *flags, "--epochs", "2", *TRAIN, "--out", str(tmp_path / "big")]
    err = _one_line_error(argv, capsys)
    assert time.perf_counter() - start < 20
    assert "more than --max-params 500,000,000" in err
    assert "epoch 1/2" not in capsys.readouterr().out


def test_max_params_can_be_raised_and_lowered(
    finished_run: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["grow", "--from", str(finished_run), "--widen", "2x", "--max-params", "100"]
    err = _one_line_error([*argv, "--out", str(tmp_path / "g")], capsys)
    assert "more than --max-params 100;" in err
    argv[-1] = "1e6"
    assert cli.main([*argv, "--out", str(tmp_path / "g")]) == 0


def test_a_damaged_checkpoint_gives_one_line_from_a_fresh_process(
    finished_run: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """No TensorStore dump, absl warning or "Event loop is closed" tracebacks on stderr."""
    run = _copy(finished_run, tmp_path)
    _flip_bytes(run / str(2 * SPE))
    (run / str(SPE) / "state" / "_METADATA").unlink()
    for step in (SPE, 2 * SPE):
        argv = ["eval", "--from", str(run), "--step", str(step)]
        result = subprocess.run(
            [sys.executable, "-m", "jnet2net", *argv], capture_output=True, text=True
        )
        assert result.returncode == 2
        assert result.stderr.startswith("jnet2net eval: error: checkpoint "), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
