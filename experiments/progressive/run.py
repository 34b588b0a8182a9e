"""Progressive growth inside one run against scratch, at equal epochs and at equal compute.

Protocol (CPU, ``--protocol cpu``, the default): CIFAR-10 (JPEG q75) downsampled (2x2 mean)
to 16x16, a seeded stratified 10k train subset, the full 10k test set
(``jnet2net.data.load_protocol``); ResNet-20, batch 128, SGD-Nesterov lr 0.1, cosine over
the whole run, weight decay 5e-4, random crop (2 px padding at 16x16) and flip, float32.
GPU (``--protocol full``): the same at 32x32 on all 50k training images, 4 px padding.

Arms (one ``fit`` each; ``--arms`` picks them, ``--seeds`` the training seeds):

* ``scratch``: the final architecture (widths 16, 32, 64) from random init, ``--epochs``;
* ``scratch_eq``: the same with fewer epochs (its own schedule), so its training FLOPs equal
  the ``--headline`` progressive arm's (measured from that arm's log for the seed);
* ``<recipe>`` (``<recipe>@<epochs>`` for another budget, e.g. ``fresh@14``; targets stay
  scratch's at ``--epochs``): quarter -> half -> full width (4, 8, 16) -> (8, 16, 32) ->
  (16, 32, 64) at epochs ``--grow-at`` (default 0.3 and 0.6 of the run) in one cosine
  schedule; the recipe sets how new units start (:data:`RECIPES`): replicas with
  zero-sum split noise of scale s (``split<s>``), plain replicas (``none``), replicas with
  the paper's (inexact) noise (``paper``), fresh units with zero outgoing weights
  (``fresh``), with a learning rate re-warm after each event (``..._rewarm``) or with reset
  optimizer moments (``..._reset``); ``depth_fresh`` grows depth too (1 -> 2 -> 3 blocks per stage);
  ``fresh_half`` starts at half width and grows once, at the first ``--grow-at``;
* ``scratch@<epochs>``: scratch with another budget; with ``scratch`` and ``scratch_eq`` these
  make the budget curve against which each grown run's final accuracy is compared at its
  own training FLOPs (linear interpolation).

Every run's per-epoch log (test accuracy, cumulative training FLOPs from XLA's cost
analysis, step seconds, compile and growth seconds) goes to ``runs/<arm>_s<seed>.jsonl``;
a finished run is skipped when the script runs again, so a study longer than one sitting
resumes. ``--summarize`` (after the runs, or alone) writes ``summary.json``,
``table.md`` and ``acc_vs_flops.png`` / ``acc_vs_seconds.png``:

* ``target_acc``: scratch's final accuracy minus 0.3 points (per seed);
* ``flops_ratio_to_target`` / ``seconds_ratio_to_target``: the grown run's FLOPs / seconds
  (training steps + compiles + growth; evaluation excluded) at its first epoch with
  ``test_acc >= target_acc``, over scratch's at its own first such epoch (``null`` where
  never reached);
* at equal FLOPs: the grown run's final accuracy minus scratch's at the same FLOPs,
  interpolated over the scratch budgets run (``scratch_eq``, ``scratch@E``, ``scratch``).

CPU (2 cores, about 6 CPU-minutes per scratch run, 3 per grown run)::

    python experiments/progressive/run.py --data-dir ../shared/data --seeds 0 1 2
    python experiments/progressive/run.py --summarize
    python experiments/progressive/run.py --config configs/resnet20_cifar10_progressive.py \\
        --data-dir ../shared/data --seeds 0   # the training settings from a config file

GPU (full CIFAR-10, wired into benchmarks/gpu_suite.sh)::

    python experiments/progressive/run.py --protocol full --npz .data/cifar10_jpeg.npz \\
        --epochs 30 --out experiments/progressive/results/cifar10-32px
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from experiments import common
from experiments.common import (
    epoch_records,
    finished,
    format_spread,
    mean_spread,
    run_seconds,
    to_target,
)
from jnet2net import data as data_lib
from jnet2net.config import load_config
from jnet2net.models import ResNet
from jnet2net.train import Grow, TrainConfig, fit, read_jsonl

FINAL_WIDTHS = (16, 32, 64)
STAGE_WIDTHS = ((4, 8, 16), (8, 16, 32), FINAL_WIDTHS)
DEPTH_SCHEDULE = ((1, 1, 1), (2, 2, 2), (3, 3, 3))
TARGET_MARGIN = 0.003


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How a progressive arm grows: ``Grow`` options shared by its events."""

    noise: str = "split"
    noise_scale: float = 0.1
    moments: str = "map"
    rewarm_epochs: float = 0.0
    depth: bool = False
    start: int = 0  # index into STAGE_WIDTHS of the starting width


