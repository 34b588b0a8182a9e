"""Net2Net experiments: grown students against scratch and random-pad students, per budget.

Protocol. A teacher (half-width ResNet-20 and half-width VGG-11 on CIFAR-10; a tiny ResNet
and a tiny VGG on digits) is trained once. Three students are made from it:

* ``wider``: ``jnet2net.widen`` to full width;
* ``deeper``: ``jnet2net.deepen`` to more blocks / conv layers;
* ``both``: deeper, then wider.

Each student architecture is trained, for every epoch budget, with a *full* schedule of that
many epochs (cosine to zero) from three starts: the Net2Net init (``noise='split'``, exact),
a random init (``scratch``) and ``random pad`` (the teacher's weights copied into the
leading slice of each leaf of a random init; new units and new blocks stay random). For
``wider`` the symmetry breaking is compared too: ``noise='none'`` (replicas stay tied),
``'split'`` (zero-sum split, exact) and ``'paper'`` (plain noise, not exact). The student's
learning rate and warm-up are recorded with every run.

Outputs in ``experiments/net2net/results/<dataset>/``: ``results.json`` (every run's
curve, config and provenance), ``table.md`` (steps and seconds to reach 98% of the scratch
run's final accuracy, for grown runs with the teacher's seconds added, against scratch's own;
final accuracy; teacher + student time against scratch time; final accuracy per budget),
and PNGs: ``curves_<arch>_<change>.png`` (accuracy against steps and seconds at the
largest budget, grown runs shifted by their teacher) and
``budget_<arch>_<change>.png`` (final accuracy against budget and seconds).

GPU, CIFAR-10 (full protocol: about 1,350 epochs of half- and full-width ResNet-20/VGG-11
in all; not yet timed on a GPU; `--archs resnet` or `--budgets 5 10` run a part)::

    python experiments/net2net/run.py --dataset cifar10 --npz data/cifar10_jpeg.npz

CPU, reduced run on digits (2 cores, a few minutes)::

    python experiments/net2net/run.py --dataset digits
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import jnet2net
from experiments import common
from jnet2net.data import normalize
from jnet2net.models import VGG, ResNet, resnet20, vgg11
from jnet2net.train import TrainConfig, init_variables
from jnet2net.variables import flatten, unflatten_like

TARGET_FRACTION = 0.98
CHANGES = ("wider", "deeper", "both")
NOISES = ("split", "none", "paper")


# --- architectures ------------------------------------------------------------------------


def architectures(dataset: str) -> dict[str, dict[str, Any]]:
    """Per family: the teacher and the target fields of each change.

    Returns:
      ``{arch: {'teacher': module, 'widths': tuple, 'depths': tuple}}``.
    """
    if dataset == "digits":
        return {
            "resnet": {
                "teacher": ResNet(stage_depths=(1, 1), stage_widths=(4, 8)),
                "widths": (8, 16),
                "depths": (2, 2),
            },
            "vgg": {
                "teacher": VGG(stage_depths=(1, 1), stage_widths=(4, 8)),
                "widths": (8, 16),
                "depths": (2, 2),
            },
        }
    return {
        "resnet": {
            "teacher": resnet20(stage_widths=(8, 16, 32)),
            "widths": (16, 32, 64),
            "depths": (5, 5, 5),  # ResNet-32 depths
        },
        "vgg": {
            "teacher": vgg11(stage_widths=(32, 64, 128, 256, 256)),
            "widths": (64, 128, 256, 512, 512),
            "depths": (2, 2, 2, 2, 2),  # VGG-13 depths
        },
    }


def settings(dataset: str, tiny: bool) -> dict[str, Any]:
    """Budgets, teacher epochs, batch and learning rate of a dataset's protocol."""
    if tiny:
        return {"budgets": (1,), "teacher_epochs": 1, "batch_size": 32, "lr": 0.05}
    if dataset == "digits":
        return {"budgets": (2, 5), "teacher_epochs": 6, "batch_size": 32, "lr": 0.05}
    return {"budgets": (5, 10, 15, 30), "teacher_epochs": 15, "batch_size": 128, "lr": 0.1}


# --- students -----------------------------------------------------------------------------


