"""How the command line speaks: one-line errors, help with defaults and examples, messages
in the flags' names, quiet dependencies."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys

import pytest

from jnet2net import cli, train
from jnet2net.cli_format import flag_names, in_flag_terms, quiet_third_party_logs, subparser
from jnet2net.train.records import nonfinite_loss_error

COMMANDS = ("demo", "train", "grow", "transfer", "eval", "plot")


def _error_of(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    assert cli.main(argv) == 2
    return capsys.readouterr().err


def _names(command: str) -> dict[str, str]:
    return flag_names(subparser(cli.build_parser(), command), cli.FLAG_ALIASES)


# --- argument errors and help -------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ["train", "--keep", "-1", "--out", "x"],
            "jnet2net train: error: argument --keep: must be >= 0, got -1 "
            "(see 'jnet2net train --help')",
        ),
        (
            ["grow", "--from", "a"],
            "jnet2net grow: error: the following arguments are required: --out "
            "(see 'jnet2net grow --help')",
        ),
        (
            ["plot", "r", "--nope"],
            "jnet2net plot: error: unrecognized arguments: --nope (see 'jnet2net plot --help')",
        ),
    ],
)
def test_argument_errors_are_one_line_without_the_usage_block(capsys, argv, line) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == line + "\n"


def test_every_option_has_help_and_every_command_an_example() -> None:
    parser = cli.build_parser()
    for command in COMMANDS:
        sub = subparser(parser, command)
        missing = [a.option_strings for a in sub._actions if a.option_strings and not a.help]
        assert not missing, (command, missing)
        assert f"jnet2net {command} " in (sub.epilog or ""), command


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("train", ["peak learning rate (default: 0.1)", "(default: 128)", "(default: cosine)"]),
        ("train", ["checkpoints to keep (0: all) (default: 2)", "--max-steps N"]),
        ("train", ["--eval-every-steps N", "examples:\n  jnet2net train --arch resnet20"]),
        ("grow", ["size of that noise (default: 0.1)", "(default: split)"]),
        ("transfer", ["(default: proportional)", "example:\n  jnet2net transfer --from"]),
        ("eval", ["dataset split to measure (default: test)"]),
    ],
)
def test_help_shows_defaults_and_examples(capsys, command, expected) -> None:
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    out = capsys.readouterr().out
    flat = re.sub(r"\s+", " ", out)
    for text in expected:
        assert (text if "\n" in text else re.sub(r"\s+", " ", text)) in (
            out if "\n" in text else flat
        ), text
    assert "default: None" not in flat and "TrainConfig" not in flat


# --- messages in the command's terms --------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "text", "expected"),
    [
        ("train", "TrainConfig.learning_rate must be > 0, got -1.0", "--lr must be > 0, got -1.0"),
        (
            "train",
            "Try a lower learning_rate (now 0.1) or warmup_epochs > 0 or compute_dtype=float32 "
            "(now bfloat16).",
            "Try a lower --lr (now 0.1) or --warmup-epochs > 0 or --dtype float32 (now bfloat16).",
        ),
        (
            "eval",
            "pass data_dir= one of: a dir (tfds.data_source('x', data_dir=DIR)). Or pass "
            "download=True",
            "pass --data-dir one of: a dir (tfds.data_source('x', data_dir=DIR)). Or pass "
            "--download",
        ),
        ("train", "batch_size=64 is larger than", "--batch-size 64 is larger than"),
        ("eval", "TrainConfig.learning_rate (no such flag)", "TrainConfig.learning_rate (no such"),
        ("train", "after 3 epochs, 'eval_batch_size'", "after 3 epochs, 'eval_batch_size'"),
        ("eval", "/tmp/data_dir/x and runs\\data_dir", "/tmp/data_dir/x and runs\\data_dir"),
        ("eval", "a data_dir.npz, no data_dir.", "a data_dir.npz, no --data-dir."),
        ("eval", "~/batch_size=3 or x/batch_size=3", "~/batch_size=3 or x/batch_size=3"),
    ],
)
def test_library_names_become_the_commands_flags(command, text, expected) -> None:
    assert in_flag_terms(text, _names(command)).startswith(expected)


def test_config_errors_name_the_flag_and_readable_bounds(tmp_path, capsys) -> None:
    out = str(tmp_path / "run")
    err = _error_of(["train", "--out", out, "--lr", "-1"], capsys)
    assert err == "jnet2net train: error: --lr must be > 0, got -1.0\n"
    err = _error_of(["train", "--out", out, "--momentum", "1"], capsys)
    assert err == "jnet2net train: error: --momentum must be >= 0 and < 1, got 1.0\n"
    err = _error_of(["train", "--out", out, "--warmup-epochs", "3", "--epochs", "2"], capsys)
    assert err == "jnet2net train: error: --warmup-epochs must be >= 0 and <= 2, got 3.0\n"


def test_a_missing_dataset_says_which_flags_prepare_it(tmp_path, capsys) -> None:
    err = _error_of(["train", "--out", str(tmp_path / "r"), "--dataset", "mnist"], capsys)
    assert "is not prepared under tfds' default data dir ($TFDS_DATA_DIR, else " in err
    assert "pass --data-dir one of:" in err and "Or pass --download to let" in err
    assert "data_dir=" not in err.replace("data_dir=DIR)", "") and "download=True" not in err


def test_divergence_is_one_line_in_flag_terms(tmp_path, capsys, monkeypatch) -> None:
    def diverge(model, train_set, test_set, config, **kwargs):
        raise nonfinite_loss_error(1, 0, 44, 3.0, config)

    monkeypatch.setattr(train, "fit", diverge)
    argv = ["train", "--arch", "resnet20", "--out", str(tmp_path / "r"), "--lr", "3"]
    err = _error_of([*argv, "--dtype", "bfloat16", "--warmup-epochs", "1"], capsys)
    assert err.startswith("jnet2net train: error: training diverged: the mean training loss")
    assert err.endswith("Try a lower --lr (now 3) or --dtype float32 (now bfloat16).\n"), (
        err
    )  # no type name, no advice for a warm-up that is set
    assert err.count("\n") == 1


def test_an_infinite_width_multiplier_is_a_value_error() -> None:
    for text in ("infx", "xinf", "nanx", "1e400x"):
        with pytest.raises(ValueError, match="positive finite number"):
            cli.parse_widths(text, (4, 8))


def test_plot_of_a_binary_file_names_it(tmp_path, capsys) -> None:
    image = tmp_path / "curves.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    err = _error_of(["plot", str(image), "--out", str(tmp_path / "c.png")], capsys)
    assert err == (
        f"jnet2net plot: error: {image} is not a JSONL metrics log: not UTF-8 text (byte 0); "
        "pass run directories or their metrics.jsonl\n"
    )


# --- quiet dependencies ---------------------------------------------------------------------


@pytest.mark.slow
def test_dependency_warnings_do_not_reach_the_terminal(tmp_path) -> None:
    """A tfds data dir with an empty version folder makes absl warn; the CLI keeps it quiet."""
    (tmp_path / "data" / "mnist" / "3.0.1").mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    argv = ["train", "--out", str(tmp_path / "run"), "--dataset", "mnist"]
    result = subprocess.run(
        [sys.executable, "-m", "jnet2net", *argv, "--data-dir", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("jnet2net train: error: dataset 'mnist'")
    assert "WARNING" not in result.stderr and "absl" not in result.stderr
    # matplotlib warns at import when it cannot write its config dir (an unwritable home).
    log = tmp_path / "run.jsonl"
    log.write_text('{"step": 1, "wall_s": 1.0, "test_acc": 0.5}\n')
    home = {"HOME": "/proc/nonexistent", "XDG_CONFIG_HOME": "", "MPLCONFIGDIR": ""}
    result = subprocess.run(
        [sys.executable, "-m", "jnet2net", "plot", str(log), "--out", str(tmp_path / "c.png")],
        capture_output=True,
        text=True,
        env={**env, **home},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_quiet_third_party_logs_raises_their_levels() -> None:
    names = ("absl", "matplotlib")
    before = {name: logging.getLogger(name).level for name in names}
    try:
        quiet_third_party_logs()
        assert all(logging.getLogger(n).getEffectiveLevel() >= logging.ERROR for n in names)
    finally:
        for name, level in before.items():
            logging.getLogger(name).setLevel(level)


def test_plot_has_a_title(tmp_path, capsys, monkeypatch) -> None:
    from matplotlib.figure import Figure

    titles = []
    draw = Figure.suptitle
    monkeypatch.setattr(Figure, "suptitle", lambda self, t, **kw: titles.append(t) or draw(self, t))
    for name in ("teacher", "student"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text(
            '{"step": 1, "wall_s": 1.0, "test_acc": 0.5}\n'
        )
    runs = [str(tmp_path / "teacher"), str(tmp_path / "student")]
    assert cli.main(["plot", *runs, "--out", str(tmp_path / "c.png")]) == 0
    assert cli.main(["plot", *runs, "--title", "Growth", "--out", str(tmp_path / "d.png")]) == 0
    assert titles == ["test accuracy: teacher vs. student", "Growth"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ('{"family": ', r"--to is not valid JSON"),
        ('{"family": "ResNet", "nope": 1}', r"--to: unknown ResNet fields \['nope'\]"),
        ('{"family": "X"}', r"--to: architecture config needs 'family'"),
    ],
)
def test_a_json_to_is_named_as_to(spec, message) -> None:
    with pytest.raises(ValueError, match=message):
        cli.model_from_args(None, spec, None, 10, arch_flag="--to", json_flag="--to")


# --- the run summary ----------------------------------------------------------------------


def test_run_summary_names_final_and_best_accuracy_and_compute():
    from jnet2net.cli_format import run_summary

    history = [
        {"epoch": 1, "step": 10, "test_acc": 0.50, "train_flops": 1e12, "train_s": 10.0},
        {"event": "grow", "epoch": 1.5, "step": 15, "output_error": 1e-7, "grow_s": 0.2},
        {"epoch": 2, "step": 20, "test_acc": 0.625, "train_flops": 3e12, "train_s": 25.0},
        {
            "epoch": 3,
            "step": 30,
            "test_acc": 0.6,
            "train_flops": 5.5e12,
            "train_s": 40.0,
            "compile_s": 3.5,
            "grow_s": 0.2,
            "wall_s": 48.0,
        },
    ]
    assert run_summary(history) == (
        "summary: 3 epochs (30 steps), test acc 0.600 at the end, best 0.625 at epoch 2; "
        "5.5e+12 training FLOPs, 40.0 s training, 3.5 s compiling, 0.2 s growing, "
        "48.0 s wall; 1 growth event"
    )
    assert run_summary([{"epoch": 1, "step": 4, "test_acc": None, "train_s": 1.0}]) == (
        "summary: 1 epochs (4 steps), no test set; 1.0 s training"
    )
    assert run_summary([]) == "summary: no steps trained"
