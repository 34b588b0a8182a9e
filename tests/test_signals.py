"""SIGINT and SIGTERM: deferred to safe points, one line with the resume command, no crash."""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from jnet2net import checkpoint, signals

TINY = '{"stage_depths": [1, 1], "stage_widths": [4, 8]}'
#: Two steps of 32 digits per epoch, more epochs than any test waits for.
TRAIN = [
    "train",
    "--arch",
    "resnet20",
    "--arch-json",
    TINY,
    "--dataset",
    "digits",
    "--train-subset",
    "64",
    "--batch-size",
    "32",
    "--epochs",
    "50",
    "--keep",
    "0",
]
STEPS_PER_EPOCH = 2
#: Runs the CLI with a signal to itself shortly after each checkpoint save starts.
SIGNAL_DURING_SAVE = """
import os, signal, sys, threading
from jnet2net import cli
from jnet2net.checkpoint import io  # where epoch_saver finds save_train_state
real = io.save_train_state
def save(*args, **kwargs):
    threading.Timer(0.01, os.kill, (os.getpid(), signal.{sig})).start()
    return real(*args, **kwargs)
io.save_train_state = save
sys.exit(cli.main(sys.argv[1:]))
"""


# --- the module ---------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_deferred_signal_is_raised_at_the_check(sig: int) -> None:
    before = {s: signal.getsignal(s) for s in signals.SIGNALS}
    with signals.deferred_signals():
        signals.check_interrupt()  # nothing yet
        os.kill(os.getpid(), sig)
        time.sleep(0.01)  # the handler ran: nothing raised
        assert signals.pending_signal() == sig
        with pytest.raises(signals.Interrupted) as caught:
            signals.check_interrupt()
    assert caught.value.status == 128 + sig and caught.value.name == signal.Signals(sig).name
    assert isinstance(caught.value, KeyboardInterrupt)
    assert signals.pending_signal() is None
    signals.check_interrupt()  # forgotten after the block
    assert {s: signal.getsignal(s) for s in signals.SIGNALS} == before


def test_a_second_signal_exits_at_once() -> None:
    code = (
        "import os, signal, sys, time\n"
        "from jnet2net import signals\n"
        "with signals.deferred_signals(lambda s: print('again', s, flush=True)):\n"
        "    os.kill(os.getpid(), signal.SIGTERM); time.sleep(0.01)\n"
        "    os.kill(os.getpid(), signal.SIGINT); time.sleep(5)\n"
        "print('not reached')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 130
    assert done.stdout == f"again {int(signal.SIGINT)}\n"


def test_the_cli_starts_without_importing_jax() -> None:
    """The handlers are installed before the seconds that importing JAX takes."""
    code = "import sys, jnet2net.cli; print(sorted(m for m in ('jax', 'flax') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout == "[]\n", done.stderr


def test_the_lazy_package_exports_every_public_name() -> None:
    import jnet2net

    for name in jnet2net.__all__:
        assert getattr(jnet2net, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = jnet2net.nope


# --- the CLI, in subprocesses -------------------------------------------------------------


def _handlers_installed(pid: int) -> bool:
    """Whether process ``pid`` catches SIGTERM (Python alone does not)."""
    try:
        status = pathlib.Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt"))
    return bool(int(mask, 16) >> (signal.SIGTERM - 1) & 1)


def _signalled_run(out: pathlib.Path, sig: int, moment: str) -> tuple[int, str, str]:
    """Runs a tiny ``train`` into ``out``, sends ``sig`` at ``moment``; ``(rc, out, err)``.

    Moments: ``startup`` (as soon as the handlers are installed, while JAX is imported),
    ``compile`` (when the network is announced: initialisation and step compiles follow),
    ``training`` (after the first epoch's line: its checkpoint is written), ``save`` (a
    thread of the process itself, 10 ms into the first checkpoint save).
    """
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "JAX_PLATFORMS": "cpu",
        "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
        "XLA_FLAGS": "",  # one CPU device: the quickest compiles
    }
    argv = [*TRAIN, "--out", str(out)]
    if moment == "save":
        code = SIGNAL_DURING_SAVE.format(sig=signal.Signals(sig).name)
        command = [sys.executable, "-c", code, *argv]
    else:
        command = [sys.executable, "-m", "jnet2net", *argv]
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        if moment == "startup":
            while not _handlers_installed(proc.pid) and proc.poll() is None:
                time.sleep(0.005)
            proc.send_signal(sig)
        elif moment in ("compile", "training"):
            marker = "new network:" if moment == "compile" else "epoch 1/"
            lines = []
            for line in proc.stdout:
                lines.append(line)
                if line.startswith(marker):
                    proc.send_signal(sig)
                    break
            stdout, stderr = proc.communicate(timeout=120)
            return proc.returncode, "".join(lines) + stdout, stderr
        stdout, stderr = proc.communicate(timeout=120)
        return proc.returncode, stdout, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


#: ``(signal, moment, a checkpoint is written first)``: both signals before the first
#: checkpoint and after it (each run costs a JAX start, some seconds of CPU).
CASES = [
    (signal.SIGINT, "startup", False),
    (signal.SIGTERM, "startup", False),
    (signal.SIGINT, "compile", False),
    (signal.SIGTERM, "training", True),
    (signal.SIGINT, "save", True),
]


def test_sigint_and_sigterm_at_every_moment_of_train_stop_cleanly(tmp_path: pathlib.Path) -> None:
    """No crash, 130 for SIGINT and 143 for SIGTERM, and one line with the command that
    continues the run: ``--resume`` after a checkpoint, the same command before one."""
    with concurrent.futures.ThreadPoolExecutor(len(CASES)) as pool:
        runs = [
            pool.submit(_signalled_run, tmp_path / f"{i}", sig, moment)
            for i, (sig, moment, _) in enumerate(CASES)
        ]
        results = [run.result() for run in runs]
    for i, ((sig, moment, saved), (rc, stdout, stderr)) in enumerate(
        zip(CASES, results, strict=True)
    ):
        name, out = signal.Signals(sig).name, tmp_path / f"{i}"
        where = f"{name} at {moment}: rc {rc}\n{stdout[-500:]}\n{stderr[-2000:]}"
        assert "Fatal Python error" not in stderr and "Traceback" not in stderr, where
        assert rc == 128 + sig, where
        lines = [line for line in stderr.splitlines() if "interrupted" in line]
        assert len(lines) == 1, where
        steps = checkpoint.all_steps(out)
        if saved:
            assert steps and steps[0] == STEPS_PER_EPOCH, where
            assert lines[0] == (
                f"jnet2net train: interrupted by {name} after the checkpoint at step "
                f"{steps[-1]}; resume with: jnet2net train --out {out} --resume"
            )
        else:
            assert not steps, where
            assert lines[0].startswith(
                f"jnet2net train: interrupted by {name} before the first checkpoint; start "
                "again with: jnet2net train --arch resnet20 --arch-json '{"
            ), where
            assert lines[0].endswith(f"--keep 0 --out {out}"), where