RECIPES: dict[str, Recipe] = {
    "split0.1": Recipe("split", 0.1),
    "split0.5": Recipe("split", 0.5),
    "split1.0": Recipe("split", 1.0),
    "none": Recipe("none", 0.0),
    "paper": Recipe("paper", 0.1),
    "fresh": Recipe("fresh"),
    "fresh_rewarm": Recipe("fresh", rewarm_epochs=0.5),
    "split1.0_rewarm": Recipe("split", 1.0, rewarm_epochs=0.5),
    "fresh_reset": Recipe("fresh", moments="reset"),
    "depth_fresh": Recipe("fresh", depth=True),
    "fresh_half": Recipe("fresh", start=1),
}


# --- set-up -------------------------------------------------------------------------------


def protocol_data(args: argparse.Namespace) -> tuple[data_lib.Dataset, data_lib.Dataset]:
    """The CPU protocol (16x16, 10k subset) or the full data set."""
    source = args.npz or args.data_dir
    if args.protocol == "cpu":
        return data_lib.load_protocol("cifar10", data_dir=source, train_subset=args.train_subset)
    return data_lib.load_protocol("cifar10", data_dir=source, resolution=None, train_subset=None)


def train_config(
    args: argparse.Namespace, epochs: int, seed: int, log: pathlib.Path
) -> TrainConfig:
    """The protocol's training settings, or with ``--config`` the file's ``train`` section,
    with the arm's epochs and seed; ``--batch-size``, ``--lr``, ``--dtype`` and
    ``--ema-decay`` set theirs."""
    if args.config:
        base = load_config(args.config).train
    else:
        base = TrainConfig(
            batch_size=128,
            learning_rate=0.1,
            weight_decay=5e-4,
            augment="crop_flip",
            crop_padding=2 if args.protocol == "cpu" else 4,
            compute_dtype=common.default_dtype(),
        )
    given = {
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "compute_dtype": args.dtype,
        "ema_decay": args.ema_decay,
    }
    return base.replace(
        **{k: v for k, v in given.items() if v is not None},
        epochs=epochs,
        seed=seed,
        progress=False,
        log_path=str(log),
    )


def arm_plan(arm: str, grow_at: Sequence[float]) -> tuple[ResNet, tuple[Grow, ...]]:
    """The starting ResNet-20-family module and growth events of an arm."""
    if arm.startswith("scratch"):
        return ResNet((3, 3, 3), FINAL_WIDTHS, num_classes=10), ()
    recipe = RECIPES[arm.split("@")[0]]
    depths = DEPTH_SCHEDULE if recipe.depth else ((3, 3, 3),) * 3
    widths = STAGE_WIDTHS[recipe.start :]
    grow_at = grow_at[: len(widths) - 1]
    model = ResNet(depths[0], widths[0], num_classes=10)
    events = tuple(
        Grow(
            at,
            widths=widths[i + 1],
            depths=depths[i + 1] if recipe.depth else None,
            noise=recipe.noise,
            noise_scale=recipe.noise_scale,
            moments=recipe.moments,
            rewarm_epochs=recipe.rewarm_epochs,
        )
        for i, at in enumerate(grow_at)
    )
    return model, events