def grow(
    change: str,
    spec: dict[str, Any],
    teacher: Any,
    variables: Any,
    *,
    key: jax.Array,
    noise: str,
    calibration: jax.Array,
) -> tuple[Any, Any]:
    """The Net2Net student of ``change`` (``'wider'``, ``'deeper'`` or ``'both'``)."""
    model, new = teacher, variables
    k_deep, k_wide = jax.random.split(key)
    if change in ("deeper", "both"):
        model, new = jnet2net.deepen(
            model, new, depths=spec["depths"], key=k_deep, calibration_batch=calibration
        )
    if change in ("wider", "both"):
        model, new = jnet2net.widen(model, new, widths=spec["widths"], key=k_wide, noise=noise)
    return model, new


def student_model(change: str, spec: dict[str, Any], teacher: Any) -> Any:
    """The student architecture of ``change`` (a clone of the teacher with new fields)."""
    fields: dict[str, Any] = {}
    if change in ("deeper", "both"):
        fields["stage_depths"] = spec["depths"]
    if change in ("wider", "both"):
        fields["stage_widths"] = spec["widths"]
        if isinstance(teacher, ResNet) and teacher.inner_widths is not None:
            fields["inner_widths"] = None
    return teacher.clone(**fields)


def random_pad(teacher_vars: Any, student_random: Any) -> Any:
    """The teacher's weights in the leading slice of each student leaf; the rest random.

    Args:
      teacher_vars: ``{'params', 'batch_stats'}`` of the teacher.
      student_random: a random init of the student (every shared leaf at least as large).

    Returns:
      Student variables: shared leaves ``new[:a, :b, ...] = old``; leaves the teacher lacks
      (new blocks or layers) keep their random values. Not function-preserving.
    """
    old = flatten(teacher_vars)
    new = flatten(student_random)
    out = {}
    for path, leaf in new.items():
        leaf = np.array(leaf)
        if path in old:
            src = np.asarray(old[path])
            if src.ndim != leaf.ndim or any(
                a > b for a, b in zip(src.shape, leaf.shape, strict=True)
            ):
                raise ValueError(
                    f"random_pad: {'/'.join(path)} is {src.shape} in the teacher and "
                    f"{leaf.shape} in the student; the student must be at least as large"
                )
            leaf[tuple(slice(0, n) for n in src.shape)] = src
        out[path] = leaf
    return unflatten_like(out, student_random)


# --- the protocol -------------------------------------------------------------------------


def student_config(base: TrainConfig, epochs: int, lr_scale: float, warmup: float) -> TrainConfig:
    """The student's config for a budget: ``lr * lr_scale`` and ``warmup`` epochs."""
    return base.replace(
        epochs=epochs,
        learning_rate=base.learning_rate * lr_scale,
        warmup_epochs=min(warmup, float(epochs)),
    )


def run_family(
    arch: str,
    spec: dict[str, Any],
    train: Any,
    test: Any,
    base: TrainConfig,
    budgets: Sequence[int],
    teacher_epochs: int,
    *,
    lr_scale: float,
    warmup: float,
    changes: Sequence[str] = CHANGES,
    noises: Sequence[str] = NOISES,
) -> dict[str, Any]:
    """Teacher, then every change x start x budget for one family; JSON-ready results."""
    key = jax.random.key(base.seed)
    teacher = spec["teacher"]
    print(f"[{arch}] teacher {teacher_epochs} epochs", flush=True)
    teacher_run, teacher_vars = common.train_run(
        f"{arch} teacher", teacher, train, test, base.replace(epochs=teacher_epochs)
    )
    calib = normalize(jnp.asarray(train.images[:256]), train.mean, train.std)
    runs: dict[str, list[dict[str, Any]]] = {}
    for change in changes:
        model = student_model(change, spec, teacher)
        random_vars = init_variables(model, train.images, key=jax.random.fold_in(key, 7))
        starts: dict[str, Any] = {
            "scratch": None,
            "random_pad": random_pad(teacher_vars, random_vars),
        }
        for noise in noises if change == "wider" else ("split",):
            grown_model, grown = grow(
                change, spec, teacher, teacher_vars, key=key, noise=noise, calibration=calib
            )
            if grown_model != model:
                raise AssertionError(f"grown {grown_model} differs from student {model}")
            starts[f"net2net_{noise}"] = jax.device_get(grown)
        entries = []
        for epochs in budgets:
            for start, variables in starts.items():
                grown_start = start != "scratch"
                config = (
                    student_config(base, epochs, lr_scale, warmup)
                    if grown_start
                    else base.replace(epochs=epochs)
                )
                run, _ = common.train_run(
                    f"{arch}-{change} {start}",
                    model,
                    train,
                    test,
                    config,
                    variables=variables,
                    start=start,
                    change=change,
                    teacher_s=teacher_run.total_s if grown_start else 0.0,
                    teacher_steps=teacher_run.step[-1] if grown_start else 0,
                )
                entries.append(run.to_dict())
        runs[change] = entries
    return {
        "teacher": teacher_run.to_dict(),
        "teacher_model": jnet2net.model_config(teacher),
        "students": {c: jnet2net.model_config(student_model(c, spec, teacher)) for c in changes},
        "runs": runs,
    }


