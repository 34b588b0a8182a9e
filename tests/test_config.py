"""Configs as data: the run's config tree, overrides read by each field's type, JSON round
trips, the files in configs/, and ``jnet2net train --config``."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import typing
from typing import Literal

import pytest

from jnet2net import checkpoint, cli, train
from jnet2net.config import (
    DataConfig,
    ModelSpec,
    RunConfig,
    apply_overrides,
    config_keys,
    from_dict,
    load_config,
    parse_value,
    to_dict,
)
from jnet2net.scale_down import ScaleDownConfig

CONFIGS = sorted((pathlib.Path(__file__).parents[1] / "configs").glob("*.py"))
TINY = {"stage_depths": [1, 1], "stage_widths": [4, 8]}


def _full_config() -> RunConfig:
    return RunConfig(
        model=ModelSpec(arch="resnet20", fields={"stage_widths": [4, 8, 16]}, width_mult=0.5),
        data=DataConfig(dataset="cifar10", resolution=16, train_subset=100),
        train=train.TrainConfig(epochs=4, warmup_epochs=1, progress=False, max_steps=9),
        growth=(train.Grow(2, widths=(8, 16, 32), noise="split"), train.Grow(3, depths=(4, 4, 4))),
        scale_down=ScaleDownConfig(mode="cache", max_stages=1),
    )


# --- values by type -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "hint", "expected"),
    [
        ("30", int, 30),
        ("0.5", float, 0.5),
        ("1e-3", float, 1e-3),
        ("true", bool, True),
        ("No", bool, False),
        ("runs/x", str, "runs/x"),
        ("adamw", Literal["sgd", "adamw"], "adamw"),
        ("4,8,16", tuple[int, ...], (4, 8, 16)),
        ("[4, 8]", tuple[int, ...], (4, 8)),
        ("none", int | None, None),
        ("7", int | None, 7),
        ('{"a": [1, 2]}', dict, {"a": [1, 2]}),
        ('{"mode": "cache"}', ScaleDownConfig, ScaleDownConfig(mode="cache")),
    ],
)
def test_values_are_read_by_their_fields_type(text, hint, expected) -> None:
    value = parse_value(text, hint, "k")
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("train.epochs=3.5", "train.epochs='3.5': expected an int"),
        ("train.learning_rate=fast", "train.learning_rate='fast': expected a number"),
        ("train.learning_rate=inf", "train.learning_rate='inf': expected a number"),
        ("train.nesterov=maybe", "train.nesterov='maybe': expected a bool"),
        ("train.optimizer=adam", "train.optimizer='adam': expected one of sgd, adamw"),
        ("train.max_steps=many", "train.max_steps='many': expected an int or none"),
        ("data.resolution=big", "data.resolution='big': expected an int or none"),
        ("growth=3:widen=2x", "growth='3:widen=2x': expected a JSON list of Grow objects"),
        ("scale_down.mode=fast", "scale_down.mode='fast': expected one of nograd, cache"),
        ("train.epoch=3", "unknown config key 'train.epoch': train has no field 'epoch'"),
        ("trian.epochs=3", "unknown config key 'trian.epochs': the config has no field 'trian'"),
        ("train.epochs.x=3", "unknown config key 'train.epochs.x': train.epochs is an int"),
        ("epochs", "an override is KEY=VALUE, e.g. train.epochs=30; got 'epochs'"),
    ],
)
def test_bad_overrides_are_one_line_errors_naming_key_and_type(item, message) -> None:
    with pytest.raises(ValueError) as info:
        apply_overrides(RunConfig(), [item])
    text = str(info.value)
    assert text.startswith(message) and "\n" not in text, text


def test_unknown_keys_list_the_known_fields() -> None:
    with pytest.raises(ValueError, match=r"its fields: 'epochs', 'batch_size', "):
        apply_overrides(RunConfig(), ["train.epoch=3"])


def test_overrides_of_one_dataclass_apply_together_and_copy() -> None:
    config = RunConfig(train=train.TrainConfig(epochs=10, warmup_epochs=5))
    new = apply_overrides(
        config,
        [
            "train.epochs=2",  # alone it would fail: warm-up 5 > 2 epochs
            "train.warmup_epochs=1",
            "model.arch=resnet20",
            "model.fields.stage_widths=4,8",
            "model.fields.stage_depths=[1, 1]",
            "model.width_mult=none",
            "scale_down.mode=cache",  # from None: the defaults, then the field
            "data.dataset=digits",
            'growth=[{"at_epoch": 1, "widths": [8, 16]}]',
        ],
    )
    assert (new.train.epochs, new.train.warmup_epochs) == (2, 1.0)
    assert new.model == ModelSpec("resnet20", {"stage_widths": (4, 8), "stage_depths": (1, 1)})
    assert new.scale_down == ScaleDownConfig(mode="cache")
    assert new.growth == (train.Grow(1, widths=(8, 16)),)
    assert config.train.epochs == 10 and config.scale_down is None  # not changed
    assert apply_overrides(new, ["scale_down=none"]).scale_down is None


def test_a_field_set_whole_after_its_parts_is_an_error() -> None:
    with pytest.raises(ValueError, match="'scale_down' is set as a whole after some of its"):
        apply_overrides(RunConfig(), ["scale_down.mode=cache", "scale_down=none"])


def test_every_leaf_key_takes_an_override() -> None:
    samples = {int: "3", float: "0.5", bool: "true", str: "x", dict: '{"depth": 2}'}
    for key, hint in config_keys(RunConfig):
        options = typing.get_args(hint)
        if key == "growth":
            continue
        if type(None) in options:
            text = "none"
        elif typing.get_origin(hint) is Literal:
            text = options[-1]
        else:
            text = samples[typing.get_origin(hint) or hint]
        value = apply_overrides(RunConfig(), [f"{key}={text}"])
        for part in key.split("."):
            value = getattr(value, part)
        assert value == parse_value(text, hint), key


# --- JSON and files -------------------------------------------------------------------------


def test_to_dict_from_dict_round_trip_through_json() -> None:
    config = _full_config()
    values = json.loads(json.dumps(to_dict(config)))
    assert values["growth"][0] == {"at_epoch": 2.0, "widths": [8, 16, 32], "noise": "split"}
    assert from_dict(values) == config
    assert from_dict(json.loads(json.dumps(to_dict(RunConfig())))) == RunConfig()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"trian": {}}, r"the config: unknown keys \['trian'\]"),
        ({"train": {"lr": 1}}, r"train: unknown keys \['lr'\]"),
        ({"growth": [{"at": 1}]}, r"growth\[0\]: unknown keys \['at'\]"),
        ({"scale_down": {"every": 3}}, r"scale_down: unknown keys \['every'\]"),
    ],
)
def test_from_dict_names_unknown_keys(values, message) -> None:
    with pytest.raises(ValueError, match=message):
        from_dict(values)


def test_load_config_reads_python_and_json(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps(to_dict(_full_config())))
    assert load_config(path) == _full_config()
    (tmp_path / "none.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match=r"none.py defines no get_config\(\)"):
        load_config(tmp_path / "none.py")
    (tmp_path / "dict.py").write_text("def get_config():\n    return {}\n")
    with pytest.raises(TypeError, match=r"must return a jnet2net.config.RunConfig, got dict"):
        load_config(tmp_path / "dict.py")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(tmp_path / "missing.py")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_file_loads_and_builds(path: pathlib.Path) -> None:
    config = load_config(path)
    model = config.model.build(num_classes=10)
    assert model.num_classes == 10
    train.planned_models(model, config.growth, (8, 8, 3))  # the events fit the network
    assert from_dict(json.loads(json.dumps(to_dict(config)))) == config
    assert f"jnet2net train --config configs/{path.name}" in path.read_text()  # how to run it


def test_model_spec_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"model.fields: unknown ResNet fields \['widthz'\]"):
        ModelSpec("resnet20", {"widthz": (4,)}).build(10)
    with pytest.raises(ValueError, match=r"name an architecture: model.arch NAME"):
        ModelSpec().build(10)
    with pytest.raises(ValueError, match=r"model.width_mult must be a finite number > 0"):
        ModelSpec("resnet20", width_mult=0)


# --- the command line -----------------------------------------------------------------------


def _args(*argv: str):
    return cli.parse_args(cli.build_parser(), ["train", "--out", "r", *argv])


def test_split_config_overrides() -> None:
    tokens = ["--config.train.epochs=3", "--config.model.arch", "vgg11", "--other"]
    assert cli.split_config_overrides(tokens) == (
        ["train.epochs=3", "model.arch=vgg11"],
        ["--other"],
    )
    with pytest.raises(ValueError, match=r"--config\.train\.epochs needs a value"):
        cli.split_config_overrides(["--config.train.epochs"])


def test_file_then_flags_then_overrides_reach_the_train_config(tmp_path) -> None:
    path = tmp_path / "c.json"
    base = RunConfig(
        model=ModelSpec("resnet20"),
        data=DataConfig(dataset="digits"),
        train=train.TrainConfig(epochs=7, learning_rate=0.3, seed=5),
    )
    path.write_text(json.dumps(to_dict(base)))
    args = _args("--config", str(path), "--lr", "0.2", "--seed", "1", "--config.train.seed=2")
    config = cli.train_config_from_args(args, "digits")
    assert (config.epochs, config.learning_rate, config.seed) == (7, 0.2, 2)
    assert config.augment == "crop_flip"  # the file's, which states every field
    run = cli.run_config_from_args(args)
    assert run.model == ModelSpec("resnet20") and run.data.dataset == "digits"


def test_flags_alone_keep_their_defaults() -> None:
    args = _args("--config.train.epochs=3", "--dtype", "bfloat16")
    config = cli.train_config_from_args(args, "digits")
    assert (config.epochs, config.compute_dtype, config.augment) == (3, "bfloat16", "none")
    run = cli.run_config_from_args(_args("--arch", "vgg11", "--arch-json", '{"stage_widths": [8]}'))
    assert run.model == ModelSpec("vgg11", {"stage_widths": (8,)})
    run = cli.run_config_from_args(_args("--scale-down", "--scale-json", '{"mode": "cache"}'))
    assert run.scale_down == ScaleDownConfig(mode="cache")


def test_every_train_config_field_has_a_generated_flag() -> None:
    fields = {f.name for f in dataclasses.fields(train.TrainConfig)} - {"log_path"}
    flags = cli.train_flags()
    assert set(flags.values()) == fields
    assert flags["lr"] == "learning_rate" and flags["dtype"] == "compute_dtype"
    args = _args("--no-nesterov", "--min-crop-area", "0.5", "--max-steps", "4")
    config = cli.train_config_from_args(args, "cifar10")
    assert (config.nesterov, config.min_crop_area, config.max_steps) == (False, 0.5, 4)


def test_help_lists_the_config_keys(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = capsys.readouterr().out
    assert "--config FILE" in out and "--config.KEY=VALUE" in out
    for key in ("width_mult=float|none", "epochs=int", "optimizer=sgd|adamw", "mode=nograd|cache"):
        assert key in out, key


def test_a_bad_override_is_one_line_on_the_command_line(tmp_path, capsys) -> None:
    out = str(tmp_path / "r")
    assert cli.main(["train", "--out", out, "--config.train.epochs=x"]) == 2
    err = capsys.readouterr().err
    assert err == "jnet2net train: error: train.epochs='x': expected an int\n"
    with pytest.raises(SystemExit):  # only train takes a config
        cli.main(["grow", "--from", "a", "--out", "b", "--config.x=1"])
    assert "unrecognized arguments: --config.x=1" in capsys.readouterr().err


@pytest.mark.slow  # an end-to-end training run
def test_train_with_a_config_file_saves_its_config(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "run"
    argv = ["train", "--config", str(CONFIGS[0].parent / "resnet20_digits.py"), "--out", str(out)]
    tiny = [
        f"--config.model.fields={json.dumps(TINY)}",
        "--config.model.width_mult=none",
        "--config.data.train_subset=64",
        "--config.train.epochs=1",
        "--config.train.batch_size=32",
        "--keep",
        "0",
    ]
    assert cli.main([*argv, *tiny]) == 0
    restored = checkpoint.checkpoint_info(out)
    assert restored.step == 2 and restored.model.stage_widths == (4, 8)
    assert restored.train_config["batch_size"] == 32 and restored.train_config["augment"] == "none"
    saved = load_config(out / "config.json")
    assert saved.model == ModelSpec("resnet20", TINY) and saved.data.train_subset == 64
    assert saved.train.log_path == str(out / "metrics.jsonl")


def test_the_progressive_experiment_reads_its_training_settings_from_a_config() -> None:
    from experiments.progressive import run as progressive

    path = CONFIGS[0].parent / "resnet20_cifar10_progressive.py"
    args = progressive.build_parser().parse_args(["--config", str(path), "--lr", "0.05"])
    config = progressive.train_config(args, 7, 2, pathlib.Path("log.jsonl"))
    expected = load_config(path).train.replace(
        learning_rate=0.05, epochs=7, seed=2, progress=False, log_path="log.jsonl"
    )
    assert config == expected and config.crop_padding == 2
    plain = progressive.train_config(
        progressive.build_parser().parse_args([]), 7, 2, pathlib.Path("log.jsonl")
    )
    assert dataclasses.replace(plain, compute_dtype="float32") == expected.replace(
        learning_rate=0.1
    )


def _resolved(module, argv: list[str]) -> tuple[dict, object]:
    """An experiment's flags after ``resolve_settings`` (``--config`` left out) and args."""
    args = module.build_parser().parse_args(argv)
    module.resolve_settings(args)
    return {k: v for k, v in vars(args).items() if k != "config"}, args