def arm_epochs(arm: str, default: int) -> int:
    """``'fresh@14'`` trains 14 epochs (growing at the same fractions); others ``default``."""
    _, _, epochs = arm.partition("@")
    return int(epochs) if epochs else default


def log_path(out: pathlib.Path, arm: str, seed: int) -> pathlib.Path:
    return out / "runs" / f"{arm}_s{seed}.jsonl"


def equal_flops_epochs(out: pathlib.Path, headline: str, seed: int, epochs: int) -> int | None:
    """Epochs of full-width scratch whose FLOPs match the headline arm's run (``None``: not
    run yet)."""
    grown, scratch = log_path(out, headline, seed), log_path(out, "scratch", seed)
    if not (finished(grown, epochs) and finished(scratch, epochs)):
        return None
    ratio = epoch_records(grown)[-1]["train_flops"] / epoch_records(scratch)[-1]["train_flops"]
    return max(1, round(ratio * epochs))


# --- runs ---------------------------------------------------------------------------------


def run_arm(
    args: argparse.Namespace,
    arm: str,
    seed: int,
    train: data_lib.Dataset,
    test: data_lib.Dataset,
) -> None:
    """Trains one arm for one seed unless its log is already complete."""
    out = pathlib.Path(args.out)
    path = log_path(out, arm, seed)
    epochs = arm_epochs(arm, args.epochs)
    if arm == "scratch_eq":
        epochs = equal_flops_epochs(out, args.headline, seed, args.epochs)
        if epochs is None:
            print(f"  {arm} s{seed}: needs scratch and {args.headline} first; skipped")
            return
    if finished(path, epochs):
        print(f"  {arm} s{seed}: done")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    grow_at = [f * epochs for f in args.grow_at]
    model, events = arm_plan(arm, grow_at)
    config = train_config(args, epochs, seed, path)
    start = time.perf_counter()
    result = fit(model, train, test, config, growth=events, growth_key=jax.random.key(1000 + seed))
    last = [r for r in result.history if "event" not in r][-1]
    print(
        f"  {arm:<16} s{seed} epochs={epochs:<3} acc={last['test_acc']:.4f} "
        f"flops={last['train_flops']:.3g} train_s={last['train_s']:.0f} "
        f"wall={time.perf_counter() - start:.0f}s",
        flush=True,
    )


# --- summary ------------------------------------------------------------------------------


