"""Tests of jnet2net.plot: learning curves from JSONL run logs."""

import json

import numpy as np
import pytest

from jnet2net import plot


def write_run(path, accuracies, wall=None, extra=()):
    wall = wall or [10.0 * (i + 1) for i in range(len(accuracies))]
    with open(path, "w") as f:
        for line in extra:
            f.write(json.dumps(line) + "\n")
        for i, (acc, seconds) in enumerate(zip(accuracies, wall, strict=True)):
            f.write(
                json.dumps(
                    {"epoch": i + 1, "step": 5 * (i + 1), "wall_s": seconds, "test_acc": acc}
                )
                + "\n"
            )
    return path


def test_plot_runs_writes_a_png(tmp_path):
    a = write_run(tmp_path / "scratch.jsonl", [0.2, 0.5, 0.7])
    b = write_run(tmp_path / "grown.jsonl", [0.6, 0.8])
    out = plot.plot_runs([a, b], tmp_path / "figs" / "curves.png", labels=["scratch", "grown"])
    assert out == tmp_path / "figs" / "curves.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(out).shape
    assert width > height > 100


def test_read_curve_skips_records_without_accuracy_and_chains_resumed_clocks(tmp_path):
    path = write_run(
        tmp_path / "run.jsonl",
        [0.1, 0.3, 0.4],
        wall=[10.0, 20.0, 12.0],  # the third record comes from a resumed process
        extra=[{"epoch": 0, "step": 0, "wall_s": 0.0, "test_acc": None}],
    )
    curve = plot.read_curve(path)
    assert curve.label == "run"
    np.testing.assert_array_equal(curve.step, [5, 10, 15])
    np.testing.assert_allclose(curve.wall_s, [10.0, 20.0, 32.0])
    np.testing.assert_allclose(curve.test_acc, [0.1, 0.3, 0.4])


def test_plot_runs_rejects_bad_inputs(tmp_path):
    run = write_run(tmp_path / "a.jsonl", [0.5])
    with pytest.raises(ValueError, match="needs at least one run log"):
        plot.plot_runs([], tmp_path / "x.png")
    with pytest.raises(ValueError, match="got 2 labels for 1 runs"):
        plot.plot_runs([run], tmp_path / "x.png", labels=["a", "b"])
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"epoch": 1, "step": 3, "wall_s": 1.0, "test_acc": None}) + "\n")
    with pytest.raises(ValueError, match=r"empty\.jsonl holds no epoch record with 'step'"):
        plot.plot_runs([run, empty], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_plot_runs_names_bad_lines_and_adds_the_suffix(tmp_path):
    run = write_run(tmp_path / "a.jsonl", [0.5, 0.6])
    with open(run, "a") as f:
        f.write('{"step": 15, "wall_s"\n')
    with pytest.raises(ValueError, match=r"a\.jsonl line 3 is not JSON \(Expecting"):
        plot.plot_runs([run], tmp_path / "x.png")
    with open(run, "w") as f:
        f.write("[1, 2]\n")
    with pytest.raises(ValueError, match=r"a\.jsonl line 1 is not a JSON object"):
        plot.read_curve(run)
    good = write_run(tmp_path / "b.jsonl", [0.5])
    assert plot.plot_runs([good], tmp_path / "curves") == tmp_path / "curves.png"
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "figs").mkdir()
    with pytest.raises(ValueError, match=r"figs is a directory; name the image, e\.g\. "):
        plot.plot_runs([good], tmp_path / "figs")


# --- x axes: steps, epochs, FLOPs, seconds; growth events ---------------------------------


