"""Budgeted scale-down against full training at equal epochs, FLOPs and seconds.

Protocol (CPU, the default): CIFAR-10 (JPEG q75) downsampled (2x2 mean) to 16x16, a seeded
stratified 10k train subset, the full 10k test set (``jnet2net.data.load_protocol``);
ResNet-18 and VGG-11 at reduced width (``resnet18(stage_widths=(16, 32, 64, 128))``,
``vgg11(stage_widths=(16, 32, 64, 128, 128))``), batch 128, SGD-Nesterov lr 0.1, cosine,
weight decay 5e-4, random crop (2 px padding) and flip, float32.

Arms, per network and seed (``--arms``, ``--seeds``):

* ``full``: ``jnet2net.train.fit`` for ``--epochs``;
* ``full_boosted``: full training with the same learning rates as ``scale_down`` (its
  stages that may freeze at ``--lr-boost`` times the rate; a scale-down run whose target of
  1.0 and fixed schedule freeze nothing), so ``acc_drop_same_lr_pts`` separates the cost
  of freezing from the boost's gain (only with ``--lr-boost`` other than 1: else it is
  ``full``);
* ``scale_down``: ``jnet2net.train.fit(..., scale_down=...)`` for ``--epochs`` with
  ``ScaleDownConfig(target_compute=--target, lr_boost=--lr-boost, mode=--mode)``: stages
  freeze on the budget's deadlines or earlier when ready (relative update below half the
  deeper stages' median); until their ramps the stages that may freeze train at
  ``--lr-boost`` times the learning rate (default 3, FreezeOut's larger rate);
* ``scale_down_views``: ``scale_down`` whose caches hold ``--cache-views`` augmented copies
  of each image (random crops and flips drawn once; ``cache_augment='views'``) instead of
  each image and its mirror image;
* ``freezeout``: the same budget on a fixed schedule (no readiness) whose learning-rate ramps
  last ``--freezeout-ramp`` of training (FreezeOut-style per-stage annealing);
* ``full_eq_flops`` / ``full_eq_seconds``: full training for ``round(epochs * r)`` epochs
  (its own schedule, the learning rates of ``full_boosted``), ``r`` the ``scale_down``
  run's training FLOPs / seconds (compiles included) over ``full``'s, for the same seed.

Each run logs per epoch (test accuracy, cumulative training FLOPs from XLA's cost analysis
of the compiled steps, training and compile seconds) to ``runs/<net>_<arm>_s<seed>.jsonl``
(scale-down logs end with a summary: freeze steps, seconds per step of each cut, compile
seconds). A finished run is skipped when the script runs again, so the study resumes.
``summary.json`` then holds, per network, means over seeds of ``speedup`` (full training's
seconds at equal epochs over scale-down's, compiles included; evaluation excluded) and
``acc_drop_pts`` (full's final test accuracy minus scale-down's, in points;
``acc_drop_same_lr_pts`` against ``full_boosted``), and every
arm's accuracy, FLOPs and seconds against ``full``; ``table.md`` shows them.

CPU (2 cores; about ten CPU-minutes per full run)::

    python experiments/scale_down/run.py --data-dir ../shared/data --seeds 0 1 2

GPU (``--protocol full``: 32x32, all 50k training images, 4 px padding, full-width ResNet-18
and VGG-11, and ResNet-50; ``benchmarks/gpu_suite.sh`` runs ResNet-50 this way)::

    python experiments/scale_down/run.py --protocol full --npz .data/cifar10_jpeg.npz \
        --nets resnet50 --arms full scale_down --seeds 0 --batch-size 512 --lr 0.2 \
        --warmup-epochs 2 --dtype bfloat16

The settings from a config file (its ``train`` and ``scale_down`` sections set what
``--epochs``, ``--batch-size``, ``--lr``, ``--warmup-epochs``, ``--dtype`` and the scale-down
flags set; flags given still win; the networks and data stay the protocol's)::

    python experiments/scale_down/run.py --config configs/scale_down_cifar10_16px.py \
        --data-dir ../shared/data --seeds 0

Smoke runs (minutes): ``--tiny`` (digits, tiny networks, 2 epochs) or ``--train-limit 512
--epochs 1``.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from experiments import common
from experiments.common import format_spread, mean_spread, run_seconds, step_seconds
from jnet2net import data as data_lib
from jnet2net.config import load_config
from jnet2net.models import resnet18, resnet50, vgg11
from jnet2net.scale_down import ScaleDownConfig
from jnet2net.train import TrainConfig, fit, read_jsonl, steps_per_epoch

ARMS = (
    "full",
    "scale_down",
    "full_boosted",
    "freezeout",
    "full_eq_flops",
    "full_eq_seconds",
    "scale_down_views",
)
SCALED_ARMS = ("scale_down", "freezeout", "scale_down_views")
#: Full training, with the scale-down arm's learning rates where it boosts them.
BOOSTED_ARMS = ("full_boosted", "full_eq_flops", "full_eq_seconds")
BASELINES = ("freezeout", "full_eq_flops", "full_eq_seconds", "scale_down_views")

#: The protocol's scale-down settings (``check_every`` is set from the data: a quarter epoch).
PROTOCOL_SCALE_DOWN = ScaleDownConfig(
    target_compute=0.65,
    not_before=0.3,
    min_spacing=0.1,
    ramp=0.05,
    lr_boost=3.0,
    mode="cache",
    cache_augment="flip",
    cache_views=4,
)
#: Flags that set a ``ScaleDownConfig`` field: ``{args attribute: field}``.
SCALE_FLAGS = {
    "target": "target_compute",
    "not_before": "not_before",
    "min_spacing": "min_spacing",
    "ramp": "ramp",
    "lr_boost": "lr_boost",
    "max_stages": "max_stages",
    "mode": "mode",
    "cache_augment": "cache_augment",
    "cache_views": "cache_views",
}
#: Flags that set a ``TrainConfig`` field: ``{args attribute: field}``.
TRAIN_FLAGS = {
    "epochs": "epochs",
    "batch_size": "batch_size",
    "lr": "learning_rate",
    "warmup_epochs": "warmup_epochs",
    "dtype": "compute_dtype",
}

NETWORKS: dict[str, Callable[[], Any]] = {
    "resnet18": lambda: resnet18(stage_widths=(16, 32, 64, 128), num_classes=10),
    "vgg11": lambda: vgg11(stage_widths=(16, 32, 64, 128, 128), num_classes=10),
}
#: ``--protocol full`` (GPU): CIFAR-10 at 32x32, full widths, and ResNet-50.
FULL_NETWORKS: dict[str, Callable[[], Any]] = {
    "resnet18": lambda: resnet18(num_classes=10),
    "vgg11": lambda: vgg11(num_classes=10),
    "resnet50": lambda: resnet50(num_classes=10),
}
TINY_NETWORKS: dict[str, Callable[[], Any]] = {
    "resnet18": lambda: resnet18(
        stage_widths=(4, 4, 8, 8), stage_depths=(1, 1, 1, 1), num_classes=10
    ),
    "vgg11": lambda: vgg11(stage_widths=(4, 4, 8, 8, 8), num_classes=10),
    "resnet50": lambda: resnet50(
        stage_widths=(8, 8, 16, 16), stage_depths=(1, 1, 1, 1), stem_width=4, num_classes=10
    ),
}


def networks(args: argparse.Namespace) -> dict[str, Callable[[], Any]]:
    """The networks of the run's protocol."""
    if args.tiny:
        return TINY_NETWORKS
    return FULL_NETWORKS if args.protocol == "full" else NETWORKS