def summarize(out: pathlib.Path, epochs: int, headline: str) -> dict[str, Any]:
    """``summary.json``'s content from the finished logs under ``out/runs``."""
    arms: dict[str, Any] = {}
    seeds = sorted(
        {int(p.stem.rsplit("_s", 1)[1]) for p in (out / "runs").glob("scratch_s*.jsonl")}
    )
    seeds = [s for s in seeds if finished(log_path(out, "scratch", s), epochs)]
    names = sorted({p.stem.rsplit("_s", 1)[0] for p in (out / "runs").glob("*.jsonl")})
    for arm in names:
        per_seed = []
        for seed in seeds:
            path = log_path(out, arm, seed)
            scratch = epoch_records(log_path(out, "scratch", seed))
            if not path.exists():
                continue
            records = epoch_records(path)
            run_epochs = (
                equal_flops_epochs(out, headline, seed, epochs)
                if arm == "scratch_eq"
                else arm_epochs(arm, epochs)
            )
            if not records or records[-1]["epoch"] != run_epochs:
                continue
            target = scratch[-1]["test_acc"] - TARGET_MARGIN
            mine, theirs = to_target(records, target), to_target(scratch, target)
            events = [r for r in read_jsonl(path) if r.get("event") == "grow"]
            per_seed.append(
                {
                    "seed": seed,
                    "epochs": records[-1]["epoch"],
                    "final_acc": records[-1]["test_acc"],
                    "scratch_final_acc": scratch[-1]["test_acc"],
                    "target_acc": target,
                    "flops": records[-1]["train_flops"],
                    "seconds": run_seconds(records[-1]),
                    "flops_ratio": records[-1]["train_flops"] / scratch[-1]["train_flops"],
                    "seconds_ratio": run_seconds(records[-1]) / run_seconds(scratch[-1]),
                    "flops_ratio_to_target": mine[0] / theirs[0] if mine and theirs else None,
                    "seconds_ratio_to_target": mine[1] / theirs[1] if mine and theirs else None,
                    "max_output_error": max((e["output_error"] for e in events), default=None),
                    "acc_before_after_events": [_around(records, e["step"]) for e in events],
                }
            )
        if per_seed:
            arms[arm] = {
                "per_seed": per_seed,
                "mean": {
                    key: mean_spread([row[key] for row in per_seed])
                    for key in (
                        "final_acc",
                        "flops_ratio",
                        "seconds_ratio",
                        "flops_ratio_to_target",
                        "seconds_ratio_to_target",
                    )
                },
            }
    for arm, entry in arms.items():
        if arm.startswith("scratch"):
            continue
        gains = []
        for row in entry["per_seed"]:
            budget_curve = sorted(
                (r["flops"], r["final_acc"])
                for name, other in arms.items()
                if name.startswith("scratch")
                for r in other["per_seed"]
                if r["seed"] == row["seed"]
            )
            flops = [f for f, _ in budget_curve]
            if len(flops) > 1 and flops[0] <= row["flops"] * 1.02 and row["flops"] <= flops[-1]:
                at_equal = float(np.interp(row["flops"], flops, [a for _, a in budget_curve]))
                row["scratch_acc_at_equal_flops"] = at_equal
                gains.append((row["final_acc"] - at_equal) * 100)
        entry["mean"]["points_over_scratch_at_equal_flops"] = mean_spread(gains) if gains else None
    return {"epochs": epochs, "headline": headline, "seeds": seeds, "arms": arms}


def _around(records: list[dict[str, Any]], step: int) -> list[float | None]:
    before = [r["test_acc"] for r in records if r["step"] <= step]
    after = [r["test_acc"] for r in records if r["step"] > step]
    return [before[-1] if before else None, after[0] if after else None]


def write_table(out: pathlib.Path, summary: dict[str, Any]) -> None:
    def pct(value: Any) -> str:
        return "-" if value is None else f"{100 * value:.1f}"

    def ratio(stats: dict[str, Any] | None) -> str:
        if not stats or stats["mean"] is None:
            return "never"
        text = format_spread(stats)
        return text + (f" ({stats['missing']} never)" if stats["missing"] else "")

    rows = []
    for arm, entry in sorted(summary["arms"].items()):
        mean = entry["mean"]
        acc = mean["final_acc"]
        gain = mean.get("points_over_scratch_at_equal_flops")
        rows.append(
            [
                arm,
                acc["n"],
                f"{pct(acc['mean'])} ± {pct(acc['std'])}" if acc["std"] else pct(acc["mean"]),
                ratio(mean["flops_ratio"]),
                ratio(mean["seconds_ratio"]),
                ratio(mean["flops_ratio_to_target"]),
                ratio(mean["seconds_ratio_to_target"]),
                "-" if not gain else f"{gain['mean']:+.1f}",
            ]
        )
    headers = [
        "arm",
        "seeds",
        "final acc %",
        "FLOPs / scratch",
        "seconds / scratch",
        "FLOPs to target / scratch's",
        "seconds to target / scratch's",
        "points over scratch at equal FLOPs",
    ]
    text = (
        f"# Progressive growth, {summary['epochs']} epochs (target: scratch's final accuracy"
        " - 0.3 points)\n\n" + common.markdown_table(headers, rows) + "\n"
    )
    (out / "table.md").write_text(text)


