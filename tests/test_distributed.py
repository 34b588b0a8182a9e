"""``train.fit`` and checkpoints under ``jax.distributed``: two processes on localhost.

Two Python processes with two simulated CPU devices each join through
``jax.distributed.initialize`` (gloo collectives over TCP) and train the tiny run of
``tests/distributed_run.py`` (a growth event at epoch 1, a checkpoint every epoch); this
process (four simulated devices, ``tests/conftest.py``) trains the same run and compares.

The two runs agree to float32 rounding, not bitwise: the gradient and BatchNorm reductions
over the four devices are one XLA all-reduce inside one process, but a local reduction and
a gloo reduction across the processes with two, so the float32 sums are taken in another
order (measured: 1 ulp after the first step, at most 3.6e-7 on parameters of size ~1 after
eight; the data are noise, see ``distributed_run.datasets``).
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import distributed_run as run

from jnet2net import checkpoint, distributed, train

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ROOT = pathlib.Path(__file__).resolve().parent.parent
WORKER = pathlib.Path(run.__file__).resolve()
#: Seconds both processes together may take (start-up, compiles, 8 tiny steps: about a
#: minute on 2 idle cores, several times that on a loaded machine).
TIMEOUT_S = 600
#: A ResNet with widths <= 8 for the command line.
TINY_ARCH = '{"stage_depths": [1, 1], "stage_widths": [4, 8]}'
#: float32 rounding after a few steps (see the module docstring).
RTOL, ATOL = 1e-5, 1e-6


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_processes(
    args_of: list[list[str]], *, devices: int, timeout_s: float, cwd: pathlib.Path
) -> list[str]:
    """Starts one process per argument list (``python ARGS``) with ``devices`` simulated
    CPU devices each and waits for all; returns their stdout.

    On a timeout, or when one fails, every process still running is killed and the test
    fails with each process's stderr.
    """
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
        "PYTHONUNBUFFERED": "1",  # what a killed process printed reaches its log
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    logs = [(cwd / f"stdout{i}.txt", cwd / f"stderr{i}.txt") for i in range(len(args_of))]
    procs = []
    for args, (out, err) in zip(args_of, logs, strict=True):
        with open(out, "w") as stdout, open(err, "w") as stderr:
            procs.append(
                subprocess.Popen(
                    [sys.executable, *args], env=env, cwd=cwd, stdout=stdout, stderr=stderr
                )
            )
    deadline = time.monotonic() + timeout_s
    failed = None
    try:
        while any(p.poll() is None for p in procs):
            if time.monotonic() > deadline:
                failed = f"timed out after {timeout_s} s"
                break
            if any(p.returncode not in (None, 0) for p in procs):
                failed = "a process failed"
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    if failed is None and any(p.returncode for p in procs):
        failed = "a process failed"
    if failed is not None:
        report = "\n".join(
            f"--- process {i} (exit {p.returncode}) stdout:\n{out.read_text()[-1000:]}\n"
            f"--- process {i} stderr:\n{err.read_text()[-4000:]}"
            for i, (p, (out, err)) in enumerate(zip(procs, logs, strict=True))
        )
        pytest.fail(f"{failed}\n{report}")
    return [out.read_text() for out, _ in logs]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """The run trained by two processes of two devices: their output directory."""
    out = tmp_path_factory.mktemp("two_processes")
    coordinator = f"127.0.0.1:{free_port()}"
    args = [
        [str(WORKER), "--coordinator", coordinator, "--num-processes", "2", "--process-id", str(i)]
        for i in range(2)
    ]
    args = [[*a, "--out", str(out)] for a in args]
    run_processes(args, devices=2, timeout_s=TIMEOUT_S, cwd=out)
    return out


@pytest.fixture(scope="module")
def one_process_run():
    """The same run in this process, on four devices."""
    assert jax.device_count() == 4 and jax.process_count() == 1
    return run.fit_run(None)


def load_params(path: pathlib.Path) -> dict[str, np.ndarray]:
    with np.load(path) as npz:
        return dict(npz)


def assert_params_close(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=RTOL, atol=ATOL, err_msg=name)


def test_both_processes_end_with_the_same_params(two_process_run):
    first = load_params(two_process_run / "params0.npz")
    second = load_params(two_process_run / "params1.npz")
    assert sorted(first) == sorted(second)
    for name in first:  # replicated: bitwise the same in every process
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)


def test_two_processes_train_what_one_process_trains(two_process_run, one_process_run):
    got = load_params(two_process_run / "params0.npz")
    want = run.flat_params(one_process_run.state.params)
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in want.items()}
    assert_params_close(got, want)
    history = json.loads((two_process_run / "history0.json").read_text())
    assert [r["step"] for r in history] == [r["step"] for r in one_process_run.history]
    losses = [r["train_loss"] for r in history if "train_loss" in r]
    want_losses = [r["train_loss"] for r in one_process_run.history if "train_loss" in r]
    np.testing.assert_allclose(losses, want_losses, rtol=RTOL)


def test_the_growth_event_is_exact_across_processes(two_process_run):
    records = train.read_jsonl(two_process_run / "run" / "metrics.jsonl")
    events = [r for r in records if r.get("event") == "grow"]
    assert len(events) == 1 and events[0]["step"] == 4
    assert events[0]["output_error"] < 1e-5
    assert events[0]["model"]["stage_widths"] == list(run.GROWN_WIDTHS)


def test_process_zero_alone_writes_the_log(two_process_run):
    records = train.read_jsonl(two_process_run / "run" / "metrics.jsonl")
    steps = [(r["step"], r.get("event")) for r in records]
    assert steps == [(4, None), (4, "grow"), (8, None)]  # once each: one writer
    history = json.loads((two_process_run / "history1.json").read_text())
    assert [r["step"] for r in history] == [4, 4, 8]  # process 1 returns the same records


@pytest.fixture(scope="module")
def one_process_scale_down():
    return run.scale_down_run()


def test_scale_down_across_processes_trains_what_one_process_trains(
    two_process_run, one_process_scale_down
):
    want = one_process_scale_down
    assert want.cut == 2  # stem and stage 0 frozen and cached (layer indices 0, 1)
    for process in (0, 1):
        got = json.loads((two_process_run / f"scaled{process}.json").read_text())
        assert got["cut"] == want.cut
        assert [r["step"] for r in got["history"]] == [r["step"] for r in want.history]
        assert [r.get("mode") for r in got["history"]] == [r.get("mode") for r in want.history]
        params = load_params(two_process_run / f"scaled{process}.npz")
        assert_params_close(params, run.flat_params(want.variables["params"]))


def test_streamed_evaluation_across_processes_equals_one_process(
    two_process_run, one_process_scale_down
):
    loss, accuracy = run.streamed_eval(one_process_scale_down.variables)
    for process in (0, 1):
        got = json.loads((two_process_run / f"scaled{process}.json").read_text())["eval"]
        assert got[1] == pytest.approx(accuracy, abs=1 / 20 + 1e-9)  # 20 examples
        assert got[0] == pytest.approx(loss, rel=1e-4)
    in_memory = train.evaluate(
        run.model(), one_process_scale_down.variables, run.datasets()[1].take(20), batch_size=8
    )
    assert (loss, accuracy) == pytest.approx(in_memory, rel=1e-6)


def test_a_one_process_run_resumes_the_two_process_checkpoint(two_process_run, one_process_run):
    run_dir = two_process_run / "run"
    assert checkpoint.all_steps(run_dir) == [4, run.STOP_STEP]
    train_set, test_set = run.datasets()
    cfg = run.config()
    spe = train.steps_per_epoch(len(train_set), cfg.batch_size)
    grown = run.model().clone(stage_widths=run.GROWN_WIDTHS)
    abstract = jax.eval_shape(
        lambda: train.create_train_state(
            grown, cfg, train_set.images[:1], key=jax.random.key(0), steps_per_epoch=spe
        )
    )
    state, restored = checkpoint.restore_train_state(run_dir, abstract, model=grown)
    assert restored.step == run.STOP_STEP
    assert_params_close(
        run.flat_params(state.params), run.flat_params(one_process_run.state.params)
    )

    def finish(start: train.TrainState) -> train.FitResult:
        return train.fit(grown, train_set, test_set, cfg, state=start, growth=run.growth())

    resumed, reference = finish(state), finish(one_process_run.state)
    assert int(resumed.state.step) == int(reference.state.step) == 3 * spe
    assert_params_close(
        run.flat_params(resumed.state.params), run.flat_params(reference.state.params)
    )


def test_one_process_helpers_are_no_ops(tmp_path):
    assert distributed.is_primary() and not distributed.is_initialized()
    assert distributed.primary_flag(False) is False
    distributed.barrier("nothing to wait for")
    info = distributed.process_info()
    assert (info.process_id, info.num_processes, info.global_devices) == (0, 1, 4)
    with distributed.primary_locked(tmp_path / "run") as path:
        assert (path / ".jnet2net.lock").exists()


def test_the_train_command_runs_as_two_processes(tmp_path):
    coordinator = f"127.0.0.1:{free_port()}"
    run_dir = tmp_path / "run"
    command = ["-m", "jnet2net", "train", "--arch", "resnet20", "--arch-json", TINY_ARCH]
    command += ["--dataset", "digits", "--train-subset", "64", "--batch-size", "16"]
    command += ["--epochs", "2", "--max-steps", "6", "--out", str(run_dir)]
    command += ["--coordinator", coordinator, "--num-processes", "2"]
    stdout = run_processes(
        [[*command, "--process-id", str(i)] for i in range(2)],
        devices=2,
        timeout_s=TIMEOUT_S,
        cwd=tmp_path,
    )
    assert "2 processes, 4 devices (2 in this process)" in stdout[0]
    assert f"checkpoint step 6, metrics {run_dir / 'metrics.jsonl'}" in stdout[0]
    # process 0 alone prints (gloo's own C++ lines, "[Gloo] Rank ... peer ranks ...", go to
    # every stdout, and its threads may break one of them in two under load)
    ours = [
        line for line in stdout[1].splitlines() if "[Gloo]" not in line and "peer rank" not in line
    ]
    assert ours == []
    assert checkpoint.all_steps(run_dir) == [4, 6]
    records = train.read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == [4, 6]
    assert rundir_unlocked(run_dir)


def rundir_unlocked(run_dir: pathlib.Path) -> bool:
    """Whether ``run_dir``'s lock can be taken (its holders have exited)."""
    from jnet2net import rundir

    with rundir.locked(run_dir):
        return True


