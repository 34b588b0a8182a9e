"""Flexible weight reuse: random init against reuse init (``jnet2net.reuse.transfer``).

Settings (the weight-reuse paper's four, plus one shrink and one mixed change): VGG width
expansion, VGG depth expansion, ResNet width expansion, ResNet depth expansion, a ResNet
shrink (narrower and shallower) and a mixed change (deeper in one stage, narrower in
another, wider in the rest). For each, a source network is trained once; the destination
is then trained with the same full schedule from a random init and from the reuse init
(``transfer(src_model, src_vars, dst_model, key=...)``).

Outputs in ``experiments/weight_reuse/results/<dataset>/``: ``results.json`` (curves,
configs, each transfer's reuse fraction and exactness, provenance), ``table.md`` (epochs
to reach 90% of the random-init run's final accuracy, final accuracy, training seconds)
and ``curves_<setting>.png`` (test accuracy against epochs and seconds).

GPU, CIFAR-10::

    python experiments/weight_reuse/run.py --dataset cifar10 --npz data/cifar10_jpeg.npz

CPU, reduced run on digits (2 cores, a few minutes)::

    python experiments/weight_reuse/run.py --dataset digits
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import jax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import jnet2net
from experiments import common
from jnet2net.models import VGG, ResNet, resnet20, resnet32, resnet56, vgg11, vgg16
from jnet2net.train import TrainConfig

TARGET_FRACTION = 0.90
SETTINGS = (
    "vgg_width",
    "vgg_depth",
    "resnet_width",
    "resnet_depth",
    "resnet_shrink",
    "resnet_mixed",
)


def setting_models(dataset: str) -> dict[str, tuple[Any, Any]]:
    """``{setting: (source_model, destination_model)}`` of a dataset's protocol."""
    if dataset == "digits":
        vgg = VGG(stage_depths=(1, 1), stage_widths=(4, 8))
        res = ResNet(stage_depths=(1, 1), stage_widths=(4, 8))
        big = ResNet(stage_depths=(2, 2), stage_widths=(8, 16))
        return {
            "vgg_width": (vgg, vgg.clone(stage_widths=(8, 16))),
            "vgg_depth": (vgg, vgg.clone(stage_depths=(2, 2))),
            "resnet_width": (res, res.clone(stage_widths=(8, 16))),
            "resnet_depth": (res, res.clone(stage_depths=(2, 2))),
            "resnet_shrink": (big, big.clone(stage_depths=(1, 2), stage_widths=(6, 12))),
            "resnet_mixed": (res, res.clone(stage_depths=(2, 1), stage_widths=(6, 6))),
        }
    half_vgg = vgg11(stage_widths=(32, 64, 128, 256, 256))
    half_res = resnet20(stage_widths=(8, 16, 32))
    return {
        "vgg_width": (half_vgg, vgg11()),
        "vgg_depth": (vgg11(), vgg16()),
        "resnet_width": (half_res, resnet20()),
        "resnet_depth": (resnet20(), resnet56()),
        "resnet_shrink": (resnet32(), resnet20(stage_widths=(12, 24, 48))),
        "resnet_mixed": (resnet20(), resnet20(stage_depths=(5, 3, 2), stage_widths=(24, 32, 48))),
    }


def settings(dataset: str, tiny: bool) -> dict[str, Any]:
    """Epochs, batch and learning rate of a dataset's protocol."""
    if tiny:
        return {"src_epochs": 1, "epochs": 1, "batch_size": 32, "lr": 0.05}
    if dataset == "digits":
        return {"src_epochs": 6, "epochs": 6, "batch_size": 32, "lr": 0.05}
    return {"src_epochs": 15, "epochs": 15, "batch_size": 128, "lr": 0.1}


def run_setting(
    name: str,
    src_model: Any,
    dst_model: Any,
    train: Any,
    test: Any,
    src_config: TrainConfig,
    config: TrainConfig,
    sources: dict[Any, tuple[Any, Any]],
) -> dict[str, Any]:
    """Trains (or reuses) the source, then the destination from random and reuse init."""
    if src_model not in sources:
        sources[src_model] = common.train_run(f"{name} source", src_model, train, test, src_config)
    src_run, src_vars = sources[src_model]
    key = jax.random.key(config.seed + 1)
    dst_vars, report = jnet2net.transfer(src_model, src_vars, dst_model, key=key)
    random_run, _ = common.train_run(f"{name} random", dst_model, train, test, config)
    reuse_run, _ = common.train_run(
        f"{name} reuse", dst_model, train, test, config, variables=jax.device_get(dst_vars)
    )
    return {
        "source_model": jnet2net.model_config(src_model),
        "dst_model": jnet2net.model_config(dst_model),
        "source": src_run.to_dict(),
        "random": random_run.to_dict(),
        "reuse": reuse_run.to_dict(),
        "function_preserving": bool(report.function_preserving),
        "reused_fraction": float(report.reused_fraction),
        "approximations": list(report.approximations),
    }


