"""Training records as TensorBoard scalars (jnet2net.train.tensorboard)."""

import pytest
from helpers import read_scalars  # tests/ is on sys.path

from jnet2net.train import tensorboard

pytest.importorskip("tensorboardX")


def test_records_become_scalars_at_their_steps(tmp_path):
    records = [
        {"epoch": 0, "step": 0, "test_loss": 2.3, "test_acc": 0.1, "lr": 0.0},
        {"epoch": 1, "step": 10, "train_loss": 1.5, "test_acc": 0.5, "images_per_s": None},
        {"event": "grow", "epoch": 1.5, "step": 15, "output_error": 1e-7, "model": {"w": 1}},
        {"epoch": 2, "step": 20, "train_loss": 1.0, "test_acc": 0.75, "resumed": True},
    ]
    with tensorboard.TensorBoardWriter(tmp_path) as writer:
        for record in records:
            writer.write(record)
    scalars = read_scalars(tmp_path)
    assert scalars["test/accuracy"] == [(0, pytest.approx(0.1)), (10, 0.5), (20, 0.75)]  # float32
    assert scalars["train/loss"] == [(10, 1.5), (20, 1.0)]
    assert scalars["test/loss"] == [(0, pytest.approx(2.3))]
    assert scalars["grow/output_error"] == [(15, pytest.approx(1e-7))]
    assert scalars["epoch"] == [(0, 0.0), (10, 1.0), (15, 1.5), (20, 2.0)]
    assert not {"step", "resumed", "model", "images_per_s"} & set(scalars)


def test_tags_group_train_test_and_compute():
    assert tensorboard.tag("train_acc") == "train/accuracy"
    assert tensorboard.tag("test_loss") == "test/loss"
    assert tensorboard.tag("train_flops") == "compute/train_flops"
    assert tensorboard.tag("compile_s") == "compute/compile_s"
    assert tensorboard.tag("lr") == "lr"


def test_a_missing_tensorboardx_says_how_to_install_it(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_tensorboardx(name, *args, **kwargs):
        if name.startswith("tensorboardX"):
            raise ImportError("No module named 'tensorboardX'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboardx)
    with pytest.raises(ImportError, match=r"pip install 'jnet2net\[tensorboard\]'"):
        tensorboard.TensorBoardWriter(tmp_path)
