"""``jnet2net demo --quick``: teacher -> grow -> student vs. scratch, end to end."""

from __future__ import annotations

import json
import pathlib

import pytest

from jnet2net import checkpoint, cli, demo
from jnet2net.train import read_jsonl


def test_steps_to_accuracy() -> None:
    records = [
        {"step": 0, "test_acc": 0.1},
        {"step": 5, "test_acc": None},
        {"step": 9, "test_acc": 0.8},
    ]
    assert demo.steps_to_accuracy(records, 0.1) == 0
    assert demo.steps_to_accuracy(records, 0.5) == 9
    assert demo.steps_to_accuracy(records, 0.9) is None


def test_demo_quick_end_to_end(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "demo"
    (out / "student").mkdir(parents=True)
    (out / "student" / "stale.txt").write_text("from an earlier run")

    assert cli.main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())

    # The grown student computes the teacher's function, so it starts at its accuracy.
    assert results["relative_error"] < 1e-5
    assert results["target_accuracy"] == results["teacher"]["final_acc"]
    assert results["student"]["steps_to_target"] == 0
    assert results["student"]["params"] == results["scratch"]["params"]
    assert results["student"]["params"] > results["teacher"]["params"]
    for name in demo.RUNS:
        assert results[name]["wall_s"] > results[name]["train_s"] > 0
        records = read_jsonl(out / name / "metrics.jsonl")
        assert records[0]["step"] == 0 and len(records) == 2
        # One meaning of the seconds: the table's are the log's, which the plot draws.
        assert results[name]["wall_s"] == records[-1]["wall_s"]
        assert results[name]["train_s"] == records[-1]["train_s"]
        assert records[0]["train_s"] == 0.0 and records[0]["wall_s"] > 0.0
    student_log = read_jsonl(out / "student" / "metrics.jsonl")
    assert student_log[0]["test_acc"] == pytest.approx(results["teacher"]["final_acc"], abs=1e-9)

    assert not (out / "student" / "stale.txt").exists()
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert checkpoint.restore(out / "grown").model == checkpoint.restore(out / "student").model
    assert checkpoint.latest_step(out / "scratch") == checkpoint.latest_step(out / "student")
    demo._check_replaceable(out)  # a second demo may replace what this one wrote
    assert results["table"] in printed
    assert "steps to" in results["table"] and "max relative output error" in results["table"]


def test_demo_leaves_runs_it_did_not_write_alone(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture
) -> None:
    import jax
    import numpy as np

    import jnet2net

    model = jnet2net.ResNet(stage_depths=(1,), stage_widths=(4,))
    variables = model.init(jax.random.key(0), np.zeros((1, 8, 8, 1), np.float32))
    teacher = tmp_path / "teacher"
    checkpoint.save(teacher, model=model, variables=variables, step=3)
    assert cli.main(["demo", "--quick", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{teacher} holds a run that the demo did not write" in err
    assert checkpoint.all_steps(teacher) == [3]
    with pytest.raises(FileExistsError, match=r"scratch is a file in the way"):
        (tmp_path / "teacher").rename(tmp_path / "elsewhere")
        (tmp_path / "scratch").write_text("x")
        demo.run_demo(tmp_path, quick=True)