def write_log(path, records):
    with open(path, "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return path


def epoch_record(epoch, acc, **extra):
    return {
        "epoch": epoch,
        "step": 10 * epoch,
        "wall_s": 5.0 * epoch + 3.0,
        "train_s": 4.0 * epoch,
        "train_flops": 1e9 * epoch,
        "test_acc": acc,
        **extra,
    }


GROW = {
    "event": "grow",
    "epoch": 2,
    "step": 20,
    "model": {"name": "ResNet"},
    "output_error": 1e-7,
    "train_s": 8.0,
    "train_flops": 2e9,
}


@pytest.fixture
def grown_log(tmp_path):
    records = [epoch_record(1, 0.3), epoch_record(2, 0.5), GROW, epoch_record(3, 0.7)]
    return write_log(tmp_path / "grown.jsonl", records)


def test_read_curve_keeps_every_x_axis_and_the_growth_events(grown_log):
    curve = plot.read_curve(grown_log)
    np.testing.assert_array_equal(curve.epoch, [1, 2, 3])
    np.testing.assert_allclose(curve.train_flops, [1e9, 2e9, 3e9])
    np.testing.assert_allclose(curve.train_s, [4.0, 8.0, 12.0])
    np.testing.assert_allclose(curve.test_acc, [0.3, 0.5, 0.7])  # the event is no point
    assert len(curve.events) == 1 and curve.events[0]["output_error"] == 1e-7
    assert curve.source == str(grown_log)
    expected = {
        "steps": [10, 20, 30],
        "epochs": [1, 2, 3],
        "flops": [1e9, 2e9, 3e9],
        "seconds": [4.0, 8.0, 12.0],  # train_s: training steps only
    }
    for x, values in expected.items():
        np.testing.assert_allclose(plot.x_values(curve, x), values)
    events = {"steps": [20], "epochs": [2], "flops": [2e9], "seconds": [8.0]}
    for x, values in events.items():
        np.testing.assert_allclose(plot.event_x(curve, x), values)


def test_old_logs_plot_seconds_from_wall_time_and_refuse_flops(tmp_path):
    path = write_run(tmp_path / "old.jsonl", [0.1, 0.3, 0.4], wall=[10.0, 20.0, 12.0])
    curve = plot.read_curve(path)
    assert curve.train_flops is None and curve.train_s is None and curve.events == ()
    np.testing.assert_allclose(plot.x_values(curve, "seconds"), [10.0, 20.0, 32.0])
    np.testing.assert_array_equal(plot.x_values(curve, "epochs"), [1, 2, 3])
    with pytest.raises(ValueError, match=r"old\.jsonl: an epoch record has no 'train_flops'"):
        plot.x_values(curve, "flops")
    with pytest.raises(ValueError, match=r"old\.jsonl: an epoch record has no 'train_flops'"):
        plot.plot_runs([path], tmp_path / "x.png", x="flops")
    assert not (tmp_path / "x.png").exists()
    # Some records without train_s (a log continued by a newer version): wall time.
    mixed = write_log(tmp_path / "mixed.jsonl", [{**epoch_record(1, 0.2), "train_s": None}])
    mixed_curve = plot.read_curve(mixed)
    np.testing.assert_allclose(plot.x_values(mixed_curve, "seconds"), [8.0])
    assert plot.event_x(mixed_curve, "seconds").size == 0


def test_a_resumed_flag_restarts_the_wall_clock(tmp_path):
    records = [
        epoch_record(1, 0.1, wall_s=10.0),
        epoch_record(2, 0.2, wall_s=20.0),
        epoch_record(3, 0.3, wall_s=25.0, resumed=True),  # a fast restart: no decrease
        epoch_record(4, 0.4, wall_s=30.0),
        epoch_record(5, 0.5, wall_s=4.0),  # another restart, seen by the decrease
    ]
    curve = plot.read_curve(write_log(tmp_path / "run.jsonl", records))
    np.testing.assert_allclose(curve.wall_s, [10.0, 20.0, 45.0, 50.0, 54.0])


def test_a_step_that_goes_back_restarts_the_wall_clock(tmp_path):
    """A second run appended to the log (its clock already past the first run's total)."""
    records = [
        epoch_record(1, 0.1, wall_s=10.0),
        epoch_record(2, 0.2, wall_s=20.0),
        epoch_record(1, 0.15, wall_s=21.0),  # a restart from step 0, slower to its epoch 1
        epoch_record(2, 0.25, wall_s=30.0),
    ]
    curve = plot.read_curve(write_log(tmp_path / "run.jsonl", records))
    np.testing.assert_allclose(curve.wall_s, [10.0, 20.0, 41.0, 50.0])


def test_plot_runs_on_chosen_x_axes(grown_log, tmp_path):
    old = write_run(tmp_path / "old.jsonl", [0.2, 0.4])
    out = plot.plot_runs([grown_log, old], tmp_path / "by.png", x=("epochs", "seconds"))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    one = plot.plot_runs([grown_log], tmp_path / "flops.png", x="flops")
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(one).shape
    wide_height, wide_width, _ = matplotlib.image.imread(out).shape
    assert wide_height == height and wide_width > 1.5 * width
    with pytest.raises(ValueError, match=r"x must be among \('steps', 'epochs', 'flops', 'sec"):
        plot.plot_runs([grown_log], tmp_path / "x.png", x="time")
    with pytest.raises(ValueError, match="x names no axis"):
        plot.plot_runs([grown_log], tmp_path / "x.png", x=())


def test_cli_plot_takes_x_axes(grown_log, tmp_path, capsys):
    from jnet2net import cli

    png = tmp_path / "c.png"
    assert cli.main(["plot", str(grown_log), "--x", "flops,epochs", "--out", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert cli.main(["plot", str(grown_log), "--x", "seconds", "--out", str(png)]) == 0
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["plot", str(grown_log), "--x", "steps,time"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --x: unknown axis 'time'; choose from steps, epochs, flops, seconds" in err
    old = write_run(tmp_path / "old.jsonl", [0.5])
    assert cli.main(["plot", str(old), "--x", "flops", "--out", str(png)]) == 2
    assert f"{old}: an epoch record has no 'train_flops'" in capsys.readouterr().err