# --- set-up -------------------------------------------------------------------------------


def protocol_data(args: argparse.Namespace) -> tuple[data_lib.Dataset, data_lib.Dataset]:
    """The CPU protocol (16x16, 10k subset), the full set (``--protocol full``), or digits
    with ``--tiny``."""
    if args.tiny:
        return common.load_data("digits", train_limit=256)
    cpu = args.protocol == "cpu"
    return common.load_data(
        "cifar10",
        data_dir=args.data_dir,
        npz=args.npz,
        resolution=16 if cpu else None,
        train_subset=10000 if cpu else None,
        train_limit=args.train_limit,
    )


def base_configs(args: argparse.Namespace) -> tuple[TrainConfig, ScaleDownConfig]:
    """The settings the flags start from: the ``--config`` file's ``train`` and
    ``scale_down`` sections (none: :data:`PROTOCOL_SCALE_DOWN`), or the protocol's."""
    if args.config:
        run = load_config(args.config)
        return run.train, run.scale_down or PROTOCOL_SCALE_DOWN
    train = TrainConfig(
        epochs=15,
        batch_size=128,
        learning_rate=0.1,
        weight_decay=5e-4,
        augment="crop_flip",
        crop_padding=2 if args.protocol == "cpu" else 4,
        warmup_epochs=0.0,
        compute_dtype=common.default_dtype(),
    )
    return train, PROTOCOL_SCALE_DOWN


