"""The Net2Net protocol on real data: teacher -> wider / deeper / both students vs scratch.

Protocol (CPU, ``--protocol cpu``, the default): CIFAR-10 (JPEG q75) downsampled (2x2 mean)
to 16x16, a seeded stratified 10k train subset, the full 10k test set
(``jnet2net.data.load_protocol``); batch 128, SGD-Nesterov, cosine, weight decay 5e-4, random
crop (2 px padding) and flip, float32. GPU (``--protocol full``): 32x32, all 50k images.

For each architecture (``--archs``: ``resnet``, a half-width ResNet-20 teacher (8, 16, 32);
``vgg``, a half-width VGG-11) and seed, the teacher trains ``--teacher-epochs`` (lr
``--lr``). Its students, for each change (``--changes``: ``wider`` to full width, ``deeper``
to ResNet-32 / VGG-13 depths, ``both``) and epoch budget (``--budgets``), train with their
own cosine schedule of that many epochs from the teacher's weights (``jnet2net.widen`` /
``deepen``, exact; ``--noise`` sets widen's new units), at peak learning rate
``--student-lr`` without warm-up; the same architecture trains from scratch at ``--lr``
with the same budget.

Every run's JSONL log (per-epoch test accuracy, cumulative training FLOPs from XLA's cost
analysis, step/compile/growth seconds) is kept in ``runs/``; finished runs are skipped when
the script runs again, so a study longer than one sitting resumes; teachers are cached as
msgpack files under ``--cache``. ``summary.json`` and ``table.md`` give, per change and
budget, means over seeds of: final accuracies; ``flops_ratio_to_target`` and
``seconds_ratio_to_target`` (the student's FLOPs / seconds to first reach scratch's final
accuracy minus 0.3 points, over scratch's own; the teacher's cost is reported beside it,
not counted); ``dip_pts`` (teacher's accuracy minus the student's lowest test accuracy
after growth, in points). ``--tag NAME`` runs a student recipe variant (``--noise``,
``--student-lr``, ``--student-warmup``) as ``student-NAME`` logs beside the default
students, sharing their teachers and scratch runs; its rows read ``arch/change[NAME]/bB``.
``--ema-decay D`` makes students and scratch runs evaluate a moving average of their weights
(``TrainConfig.ema_decay``; logs ``student[-NAME]-emaD`` and ``scratch-emaD``, paired in the
summary); ``dip_pts`` is then the average's dip and ``dip_live_pts`` the raw weights'.
``headline.md`` shows each change once, with the recipe of ``HEADLINE_RECIPES``, budgets as
columns.

CPU::

    python experiments/net2net/protocol.py --data-dir ../shared/data --archs resnet \\
        --changes wider --budgets 3 10 --seeds 0 1 2
    python experiments/net2net/protocol.py --config configs/net2net_cifar10_16px.py \\
        --data-dir ../shared/data --seeds 0   # the training settings from a config file

A config file's ``train`` section is the teacher's run and sets what ``--teacher-epochs``,
``--batch-size``, ``--lr`` and ``--dtype`` set (flags given still win); students and scratch
runs take it with their own epochs, learning rate and warm-up. Networks and data stay the
protocol's.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

import flax.serialization
import jax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import jnet2net
from experiments import common
from experiments.common import (
    epoch_records,
    finished,
    format_spread,
    mean_spread,
    run_seconds,
    to_target,
)
from experiments.net2net.run import student_model
from jnet2net import data as data_lib
from jnet2net.config import load_config
from jnet2net.models import resnet20, vgg11
from jnet2net.train import TrainConfig, fit

TARGET_MARGIN = 0.003
CHANGES = ("wider", "deeper", "both")


def architectures() -> dict[str, dict[str, Any]]:
    """Per family: the half-width teacher and each change's target sizes."""
    return {
        "resnet": {
            "teacher": resnet20(stage_widths=(8, 16, 32)),
            "widths": (16, 32, 64),
            "depths": (5, 5, 5),
        },
        "vgg": {
            "teacher": vgg11(stage_widths=(32, 64, 128, 256, 256)),
            "widths": (64, 128, 256, 512, 512),
            "depths": (2, 2, 2, 2, 2),
        },
    }


