"""Training-time scale-down against full training at equal epochs.

For VGG-11, VGG-16, ResNet-18 and ResNet-50 (CIFAR stems) the same schedule is run twice:
full training (``jnet2net.train.fit``) and scale-down (``jnet2net.scale_down.fit_scale_down``,
which drops from training the prefix of layers that stopped learning). Reported per network:
training seconds of both and their ratio, forward FLOPs saved (XLA cost analysis, per
example over the run), final test accuracy of both, and the paper's figures beside ours
(Learn&Drop: > 2x shorter training, forward FLOPs -17.83% for VGG-11 up to -83.74% for
ResNet-152, accuracy within 0.26-2.38 points for VGGs and 0.4-3.2 points for ResNets).

Outputs in ``experiments/scale_down/results/<dataset>/``: ``results.json``, ``table.md``
and ``curves_<arch>.png`` (test accuracy against steps and seconds, full vs scale-down).

GPU, CIFAR-10 (full widths, 30 epochs each)::

    python experiments/scale_down/run.py --dataset cifar10 --npz data/cifar10_jpeg.npz

CPU, reduced run on digits (width-reduced networks, few epochs; a few minutes)::

    python experiments/scale_down/run.py --dataset digits
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import jnet2net
from experiments import common
from jnet2net.models import resnet18, resnet50, vgg11, vgg16
from jnet2net.scale_down import ScaleDownConfig, fit_scale_down
from jnet2net.train import TrainConfig

ARCHS = ("vgg11", "vgg16", "resnet18", "resnet50")

#: The paper's figures per network (forward FLOPs saved; accuracy loss range of the family).
PAPER = {
    "vgg11": {"forward_flops_saved": 0.1783, "acc_drop": "0.26-2.38"},
    "vgg16": {"forward_flops_saved": None, "acc_drop": "0.26-2.38"},
    "resnet18": {"forward_flops_saved": None, "acc_drop": "0.4-3.2"},
    "resnet50": {"forward_flops_saved": None, "acc_drop": "0.4-3.2"},
}
PAPER_SPEEDUP = "> 2x"


def models(dataset: str, tiny: bool = False) -> dict[str, Any]:
    """The four networks; width-reduced for digits (8x8 images)."""
    if dataset != "digits":
        return {"vgg11": vgg11(), "vgg16": vgg16(), "resnet18": resnet18(), "resnet50": resnet50()}
    if tiny:
        return {
            "vgg11": vgg11(stage_widths=(2, 4, 4, 4, 4)),
            "resnet18": resnet18(stage_widths=(2, 4, 4, 4), stage_depths=(1, 1, 1, 1)),
        }
    return {
        "vgg11": vgg11(stage_widths=(4, 8, 8, 16, 16)),
        "vgg16": vgg16(stage_widths=(4, 8, 8, 16, 16)),
        "resnet18": resnet18(stage_widths=(4, 8, 8, 16)),
        "resnet50": resnet50(stage_widths=(8, 16, 16, 32), stem_width=4),
    }


def settings(dataset: str, tiny: bool) -> dict[str, Any]:
    """Epochs, batch, learning rate and scale-down config of a dataset's protocol."""
    if tiny:
        scale = ScaleDownConfig(check_every=2, warmup_steps=2, patience=1, trend_window=2)
        return {"epochs": 1, "batch_size": 32, "lr": 0.05, "scale": scale}
    if dataset == "digits":
        # digits are not flipped and cached activations see no crops: cache the plain images.
        scale = ScaleDownConfig(
            check_every=11,
            warmup_steps=132,
            patience=3,
            trend_window=3,
            threshold=0.3,
            mode="cache",
            cache_augment="none",
        )
        return {"epochs": 8, "batch_size": 32, "lr": 0.05, "scale": scale}
    # The frozen prefix is served from a cache (forward FLOPs saved, flips kept, no crops);
    # --mode nograd keeps every augmentation and saves backward work only.
    return {"epochs": 30, "batch_size": 128, "lr": 0.1, "scale": ScaleDownConfig(mode="cache")}