def resolve_settings(args: argparse.Namespace) -> None:
    """Sets each training and scale-down flag not given (``None``) to its value in
    :func:`base_configs` (``--tiny``: 2 epochs)."""
    train, scale = base_configs(args)
    if not args.epochs:
        args.epochs = 2 if args.tiny else train.epochs
    for flags, config in ((TRAIN_FLAGS, train), (SCALE_FLAGS, scale)):
        for name, field in flags.items():
            if getattr(args, name) is None:
                setattr(args, name, getattr(config, field))


def train_config(
    args: argparse.Namespace, epochs: int, seed: int, log: pathlib.Path
) -> TrainConfig:
    """The arms' training config: :func:`base_configs`' with the flags' values (after
    :func:`resolve_settings`); digits (``--tiny``): 1-pixel crops and no flips."""
    config = base_configs(args)[0].replace(
        batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup_epochs=args.warmup_epochs,
        compute_dtype=args.dtype,
    )
    if args.tiny:
        config = config.replace(batch_size=32, learning_rate=0.05, augment="crop", crop_padding=1)
    return config.replace(epochs=epochs, seed=seed, progress=False, log_path=str(log))


def scale_config(args: argparse.Namespace, arm: str, spe: int) -> ScaleDownConfig:
    """The budgeted policy (``scale_down``) or its fixed FreezeOut-style twin (``freezeout``):
    :func:`base_configs`' with the flags' values (after :func:`resolve_settings`)."""
    fields: dict[str, Any] = {
        "target_compute": 1.0 if args.tiny else args.target,
        "not_before": args.not_before,
        "min_spacing": args.min_spacing,
        "ramp": args.ramp,
        "lr_boost": args.lr_boost,
        "max_stages": args.max_stages,
        "check_every": max(1, spe // 4),
        "mode": args.mode,
        "cache_augment": "none" if args.tiny else args.cache_augment,
    }
    if arm == "freezeout":
        fields.update(ready_ratio=None, ramp=args.freezeout_ramp)
    if arm in BOOSTED_ARMS:
        fields.update(target_compute=1.0, ready_ratio=None)  # the same rates, nothing frozen
    if arm == "scale_down_views" and not args.tiny:
        fields.update(cache_augment="views", cache_views=args.cache_views)
    return dataclasses.replace(base_configs(args)[1], **fields)


def log_path(out: pathlib.Path, net: str, arm: str, seed: int) -> pathlib.Path:
    return out / "runs" / f"{net}_{arm}_s{seed}.jsonl"


def epoch_records(path: pathlib.Path) -> list[dict[str, Any]]:
    """The per-epoch records of a log (growth events and the summary line left out)."""
    if not path.exists():
        return []
    return [r for r in read_jsonl(path) if "epoch" in r and "event" not in r]


def run_summary(path: pathlib.Path) -> dict[str, Any] | None:
    """The ``{"summary": ...}`` line a scale-down log ends with (``None``: none)."""
    if not path.exists():
        return None
    lines = [r["summary"] for r in read_jsonl(path) if "summary" in r]
    return lines[-1] if lines else None


def finished(path: pathlib.Path, epochs: int) -> bool:
    records = epoch_records(path)
    return bool(records) and records[-1]["epoch"] == epochs


def equal_epochs(out: pathlib.Path, net: str, arm: str, seed: int, epochs: int) -> int | None:
    """Epochs of a ``full_eq_*`` arm: ``epochs`` times scale-down's FLOPs or seconds over
    full training's (``None``: those runs are not finished yet)."""
    full, scaled = log_path(out, net, "full", seed), log_path(out, net, "scale_down", seed)
    if not (finished(full, epochs) and finished(scaled, epochs)):
        return None
    a, b = epoch_records(scaled)[-1], epoch_records(full)[-1]
    if arm == "full_eq_flops":
        ratio = a["train_flops"] / b["train_flops"]
    else:
        ratio = run_seconds(a) / run_seconds(b)
    return max(1, round(ratio * epochs))


# --- runs ---------------------------------------------------------------------------------


def run_arm(
    args: argparse.Namespace,
    net: str,
    arm: str,
    seed: int,
    train: data_lib.Dataset,
    test: data_lib.Dataset,
) -> None:
    """Trains one arm of one network for one seed unless its log is already complete."""
    out = pathlib.Path(args.out)
    path = log_path(out, net, arm, seed)
    epochs = args.epochs
    if arm == "full_boosted" and args.lr_boost == 1.0:
        print(f"  {net} {arm} s{seed}: --lr-boost 1 (the full arm); skipped")
        return
    if arm.startswith("full_eq"):
        epochs = equal_epochs(out, net, arm, seed, args.epochs)
        if epochs is None:
            print(f"  {net} {arm} s{seed}: needs full and scale_down first; skipped")
            return
    if finished(path, epochs):
        print(f"  {net} {arm} s{seed}: done")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    model = networks(args)[net]()
    config = train_config(args, epochs, seed, path)
    start = time.perf_counter()
    if arm in SCALED_ARMS or (arm in BOOSTED_ARMS and args.lr_boost != 1.0):
        spe = steps_per_epoch(len(train), config.batch_size)
        fit(model, train, test, config, scale_down=scale_config(args, arm, spe))
    else:
        fit(model, train, test, config)
    last = epoch_records(path)[-1]
    print(
        f"  {net:<9} {arm:<16} s{seed} epochs={epochs:<3} acc={last['test_acc']:.4f} "
        f"flops={last['train_flops']:.3g} seconds={run_seconds(last):.0f} "
        f"wall={time.perf_counter() - start:.0f}s",
        flush=True,
    )


# --- summary ------------------------------------------------------------------------------


def _seed_row(out: pathlib.Path, net: str, seed: int, epochs: int) -> dict[str, Any] | None:
    """One seed's arms against ``full`` (``None`` unless full and scale-down finished)."""
    full = epoch_records(log_path(out, net, "full", seed))
    if not finished(log_path(out, net, "full", seed), epochs):
        return None
    if not finished(log_path(out, net, "scale_down", seed), epochs):
        return None
    base = full[-1]
    arms = {}
    for arm in ARMS:
        records = epoch_records(log_path(out, net, arm, seed))
        if not records:
            continue
        last = records[-1]
        arms[arm] = {
            "epochs": last["epoch"],
            "final_acc": last["test_acc"],
            "flops_ratio": last["train_flops"] / base["train_flops"],
            "seconds": run_seconds(last),
            "speedup": run_seconds(base) / run_seconds(last),
            "steps_speedup": step_seconds(base) / step_seconds(last),
            "acc_drop_pts": 100 * (base["test_acc"] - last["test_acc"]),
        }
    scaled = arms["scale_down"]
    row: dict[str, Any] = {
        "seed": seed,
        "speedup": scaled["speedup"],
        "steps_speedup": scaled["steps_speedup"],
        "acc_drop_pts": scaled["acc_drop_pts"],
        "arms": arms,
    }
    if "full_boosted" in arms:
        row["acc_drop_same_lr_pts"] = 100 * (
            arms["full_boosted"]["final_acc"] - scaled["final_acc"]
        )
    summary = run_summary(log_path(out, net, "scale_down", seed))
    if summary:
        row["scale_down"] = {
            key: summary.get(key)
            for key in (
                "candidate_cuts",
                "deadlines",
                "freeze_steps",
                "early",
                "planned_compute",
                "flops_ratio",
                "cut_step_s",
                "cut_step_flops",
                "compile_s",
                "move_s",
                "train_s",
            )
        }
    row["points_over"] = {
        arm: 100 * (scaled["final_acc"] - arms[arm]["final_acc"])
        for arm in BASELINES
        if arm in arms
    }
    return row


def summarize(out: pathlib.Path, nets: Sequence[str], epochs: int) -> dict[str, Any]:
    """``summary.json``'s content from the finished logs under ``out/runs``."""
    networks = {}
    for net in nets:
        seeds = sorted(
            {int(p.stem.rsplit("_s", 1)[1]) for p in (out / "runs").glob(f"{net}_full_s*.jsonl")}
        )
        rows = [row for s in seeds if (row := _seed_row(out, net, s, epochs)) is not None]
        if not rows:
            continue
        speedup = mean_spread([r["speedup"] for r in rows])
        drop = mean_spread([r["acc_drop_pts"] for r in rows])
        arms = {
            arm: {
                key: mean_spread([r["arms"][arm][key] for r in rows if arm in r["arms"]])
                for key in ("final_acc", "flops_ratio", "speedup", "steps_speedup", "acc_drop_pts")
            }
            for arm in ARMS
            if any(arm in r["arms"] for r in rows)
        }
        same_lr = mean_spread(
            [r["acc_drop_same_lr_pts"] for r in rows if "acc_drop_same_lr_pts" in r]
        )
        networks[net] = {
            "speedup": speedup["mean"],
            "steps_speedup": mean_spread([r["steps_speedup"] for r in rows])["mean"],
            "acc_drop_pts": drop["mean"],
            "speedup_spread": speedup,
            "acc_drop_spread": drop,
            **(
                {"acc_drop_same_lr_pts": same_lr["mean"], "acc_drop_same_lr_spread": same_lr}
                if same_lr["n"]
                else {}
            ),
            "seeds": [r["seed"] for r in rows],
            "arms": arms,
            "points_over": {
                arm: mean_spread([r["points_over"][arm] for r in rows if arm in r["points_over"]])
                for arm in BASELINES
            },
            "per_seed": rows,
        }
    return {"epochs": epochs, "networks": networks}


def headline(net: str, entry: dict[str, Any]) -> str:
    """One network's result in a sentence: speed-up and FLOPs, the drop against full training
    (and against ``full_boosted`` where it ran), and the points over each baseline."""
    seeds = len(entry["seeds"])
    text = (
        f"- {net} ({seeds} seed{'s' if seeds > 1 else ''}): "
        f"{format_spread(entry['speedup_spread'], 2)}x faster than full training at "
        f"{entry['arms']['scale_down']['flops_ratio']['mean']:.2f} of its FLOPs, "
        f"{format_spread(entry['acc_drop_spread'], 1)} points below it"
    )
    if "acc_drop_same_lr_spread" in entry:
        same = format_spread(entry["acc_drop_same_lr_spread"], 1)
        text += f" ({same} below full training at the same learning rates)"
    over = [
        (arm, spread) for arm, spread in entry["points_over"].items() if spread["mean"] is not None
    ]
    if over:
        parts = [
            f"{'+' if s['mean'] >= 0 else ''}{format_spread(s, 1)} over {arm}" for arm, s in over
        ]
        parts[0] = parts[0].replace(" over ", " points over ", 1)
        text += "; " + ", ".join(parts)
    return text


def write_table(out: pathlib.Path, summary: dict[str, Any]) -> None:
    """``table.md``: each network's result in a sentence (:func:`headline`), then its arms
    against full training at equal epochs."""

    def stat(entry: dict[str, Any], key: str, scale: float = 1.0, digits: int = 2) -> str:
        value = entry.get(key, {}).get("mean")
        return "-" if value is None else f"{scale * value:.{digits}f}"

    rows = []
    for net, entry in summary["networks"].items():
        for arm, stats in entry["arms"].items():
            rows.append(
                [
                    net,
                    arm,
                    stat(stats, "final_acc", 100, 1),
                    stat(stats, "acc_drop_pts", 1, 2),
                    stat(stats, "flops_ratio"),
                    stat(stats, "speedup"),
                    stat(stats, "steps_speedup"),
                ]
            )
    headers = [
        "network",
        "arm",
        "final acc %",
        "drop vs full (pts)",
        "FLOPs / full",
        "speed-up",
        "speed-up, steps only",
    ]
    text = (
        f"# Budgeted scale-down, {summary['epochs']} epochs (means over seeds; speed-up: seconds"
        " with compiles, without evaluation; steps only: without compiles too)\n\n"
        + "\n".join(headline(net, entry) for net, entry in summary["networks"].items())
        + "\n\n"
        + common.markdown_table(headers, rows)
        + "\n"
    )
    (out / "table.md").write_text(text)


def build_parser() -> argparse.ArgumentParser:
    """The script's options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=None, help="folder with cifar10_jpeg.npz or tfds")
    parser.add_argument("--npz", default=None, help="the cifar10_jpeg.npz pack")
    parser.add_argument("--train-limit", type=int, default=None, help="smoke: first N examples")
    parser.add_argument("--tiny", action="store_true", help="smoke: digits, tiny networks")
    parser.add_argument("--out", default=None)
    parser.add_argument("--protocol", choices=("cpu", "full"), default="cpu")
    parser.add_argument("--nets", nargs="+", default=list(NETWORKS), choices=list(FULL_NETWORKS))
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--config",
        default=None,
        help="a run config (e.g. configs/scale_down_cifar10_16px.py) whose train and "
        "scale_down sections set the defaults of the training and scale-down flags below",
    )
    parser.add_argument("--epochs", type=int, default=None, help="default 15 (--tiny: 2)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 128")
    parser.add_argument("--lr", type=float, default=None, help="default 0.1")
    parser.add_argument("--warmup-epochs", type=float, default=None, help="default 0")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on an accelerator")
    parser.add_argument("--mode", choices=("cache", "nograd"), default=None, help="default cache")
    parser.add_argument(
        "--cache-augment",
        choices=("crop", "views", "flip", "none"),
        default=None,
        help="what cached stages keep of the augmentation (scale_down and freezeout arms; "
        "default flip)",
    )
    parser.add_argument(
        "--cache-views", type=int, default=None, help="scale_down_views' copies (default 4)"
    )
    parser.add_argument("--target", type=float, default=None, help="target_compute (default 0.65)")
    parser.add_argument("--not-before", type=float, default=None, help="default 0.3")
    parser.add_argument("--min-spacing", type=float, default=None, help="default 0.1")
    parser.add_argument("--ramp", type=float, default=None, help="default 0.05")
    parser.add_argument(
        "--lr-boost",
        type=float,
        default=None,
        help="learning-rate factor of the stages that may freeze (default 3)",
    )
    parser.add_argument(
        "--max-stages",
        type=int,
        default=None,
        help="most stages that may freeze (default: all but the last)",
    )
    parser.add_argument("--freezeout-ramp", type=float, default=0.3)
    parser.add_argument("--summarize", action="store_true", help="only write the summary")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the arms (unless ``--summarize``) and writes ``summary.json`` and ``table.md``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    unknown = sorted(set(args.nets) - set(networks(args)))
    if unknown:
        parser.error(f"--nets {' '.join(unknown)}: not in the {args.protocol} protocol")
    resolve_settings(args)
    default_out = (
        "digits-tiny"
        if args.tiny
        else {"cpu": "cifar10-16px", "full": "cifar10-32px"}[args.protocol]
    )
    out = pathlib.Path(args.out or pathlib.Path(__file__).parent / "results" / default_out)
    args.out = str(out)
    if args.tiny:
        common.configure_reduced_mode("digits")
    if not args.summarize:
        train, test = protocol_data(args)
        print(f"data: train {train.images.shape}, test {test.images.shape}", flush=True)
        for seed in args.seeds:
            for net in args.nets:
                for arm in (a for a in ARMS if a in args.arms):
                    run_arm(args, net, arm, seed, train, test)
    summary = summarize(out, args.nets, args.epochs)
    summary["environment"] = common.environment(
        common.REDUCED_NOTE
        if args.tiny
        else "CIFAR-10 (JPEG q75) 16x16, 10k stratified train subset, full test set"
        if args.protocol == "cpu"
        else "CIFAR-10 (JPEG q75) 32x32, all 50k training images, full test set"
    )
    summary["settings"] = {
        k: getattr(args, k)
        for k in (
            "mode",
            "cache_augment",
            "cache_views",
            "target",
            "not_before",
            "min_spacing",
            "ramp",
            "lr_boost",
            "freezeout_ramp",
        )
    }
    common.write_json(out / "summary.json", summary)
    write_table(out, summary)
    print((out / "table.md").read_text())
    return summary


if __name__ == "__main__":
    main()