def base_config(args: argparse.Namespace) -> TrainConfig:
    """The training settings the flags start from: the ``--config`` file's ``train`` section
    (the teacher's run), or the protocol's."""
    if args.config:
        return load_config(args.config).train
    return TrainConfig(
        epochs=10,
        batch_size=128,
        learning_rate=0.1,
        warmup_epochs=0.0,
        weight_decay=5e-4,
        augment="crop_flip",
        crop_padding=2 if args.protocol == "cpu" else 4,
        compute_dtype=common.default_dtype(),
    )


def resolve_settings(args: argparse.Namespace) -> None:
    """Sets ``--teacher-epochs``, ``--batch-size`` and ``--lr`` when not given (``None``) to
    :func:`base_config`'s values (``--dtype`` stays ``None``: the base's)."""
    base = base_config(args)
    for name, field in (("teacher_epochs", "epochs"), ("batch_size", "batch_size")):
        if getattr(args, name) is None:
            setattr(args, name, getattr(base, field))
    if args.lr is None:
        args.lr = base.learning_rate


def config_for(
    args: argparse.Namespace,
    epochs: int,
    lr: float,
    seed: int,
    log: Any,
    warmup: float | None = None,
) -> TrainConfig:
    """:func:`base_config` with a run's epochs, learning rate, seed and log, ``warmup`` epochs
    (``None``: the base's) and the flags' batch size and dtype (after
    :func:`resolve_settings`)."""
    base = base_config(args)
    return base.replace(
        epochs=epochs,
        batch_size=args.batch_size,
        learning_rate=lr,
        warmup_epochs=base.warmup_epochs if warmup is None else warmup,
        compute_dtype=args.dtype or base.compute_dtype,
        seed=seed,
        progress=False,
        log_path=str(log),
        ema_decay=args.ema_decay,
    )


def grown(
    change: str, spec: dict[str, Any], teacher: Any, variables: Any, key: jax.Array, noise: str
) -> tuple[Any, Any]:
    """The Net2Net student of ``change``: deepen, then widen (both exact)."""
    model, new = teacher, variables
    deep_key, wide_key = jax.random.split(key)
    if change in ("deeper", "both"):
        model, new = jnet2net.deepen(model, new, depths=spec["depths"], key=deep_key)
    if change in ("wider", "both"):
        model, new = jnet2net.widen(model, new, widths=spec["widths"], key=wide_key, noise=noise)
    return model, new


def teacher_variables(args: argparse.Namespace, arch: str, seed: int, train: Any, test: Any) -> Any:
    """Trains (or reads from ``--cache``) the teacher of ``arch`` for ``seed``."""
    spec = architectures()[arch]
    out = pathlib.Path(args.out)
    log = out / "runs" / f"{arch}_teacher_s{seed}.jsonl"
    cache = pathlib.Path(args.cache) / f"{args.protocol}_{arch}_teacher_s{seed}.msgpack"
    model = spec["teacher"]
    if cache.exists() and finished(log, args.teacher_epochs):
        template = jax.eval_shape(
            lambda: model.init(jax.random.key(0), train.images[:1].astype("float32"), train=False)
        )
        return flax.serialization.from_bytes(template, cache.read_bytes())
    log.parent.mkdir(parents=True, exist_ok=True)
    config = config_for(args, args.teacher_epochs, args.lr, seed, log).replace(ema_decay=None)
    result = fit(model, train, test, config)
    variables = jax.device_get(result.state.variables)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(flax.serialization.to_bytes(variables))
    print(f"  {arch} teacher s{seed}: acc={result.history[-1]['test_acc']:.4f}", flush=True)
    return variables