def test_the_scale_down_experiment_config_gives_its_default_settings(monkeypatch) -> None:
    from experiments import common
    from experiments.scale_down import run as scale_down

    monkeypatch.setattr(common, "default_dtype", lambda: "float32")  # the CPU protocol's
    path = CONFIGS[0].parent / "scale_down_cifar10_16px.py"
    assert load_config(path).model.build(10) == scale_down.NETWORKS["resnet18"]()

    def settings(argv: list[str]) -> tuple:
        flags, args = _resolved(scale_down, argv)
        train_config = scale_down.train_config(args, args.epochs, 1, pathlib.Path("log.jsonl"))
        arms = [scale_down.scale_config(args, arm, 78) for arm in scale_down.SCALED_ARMS]
        return flags, train_config, arms

    plain = settings([])
    assert plain[1].epochs == 15 and plain[2][0].target_compute == 0.65
    assert plain[2][0].lr_boost == 3.0
    assert settings(["--config", str(path)]) == plain
    _, config, arms = settings(["--config", str(path), "--lr", "0.05", "--target", "0.5"])
    assert config.learning_rate == 0.05 and arms[0].target_compute == 0.5  # flags win


def test_the_net2net_experiment_config_gives_its_default_settings(monkeypatch) -> None:
    from experiments import common
    from experiments.net2net import protocol

    monkeypatch.setattr(common, "default_dtype", lambda: "float32")  # the CPU protocol's
    path = CONFIGS[0].parent / "net2net_cifar10_16px.py"
    assert load_config(path).model.build(10) == protocol.architectures()["resnet"]["teacher"]

    def settings(argv: list[str]) -> tuple:
        flags, args = _resolved(protocol, argv)
        teacher = protocol.config_for(args, args.teacher_epochs, args.lr, 1, "t.jsonl")
        student = protocol.config_for(args, 3, args.student_lr, 1, "s.jsonl", 0.5)
        return flags, teacher, student

    plain = settings([])
    assert plain[1].epochs == 10 and plain[1].learning_rate == 0.1 and plain[0]["dtype"] is None
    assert settings(["--config", str(path)]) == plain
    flags, teacher, _ = settings(["--config", str(path), "--teacher-epochs", "4"])
    assert flags["teacher_epochs"] == 4 and teacher.epochs == 4  # flags win