def epochs_to(entry: dict[str, Any], target: float) -> int | None:
    """First epoch (1-based) whose test accuracy is ``>= target``."""
    for epoch, acc in enumerate(entry["test_acc"], start=1):
        if acc >= target:
            return epoch
    return None


HEADERS = (
    "setting",
    "init",
    "reused params",
    "exact",
    "epochs to 90% of random's final",
    "final acc",
    "vs random",
    "train s",
)


def table_rows(results: dict[str, Any]) -> list[list[Any]]:
    """One row per setting and init; the target is 90% of the random run's final accuracy."""
    rows = []
    for name, item in results["settings_results"].items():
        target = TARGET_FRACTION * item["random"]["final_acc"]
        for init in ("random", "reuse"):
            entry = item[init]
            rows.append(
                [
                    name,
                    init,
                    f"{item['reused_fraction']:.0%}" if init == "reuse" else "-",
                    item["function_preserving"] if init == "reuse" else "-",
                    epochs_to(entry, target),
                    entry["final_acc"],
                    entry["final_acc"] - item["random"]["final_acc"],
                    entry["total_s"],
                ]
            )
    return rows


def plot_setting(out: pathlib.Path, name: str, item: dict[str, Any]) -> None:
    """Test accuracy against epochs and seconds for the two inits."""
    keys = ("label", "epochs", "step", "train_s", "test_acc", "config")
    runs = []
    for init in ("random", "reuse"):
        run = common.Run(**{k: item[init][k] for k in keys})
        run.step = list(range(1, len(run.test_acc) + 1))  # plot against epochs
        runs.append(run)
    path = out / f"curves_{name}.png"
    common.plot_curves(runs, path, title=f"{name}: random vs reuse init", step_label="epoch")


def build_parser() -> argparse.ArgumentParser:
    """The script's options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_args(parser)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--src-epochs", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS))
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs every setting and writes the outputs; returns the results dict."""
    args = build_parser().parse_args(argv)
    common.configure_reduced_mode(args.dataset)

    setup = settings(args.dataset, args.tiny)
    train, test = common.data_for(args)
    digits = args.dataset == "digits"
    config = common.base_config(args, setup, args.epochs or setup["epochs"])
    src_config = config.replace(epochs=args.src_epochs or setup["src_epochs"])
    models = setting_models(args.dataset)
    sources: dict[Any, tuple[Any, Any]] = {}
    results_by_setting = {}
    for name in args.settings:
        src_model, dst_model = models[name]
        print(f"[{name}]", flush=True)
        results_by_setting[name] = run_setting(
            name, src_model, dst_model, train, test, src_config, config, sources
        )
    results = {
        "dataset": args.dataset,
        "environment": common.environment(common.REDUCED_NOTE if digits else None),
        "config": config.to_dict(),
        "source_epochs": src_config.epochs,
        "target_fraction": TARGET_FRACTION,
        "settings_results": results_by_setting,
    }
    out = common.out_dir(__file__, args.dataset, args.out)
    common.write_json(out / "results.json", results)
    text = [
        f"# Weight reuse: random vs reuse init ({args.dataset})\n\n",
        common.provenance_md(results["environment"]),
        f"\nSame schedule for both inits: {config.epochs} epochs, lr {config.learning_rate}, "
        f"batch {config.batch_size}; sources trained {src_config.epochs} epochs (not counted "
        "in the destination's seconds). Target: 90% of the random-init run's final accuracy.\n\n",
        common.markdown_table(HEADERS, table_rows(results)),
    ]
    (out / "table.md").write_text("".join(text))
    for name, item in results_by_setting.items():
        plot_setting(out, name, item)
    print(f"wrote {out}", flush=True)
    return results


if __name__ == "__main__":
    main()