def run_pair(
    args: argparse.Namespace,
    arch: str,
    change: str,
    budget: int,
    seed: int,
    data: tuple[Any, Any],
    teacher: Any,
) -> None:
    """The student and the scratch run of one change and budget (each skipped when done)."""
    spec = architectures()[arch]
    out = pathlib.Path(args.out) / "runs"
    train, test = data
    for init in (student_name(args.tag, args.ema_decay), scratch_name(args.ema_decay)):
        log = out / f"{arch}_{change}_{init}_b{budget}_s{seed}.jsonl"
        if finished(log, budget):
            continue
        start = time.perf_counter()
        warmup = None
        if init.startswith("student"):
            key = jax.random.key(2000 + seed)
            model, variables = grown(change, spec, spec["teacher"], teacher, key, args.noise)
            lr, warmup = args.student_lr, args.student_warmup
        else:
            model, variables, lr = student_model(change, spec, spec["teacher"]), None, args.lr
        config = config_for(args, budget, lr, seed, log, warmup)
        result = fit(model, train, test, config, variables=variables)
        last = result.history[-1]
        print(
            f"  {arch} {change:<6} {init:<7} b{budget:<3} s{seed} acc={last['test_acc']:.4f} "
            f"flops={last['train_flops']:.3g} wall={time.perf_counter() - start:.0f}s",
            flush=True,
        )


def student_name(tag: str | None, ema_decay: float | None = None) -> str:
    """The students' name in run logs: ``student``, or ``student-<tag>`` for a recipe variant;
    ``-ema<decay>`` is appended when the runs evaluate a moving average of the weights."""
    if tag is not None and not re.fullmatch(r"[A-Za-z0-9.\-]+", tag):
        raise ValueError(f"--tag takes letters, digits, '.' and '-', got {tag!r}")
    parts = ["student", tag, None if ema_decay is None else f"ema{ema_decay:g}"]
    return "-".join(p for p in parts if p)


def scratch_name(ema_decay: float | None) -> str:
    """Scratch runs' name: ``scratch``, or ``scratch-ema<decay>`` (evaluated the same way as
    the students it is compared with)."""
    return "scratch" if ema_decay is None else f"scratch-ema{ema_decay:g}"


def scratch_partner(recipe: str) -> str:
    """The scratch runs of a student recipe: ``'a-ema0.99'`` -> ``scratch-ema0.99``."""
    match = re.search(r"(?:^|-)ema([0-9.e-]+)$", recipe)
    return scratch_name(float(match.group(1)) if match else None)


def summarize(out: pathlib.Path, teacher_epochs: int) -> dict[str, Any]:
    """Means over seeds per (arch, change, student recipe, budget) from the finished logs."""
    rows: dict[str, Any] = {}
    for log in sorted((out / "runs").glob("*_student*_b*_s*.jsonl")):
        arch, change, init, budget_text, seed_text = log.stem.split("_")
        recipe = init.partition("-")[2]
        budget, seed = int(budget_text[1:]), int(seed_text[1:])
        partner = scratch_partner(recipe)
        scratch_log = out / "runs" / f"{arch}_{change}_{partner}_b{budget}_s{seed}.jsonl"
        teacher_log = out / "runs" / f"{arch}_teacher_s{seed}.jsonl"
        if not (finished(log, budget) and finished(scratch_log, budget)):
            continue
        student, scratch = epoch_records(log), epoch_records(scratch_log)
        teacher = epoch_records(teacher_log) if finished(teacher_log, teacher_epochs) else []
        target = scratch[-1]["test_acc"] - TARGET_MARGIN
        mine, theirs = to_target(student, target), to_target(scratch, target)
        teacher_acc = teacher[-1]["test_acc"] if teacher else None
        row = {
            "seed": seed,
            "student_acc": student[-1]["test_acc"],
            "scratch_acc": scratch[-1]["test_acc"],
            "teacher_acc": teacher_acc,
            "target_acc": target,
            "flops_ratio_to_target": mine[0] / theirs[0] if mine and theirs else None,
            "seconds_ratio_to_target": mine[1] / theirs[1] if mine and theirs else None,
            "teacher_flops_over_scratch": (
                teacher[-1]["train_flops"] / scratch[-1]["train_flops"] if teacher else None
            ),
            "teacher_seconds": run_seconds(teacher[-1]) if teacher else None,
            "dip_pts": (
                100 * (teacher_acc - min(r["test_acc"] for r in student)) if teacher else None
            ),
            # with a moving average: the dip of the raw (live) weights, trained identically
            "dip_live_pts": (
                100 * (teacher_acc - min(r["test_acc_live"] for r in student))
                if teacher and "test_acc_live" in student[0]
                else None
            ),
        }
        name = f"{arch}/{change}[{recipe}]/b{budget}" if recipe else f"{arch}/{change}/b{budget}"
        rows.setdefault(name, []).append(row)
    keys = (
        "student_acc",
        "scratch_acc",
        "teacher_acc",
        "flops_ratio_to_target",
        "seconds_ratio_to_target",
        "teacher_flops_over_scratch",
        "dip_pts",
        "dip_live_pts",
    )
    return {
        name: {"per_seed": seeds, "mean": {k: mean_spread([r[k] for r in seeds]) for k in keys}}
        for name, seeds in rows.items()
    }


