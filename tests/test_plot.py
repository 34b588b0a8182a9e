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