def plot(out: pathlib.Path, summary: dict[str, Any], arms: Sequence[str]) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    seed = summary["seeds"][0] if summary["seeds"] else 0
    for arm in arms:
        path = log_path(out, arm, seed)
        if not path.exists():
            continue
        records = epoch_records(path)
        acc = [100 * r["test_acc"] for r in records]
        axes[0].plot([r["train_flops"] / 1e12 for r in records], acc, marker=".", label=arm)
        axes[1].plot([run_seconds(r) for r in records], acc, marker=".", label=arm)
    axes[0].set_xlabel("training TFLOPs")
    axes[1].set_xlabel("training seconds (steps + compiles + growth)")
    for ax in axes:
        ax.set_ylabel("test accuracy %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"ResNet-20, CIFAR-10 16x16 (10k train), seed {seed}")
    fig.tight_layout()
    fig.savefig(out / "acc_vs_compute.png", dpi=120)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    """The script's options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--protocol", choices=("cpu", "full"), default="cpu")
    parser.add_argument("--data-dir", default=None, help="folder with cifar10_jpeg.npz or tfds")
    parser.add_argument("--npz", default=None, help="the cifar10_jpeg.npz pack")
    parser.add_argument("--train-subset", type=int, default=10000)
    parser.add_argument("--out", default=None)
    parser.add_argument(
        "--config",
        default=None,
        help="a run config (e.g. configs/resnet20_cifar10_progressive.py) whose train section "
        "sets the training settings and --epochs' default; the arms set model, growth, seeds",
    )
    parser.add_argument("--epochs", type=int, default=None, help="default: 10, or the config's")
    parser.add_argument("--grow-at", type=float, nargs="+", default=[0.3, 0.6])
    parser.add_argument("--arms", nargs="+", default=["scratch", "fresh", "scratch_eq"])
    parser.add_argument("--headline", default="fresh", help="arm that scratch_eq matches")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=None, help="default: 128")
    parser.add_argument("--lr", type=float, default=None, help="default: 0.1")
    parser.add_argument("--dtype", default=None)
    parser.add_argument(
        "--ema-decay",
        type=float,
        default=None,
        help="every arm keeps a moving average of its weights and is evaluated through it",
    )
    parser.add_argument("--summarize", action="store_true", help="only write the summary")
    parser.add_argument(
        "--plot-arms",
        nargs="+",
        default=["scratch", "scratch@7", "scratch_eq", "fresh", "fresh@14", "split0.1"],
        help="arms drawn in acc_vs_compute.png",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.epochs is None:
        args.epochs = load_config(args.config).train.epochs if args.config else 10
    default_out = "cifar10-16px" if args.protocol == "cpu" else "cifar10-32px"
    out = pathlib.Path(args.out or pathlib.Path(__file__).parent / "results" / default_out)
    args.out = str(out)
    unknown = [
        a for a in args.arms if not a.startswith("scratch") and a.split("@")[0] not in RECIPES
    ]
    if unknown:
        parser.error(f"unknown arms {unknown}; known: scratch, scratch_eq, {sorted(RECIPES)}")
    if not args.summarize:
        train, test = protocol_data(args)
        print(f"data: train {train.images.shape}, test {test.images.shape}", flush=True)
        for seed in args.seeds:
            for arm in args.arms:
                run_arm(args, arm, seed, train, test)
    summary = summarize(out, args.epochs, args.headline)
    summary["protocol"] = args.protocol
    summary["environment"] = common.environment(
        "CIFAR-10 (JPEG q75) 16x16, 10k stratified train subset, full test set"
        if args.protocol == "cpu"
        else "CIFAR-10 (JPEG q75) 32x32, full"
    )
    common.write_json(out / "summary.json", summary)
    write_table(out, summary)
    plot(out, summary, args.plot_arms)
    print((out / "table.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