def write_table(out: pathlib.Path, summary: dict[str, Any]) -> None:
    def cell(stats: dict[str, Any], scale: float = 1.0, digits: int = 2) -> str:
        if stats["mean"] is None:
            return "never" if stats["missing"] else "-"
        text = format_spread(stats, digits, scale)
        return text + (f" ({stats['missing']} never)" if stats["missing"] else "")

    rows = []
    for name, entry in summary.items():
        mean = entry["mean"]
        rows.append(
            [
                name,
                len(entry["per_seed"]),
                cell(mean["teacher_acc"], 100, 1),
                cell(mean["student_acc"], 100, 1),
                cell(mean["scratch_acc"], 100, 1),
                cell(mean["flops_ratio_to_target"]),
                cell(mean["seconds_ratio_to_target"]),
                cell(mean["teacher_flops_over_scratch"]),
                cell(mean["dip_pts"], 1, 1),
                cell(mean["dip_live_pts"], 1, 1)
                if mean["dip_live_pts"]["mean"] is not None
                else "-",
            ]
        )
    headers = [
        "arch/change/budget",
        "seeds",
        "teacher %",
        "student %",
        "scratch %",
        "student FLOPs to target / scratch's",
        "seconds to target / scratch's",
        "teacher FLOPs / scratch run",
        "dip below teacher (pts)",
        "live weights' dip (pts)",
    ]
    (out / "table.md").write_text(
        "# Net2Net students vs scratch (target: scratch's final accuracy - 0.3 points; the "
        "teacher's cost is not counted in the ratios)\n\n"
        + common.markdown_table(headers, rows)
        + "\n"
    )


# The recipe each change is shown with in ``headline.md``: fresh units for the widened
# students, student learning rate 0.05, every run evaluated through a moving average.
HEADLINE_RECIPES = {
    "wider": "fresh-lr0.05-ema0.99",
    "deeper": "ema0.99",
    "both": "fresh-lr0.05-ema0.99",
}
HEADLINE_SEEDS = 3


def headline_cell(entry: dict[str, Any] | None) -> str:
    """``"student vs scratch: FLOPs ratio to target"`` of one budget's means (``-``: not run)."""
    if entry is None:
        return "-"
    mean, seeds = entry["mean"], len(entry["per_seed"])
    ratio = mean["flops_ratio_to_target"]
    if ratio["mean"] is None:
        reached = "never"
    else:
        reached = f"{ratio['mean']:.2f}" + (
            f" ({ratio['missing']} never)" if ratio["missing"] else ""
        )
    text = (
        f"{100 * mean['student_acc']['mean']:.1f} vs {100 * mean['scratch_acc']['mean']:.1f}: "
        + reached
    )
    if seeds < HEADLINE_SEEDS:
        text += f" [{seeds} seed{'s' if seeds > 1 else ''}]"
    return text


def write_headline(
    out: pathlib.Path,
    summary: dict[str, Any],
    recipes: dict[str, str] = HEADLINE_RECIPES,
    budgets: Sequence[int] = (3, 10, 20),
) -> str:
    """``headline.md``: per architecture and change, its ``recipes`` entry at each budget
    (student vs scratch accuracy, FLOPs to scratch's final accuracy over scratch's) and the
    worst mean dip below the teacher. Returns the text written."""
    rows = []
    for arch in sorted({name.split("/")[0] for name in summary}):
        for change in CHANGES:
            recipe = recipes.get(change, "")
            prefix = f"{arch}/{change}[{recipe}]" if recipe else f"{arch}/{change}"
            entries = [summary.get(f"{prefix}/b{budget}") for budget in budgets]
            if not any(entries):
                continue
            dips = [e["mean"]["dip_pts"]["mean"] for e in entries if e is not None]
            dips = [d for d in dips if d is not None]
            rows.append(
                [f"{arch}/{change}", recipe or "-"]
                + [headline_cell(e) for e in entries]
                + [f"{max(dips):.1f}" if dips else "-"]
            )
    headers = ["arch/change", "recipe"] + [f"{b} epochs" for b in budgets]
    headers.append("worst dip below teacher (pts)")
    text = (
        "# Net2Net students vs scratch, recommended recipes (student % vs scratch %: the "
        "student's training FLOPs to scratch's final accuracy - 0.3 points over scratch's; "
        f"means over {HEADLINE_SEEDS} seeds unless marked; teacher not counted)\n\n"
        + common.markdown_table(headers, rows)
        + "\n"
    )
    (out / "headline.md").write_text(text)
    return text