def summary_rows(family: dict[str, Any], arch: str) -> list[list[Any]]:
    """Table rows at the largest budget: reach 98% of scratch, final accuracy, times.

    The target is 98% of the final accuracy of the scratch run with the same budget; steps
    and seconds to it are compared with that scratch run's own steps and seconds to it.
    """
    rows = []
    for change, entries in family["runs"].items():
        largest = max(e["epochs"] for e in entries)
        at = [e for e in entries if e["epochs"] == largest]
        scratch = next(e for e in at if e["extra"]["start"] == "scratch")
        target = TARGET_FRACTION * scratch["final_acc"]
        scratch_step, scratch_s = _reach(scratch, target)
        for entry in at:
            step, seconds = _reach(entry, target)
            teacher_s = entry["extra"]["teacher_s"]
            rows.append(
                [
                    f"{arch}-{change}",
                    entry["extra"]["start"],
                    largest,
                    entry["config"]["learning_rate"],
                    entry["config"]["warmup_epochs"],
                    entry["final_acc"],
                    entry["final_acc"] - scratch["final_acc"],
                    step,
                    None if step is None or not scratch_step else step / scratch_step,
                    None if seconds is None else seconds + teacher_s,
                    scratch_s,
                    teacher_s,
                    entry["total_s"],
                    teacher_s + entry["total_s"],
                    scratch["total_s"],
                ]
            )
    return rows


SUMMARY_HEADERS = (
    "student",
    "start",
    "epochs",
    "lr",
    "warm-up ep",
    "final acc",
    "vs scratch",
    "steps to 98%",
    "steps / scratch's",
    "s to 98% (+teacher)",
    "scratch s to 98%",
    "teacher s",
    "student s",
    "teacher+student s",
    "scratch s",
)


def _reach(entry: dict[str, Any], target: float) -> tuple[int | None, float | None]:
    run = common.Run(
        **{k: entry[k] for k in ("label", "epochs", "step", "train_s", "test_acc", "config")}
    )
    return common.first_reaching(run, target)


def budget_rows(family: dict[str, Any], arch: str) -> tuple[list[str], list[list[Any]]]:
    """Final accuracy of every start at every budget (one row per change and start)."""
    budgets = sorted({e["epochs"] for es in family["runs"].values() for e in es})
    rows = []
    for change, entries in family["runs"].items():
        starts = list(dict.fromkeys(e["extra"]["start"] for e in entries))
        for start in starts:
            accs = {e["epochs"]: e["final_acc"] for e in entries if e["extra"]["start"] == start}
            rows.append([f"{arch}-{change}", start, *(accs.get(b) for b in budgets)])
    return ["student", "start", *(f"{b} ep" for b in budgets)], rows