@pytest.mark.parametrize(
    ("args", "env", "match"),
    [
        (("localhost", 2, 0), {}, "must be HOST:PORT"),
        (("127.0.0.1:99999", 2, 0), {}, "must be HOST:PORT"),
        (("127.0.0.1:1234", 0, 0), {}, "num_processes must be an int >= 1"),
        (("127.0.0.1:1234", 2, 2), {}, r"process_id 2 must be below num_processes 2"),
        ((None, None, None), {"JAX_NUM_PROCESSES": "two"}, r"\$JAX_NUM_PROCESSES='two'"),
    ],
)
def test_bad_distributed_settings_are_refused(monkeypatch, args, env, match):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=match):
        distributed.distributed_args(*args)


def test_distributed_settings_come_from_flags_over_the_environment(monkeypatch):
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAX_PROCESS_ID", "3")
    assert distributed.distributed_args() == ("10.0.0.1:1234", 4, 3)
    assert distributed.distributed_args("h:1", None, 0) == ("h:1", 4, 0)
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS")
    monkeypatch.delenv("JAX_NUM_PROCESSES")
    monkeypatch.delenv("JAX_PROCESS_ID")
    assert distributed.distributed_args() == (None, None, None)  # left to auto-detection


def test_the_harness_kills_hung_processes_and_reports_their_stderr(tmp_path):
    hang = ["-c", "import sys, time; print('waiting', file=sys.stderr, flush=True); time.sleep(60)"]
    start = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match=r"(?s)timed out after 2 s.*waiting"):
        run_processes([hang, hang], devices=1, timeout_s=2, cwd=tmp_path)
    assert time.monotonic() - start < 30


def test_the_harness_stops_all_when_one_process_fails(tmp_path):
    fail = ["-c", "import sys; sys.exit('bad input')"]
    hang = ["-c", "import time; time.sleep(60)"]
    with pytest.raises(pytest.fail.Exception, match=r"(?s)a process failed.*bad input"):
        run_processes([fail, hang], devices=1, timeout_s=50, cwd=tmp_path)