def build_parser() -> argparse.ArgumentParser:
    """The script's options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--protocol", choices=("cpu", "full"), default="cpu")
    parser.add_argument("--data-dir", default=None, help="folder with cifar10_jpeg.npz or tfds")
    parser.add_argument("--npz", default=None, help="the cifar10_jpeg.npz pack (or raw npz)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--cache", default="/tmp/jnet2net_teachers", help="teacher weights")
    parser.add_argument("--archs", nargs="+", default=["resnet"], choices=("resnet", "vgg"))
    parser.add_argument("--changes", nargs="+", default=list(CHANGES), choices=CHANGES)
    parser.add_argument("--budgets", type=int, nargs="+", default=[3, 10, 20])
    parser.add_argument(
        "--config",
        default=None,
        help="a run config (e.g. configs/net2net_cifar10_16px.py) whose train section is the "
        "teacher's run and sets the defaults of --teacher-epochs, --batch-size, --lr, --dtype",
    )
    parser.add_argument("--teacher-epochs", type=int, default=None, help="default 10")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--noise", default="split", help="widen's noise for the students")
    parser.add_argument("--batch-size", type=int, default=None, help="default 128")
    parser.add_argument("--lr", type=float, default=None, help="default 0.1 (teacher, scratch)")
    parser.add_argument("--student-lr", type=float, default=0.05)
    parser.add_argument(
        "--student-warmup", type=float, default=0.0, help="students' linear warm-up, epochs"
    )
    parser.add_argument(
        "--tag",
        default=None,
        help="a student recipe's name: its logs are student-<tag> (scratch and teachers shared)",
    )
    parser.add_argument(
        "--ema-decay",
        type=float,
        default=None,
        help="students and scratch evaluate a moving average of their weights "
        "(TrainConfig.ema_decay); logs student[-tag]-ema<decay> and scratch-ema<decay>",
    )
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on an accelerator")
    parser.add_argument("--train-subset", type=int, default=10000, help="cpu protocol only")
    parser.add_argument("--summarize", action="store_true", help="only write the summary")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    resolve_settings(args)
    default_out = "cifar10-16px" if args.protocol == "cpu" else "cifar10-32px"
    out = pathlib.Path(args.out or pathlib.Path(__file__).parent / "results" / default_out)
    args.out = str(out)
    if not args.summarize:
        source = args.npz or args.data_dir
        if args.protocol == "cpu":
            data = data_lib.load_protocol(
                "cifar10", data_dir=source, train_subset=args.train_subset
            )
        else:
            data = data_lib.load_protocol(
                "cifar10", data_dir=source, resolution=None, train_subset=None
            )
        for seed in args.seeds:
            for arch in args.archs:
                teacher = teacher_variables(args, arch, seed, *data)
                for change in args.changes:
                    for budget in args.budgets:
                        run_pair(args, arch, change, budget, seed, data, teacher)
    summary = summarize(out, args.teacher_epochs)
    payload = {
        "rows": summary,
        "settings": {
            k: v
            for k, v in vars(args).items()
            if k != "summarize" and not (k == "config" and v is None)
        },
        "environment": common.environment(
            "CIFAR-10 (JPEG q75) 16x16, 10k stratified train subset, full test set"
            if args.protocol == "cpu"
            else "CIFAR-10 (JPEG q75) 32x32, full"
        ),
    }
    common.write_json(out / "summary.json", payload)
    write_table(out, summary)
    print(write_headline(out, summary))
    print((out / "table.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