def run_arch(
    name: str, model: Any, train: Any, test: Any, config: TrainConfig, scale: ScaleDownConfig
) -> dict[str, Any]:
    """Full and scale-down training of one network; JSON-ready results."""
    full_run, _ = common.train_run(f"{name} full", model, train, test, config)
    result = fit_scale_down(model, train, test, config, scale)
    rebuild_s = sum(r["rebuild_s"] for r in result.history)
    scaled = common.run_from_history(f"{name} scale-down", config.epochs, result.history, config)
    # fit_scale_down's epoch_s includes cut moves (compiles, caches); keep them in: they are
    # part of its cost. It compiles its first step before timing, so every step is in its
    # epoch_s already: undo run_from_history's first-step rescale (total = summary train_s).
    scaled.train_s = _cumulative([r["epoch_s"] for r in result.history])
    summary = result.summary
    print(
        f"  {name + ' scale-down':<28} epochs={config.epochs:<3} acc={scaled.final_acc:.4f} "
        f"train_s={scaled.total_s:.1f} cut={result.cut} "
        f"fwd_saved={summary.get('forward_flops_saved')}",
        flush=True,
    )
    return {
        "model": jnet2net.model_config(model),
        "layers": list(model.layer_names()),
        "full": full_run.to_dict(),
        "scale_down": scaled.to_dict(),
        "rebuild_s": rebuild_s,
        "summary": summary,
        "per_epoch": [
            {k: r.get(k) for k in ("epoch", "cut", "trained_layers", "forward_flops", "mode")}
            for r in result.history
        ],
    }


def _cumulative(values: Sequence[float]) -> list[float]:
    out, total = [], 0.0
    for value in values:
        total += value
        out.append(total)
    return out


HEADERS = (
    "network",
    "full acc",
    "scale-down acc",
    "acc drop (pts)",
    "paper acc drop (pts)",
    "full s",
    "scale-down s",
    "speed-up",
    "paper speed-up",
    "fwd FLOPs saved",
    "paper fwd FLOPs saved",
    "frozen layers at end",
)


def table_rows(results: dict[str, Any]) -> list[list[Any]]:
    """One row per network: ours beside the paper's figures."""
    rows = []
    for name, item in results["archs"].items():
        full, scaled, summary = item["full"], item["scale_down"], item["summary"]
        saved = summary.get("forward_flops_saved")
        paper = PAPER.get(name, {})
        paper_saved = paper.get("forward_flops_saved")
        rows.append(
            [
                name,
                full["final_acc"],
                scaled["final_acc"],
                100 * (full["final_acc"] - scaled["final_acc"]),
                paper.get("acc_drop"),
                full["total_s"],
                scaled["total_s"],
                full["total_s"] / scaled["total_s"] if scaled["total_s"] else None,
                PAPER_SPEEDUP,
                None if saved is None else f"{saved:.2%}",
                None if paper_saved is None else f"{paper_saved:.2%}",
                f"{summary['cut']}/{len(item['layers'])}",
            ]
        )
    return rows


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs full and scale-down training per network and writes the outputs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_args(parser)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--archs", nargs="*", default=None)
    parser.add_argument("--mode", default=None, help="scale-down mode: nograd or cache")
    args = parser.parse_args(argv)
    common.configure_reduced_mode(args.dataset)

    setup = settings(args.dataset, args.tiny)
    scale = setup["scale"]
    if args.mode:
        scale = ScaleDownConfig(**{**scale.__dict__, "mode": args.mode})
    train, test = common.data_for(args)
    digits = args.dataset == "digits"
    config = common.base_config(args, setup, args.epochs or setup["epochs"])
    nets = models(args.dataset, args.tiny)
    archs = {}
    for name in args.archs or list(nets):
        print(f"[{name}]", flush=True)
        archs[name] = run_arch(name, nets[name], train, test, config, scale)
    results = {
        "dataset": args.dataset,
        "environment": common.environment(common.REDUCED_NOTE if digits else None),
        "config": config.to_dict(),
        "scale_config": dict(scale.__dict__),
        "archs": archs,
    }
    out = common.out_dir(__file__, args.dataset, args.out)
    common.write_json(out / "results.json", results)
    text = [
        f"# Training-time scale-down vs full training ({args.dataset})\n\n",
        common.provenance_md(results["environment"]),
        f"\nEqual epochs ({config.epochs}), lr {config.learning_rate}, batch "
        f"{config.batch_size}, scale-down mode `{scale.mode}`. Seconds: training steps only "
        "for full training; steps plus cut moves (compiles, caches) for scale-down. The "
        "paper's accuracy drops are its ranges over the VGG / ResNet family.\n\n",
        common.markdown_table(HEADERS, table_rows(results)),
    ]
    (out / "table.md").write_text("".join(text))
    for name, item in archs.items():
        keys = ("label", "epochs", "step", "train_s", "test_acc", "config")
        runs = [common.Run(**{k: item[m][k] for k in keys}) for m in ("full", "scale_down")]
        common.plot_curves(runs, out / f"curves_{name}.png", title=f"{name}: full vs scale-down")
    print(f"wrote {out}", flush=True)
    return results


if __name__ == "__main__":
    main()