def write_outputs(out: pathlib.Path, results: dict[str, Any]) -> None:
    """``results.json``, ``table.md`` and the PNGs."""
    common.write_json(out / "results.json", results)
    env = results["environment"]
    text = [f"# Net2Net: grown vs scratch ({results['dataset']})\n", common.provenance_md(env)]
    text.append(
        f"\nSettings: {results['settings']}. Student: learning rate x{results['student_lr_scale']}"
        f", warm-up {results['student_warmup_epochs']} epochs; scratch: base config "
        f"{results['base_config']['learning_rate']} without warm-up.\n"
    )
    text.append(
        "\n## Time to 98% of the scratch run's final accuracy (largest budget)\n\n"
        "Steps count the student's steps only; seconds are training seconds (steps only, "
        "compiles and evaluation left out) and add the teacher's for grown and random-pad "
        "starts. `steps / scratch's` and `s to 98% (+teacher)` against `scratch s to 98%` "
        "compare with the scratch run of the same budget.\n\n"
    )
    rows = [row for arch, fam in results["families"].items() for row in summary_rows(fam, arch)]
    text.append(common.markdown_table(SUMMARY_HEADERS, rows))
    text.append("\n## Final test accuracy against the epoch budget\n\n")
    for arch, family in results["families"].items():
        headers, brows = budget_rows(family, arch)
        text.append(common.markdown_table(headers, brows) + "\n")
        plot_family(out, arch, family)
    (out / "table.md").write_text("".join(text))


def plot_family(out: pathlib.Path, arch: str, family: dict[str, Any]) -> None:
    """Curves at the largest budget and final accuracy against budget, per change."""
    for change, entries in family["runs"].items():
        largest = max(e["epochs"] for e in entries)
        runs, offsets, series = [], {}, {}
        for entry in entries:
            start = entry["extra"]["start"]
            series.setdefault(start, []).append(
                (
                    entry["epochs"],
                    entry["total_s"] + entry["extra"]["teacher_s"],
                    entry["final_acc"],
                )
            )
            if entry["epochs"] == largest:
                run = common.Run(
                    **{
                        k: entry[k]
                        for k in ("label", "epochs", "step", "train_s", "test_acc", "config")
                    }
                )
                runs.append(run)
                offsets[run.label] = (entry["extra"]["teacher_steps"], entry["extra"]["teacher_s"])
        title = f"{arch} {change}, {largest} epochs (grown runs start after their teacher)"
        common.plot_curves(runs, out / f"curves_{arch}_{change}.png", title=title, offsets=offsets)
        common.plot_budget(series, out / f"budget_{arch}_{change}.png", title=f"{arch} {change}")


def build_parser() -> argparse.ArgumentParser:
    """The script's options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_args(parser)
    parser.add_argument("--budgets", type=int, nargs="*", default=None)
    parser.add_argument("--teacher-epochs", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--student-lr-scale", type=float, default=0.5)
    parser.add_argument("--student-warmup", type=float, default=0.5, help="epochs")
    parser.add_argument("--archs", nargs="*", default=["resnet", "vgg"])
    parser.add_argument("--changes", nargs="*", default=list(CHANGES))
    parser.add_argument("--noises", nargs="*", default=list(NOISES), help="for 'wider'")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the protocol and writes the outputs; returns the results dict."""
    args = build_parser().parse_args(argv)
    common.configure_reduced_mode(args.dataset)

    setup = settings(args.dataset, args.tiny)
    budgets = tuple(args.budgets or setup["budgets"])
    teacher_epochs = args.teacher_epochs or setup["teacher_epochs"]
    train, test = common.data_for(args)
    digits = args.dataset == "digits"
    base = common.base_config(args, setup, max(budgets))
    env = common.environment(common.REDUCED_NOTE if digits else None)
    families = {}
    specs = architectures(args.dataset)
    for arch in args.archs:
        families[arch] = run_family(
            arch,
            specs[arch],
            train,
            test,
            base,
            budgets,
            teacher_epochs,
            lr_scale=args.student_lr_scale,
            warmup=args.student_warmup,
            changes=args.changes,
            noises=args.noises,
        )
    results = {
        "dataset": args.dataset,
        "environment": env,
        "settings": {"budgets": list(budgets), "teacher_epochs": teacher_epochs},
        "base_config": base.to_dict(),
        "student_lr_scale": args.student_lr_scale,
        "student_warmup_epochs": args.student_warmup,
        "target_fraction": TARGET_FRACTION,
        "families": families,
    }
    out = common.out_dir(__file__, args.dataset, args.out)
    write_outputs(out, results)
    print(f"wrote {out}", flush=True)
    return results


if __name__ == "__main__":
    main()
