"""Run directory locks: one writer at a time, never a stale lock."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from jnet2net import rundir

HOLD = textwrap.dedent(
    """
    import sys, time
    from jnet2net import rundir
    with rundir.locked(sys.argv[1]):
        print("held", flush=True)
        time.sleep(60)
    """
)


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path: pathlib.Path) -> None:
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(rundir.RunDirectoryLocked) as info, rundir.locked(run):
            pass
        assert f"--out {run} is in use by another process (pid {holder.pid})" in str(info.value)
    finally:
        holder.kill()
        holder.wait()
    with rundir.locked(run):  # the kernel released the killed holder's lock: not stale
        assert rundir.holder_pid(run) == os.getpid()


def test_a_lock_is_taken_in_process_too_and_released(tmp_path: pathlib.Path) -> None:
    with (
        rundir.locked(tmp_path),
        pytest.raises(rundir.RunDirectoryLocked, match=rf"^DIR .*\(pid {os.getpid()}\)"),
        rundir.locked(tmp_path, flag="DIR"),
    ):
        pass
    with rundir.locked(tmp_path):
        pass


def test_a_created_directory_left_empty_is_removed(tmp_path: pathlib.Path) -> None:
    with pytest.raises(RuntimeError), rundir.locked(tmp_path / "new"):
        raise RuntimeError("failed before writing")
    assert not (tmp_path / "new").exists()
    with rundir.locked(tmp_path / "kept"):
        (tmp_path / "kept" / "metrics.jsonl").write_text("{}\n")
    assert (tmp_path / "kept" / "metrics.jsonl").exists()


def test_unwritable_directories_fail_with_one_line(tmp_path: pathlib.Path) -> None:
    (tmp_path / "file").write_text("x")
    expected = r"^--out .*file/run cannot be written: Not a directory$"
    with pytest.raises(OSError, match=expected), rundir.locked(tmp_path / "file" / "run"):
        pass


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_directory_fails(tmp_path: pathlib.Path) -> None:
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    expected = "cannot be written: Permission denied"
    with pytest.raises(OSError, match=expected), rundir.locked(tmp_path / "ro"):
        pass
