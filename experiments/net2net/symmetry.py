"""Symmetry breaking in Net2WiderNet: how strongly must the replicas' split differ?

An exact widening copies each old unit into replicas that share their incoming weights. With
``noise='none'`` their outgoing weights are split equally (``1 / count``), so the replicas
receive identical gradients and stay tied: the student keeps the teacher's width in all but
name. ``noise='split'`` divides the outgoing weights unequally, ``(1 + e) / count`` with
zero-sum ``e`` of standard deviation ``noise_scale`` (still exact), and the replicas learn
apart. This script widens a narrow teacher 4x (narrow enough that width limits it) and trains
the student with the same schedule for each symmetry breaking and several seeds, against
the wide network trained from scratch.

Outputs in ``experiments/net2net/results/<dataset>/``: ``symmetry.json`` and
``symmetry.md`` (final test accuracy per noise setting, mean over seeds, with provenance).

CPU, reduced run on digits (2 cores, about ten minutes)::

    python experiments/net2net/symmetry.py --dataset digits

GPU, CIFAR-10 (quarter-width ResNet-20 and VGG-11 teachers grown to full width)::

    python experiments/net2net/symmetry.py --dataset cifar10 --npz data/cifar10_jpeg.npz
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import jnet2net
from experiments import common
from jnet2net.models import VGG, ResNet, resnet20, vgg11
from jnet2net.train import fit

NOISES = (("none", 0.0), ("split", 0.1), ("split", 0.3), ("split", 1.0), ("split", 2.0))


def architectures(dataset: str) -> dict[str, tuple[Any, tuple[int, ...]]]:
    """``{family: (narrow teacher, student widths)}``: every width x4."""
    if dataset == "digits":
        return {
            "resnet": (ResNet(stage_depths=(1, 1), stage_widths=(3, 6)), (12, 24)),
            "vgg": (VGG(stage_depths=(1, 1), stage_widths=(3, 6)), (12, 24)),
        }
    return {
        "resnet": (resnet20(stage_widths=(4, 8, 16)), (16, 32, 64)),
        "vgg": (vgg11(stage_widths=(16, 32, 64, 128, 128)), (64, 128, 256, 512, 512)),
    }


def settings(dataset: str, tiny: bool) -> dict[str, Any]:
    """Epochs, seeds, batch and learning rate of a dataset's protocol."""
    if tiny:
        return {"teacher_epochs": 1, "epochs": 1, "seeds": 1, "batch_size": 32, "lr": 0.05}
    if dataset == "digits":
        return {"teacher_epochs": 6, "epochs": 5, "seeds": 3, "batch_size": 32, "lr": 0.05}
    return {"teacher_epochs": 15, "epochs": 15, "seeds": 2, "batch_size": 128, "lr": 0.1}


def run_family(
    teacher: Any, widths: tuple[int, ...], train: Any, test: Any, setup: dict, base: Any
) -> dict[str, Any]:
    """Teacher, scratch and one student per (noise, scale, seed) of one family."""
    teacher_run = fit(teacher, train, test, base.replace(epochs=setup["teacher_epochs"]))
    config = base.replace(epochs=setup["epochs"], warmup_epochs=0.5)
    student = teacher.clone(stage_widths=widths)
    scratch = fit(student, train, test, config)
    rows = []
    for noise, scale in NOISES:
        accs = []
        for seed in range(setup["seeds"]):
            model, variables = jnet2net.widen(
                teacher,
                teacher_run.state.variables,
                widths=widths,
                key=jax.random.key(seed),
                noise=noise,
                noise_scale=scale,
            )
            run = fit(model, train, test, config, variables=variables)
            accs.append(run.history[-1]["test_acc"])
        rows.append({"noise": noise, "noise_scale": scale, "test_acc": accs})
        print(f"{noise} {scale}: {np.round(accs, 4).tolist()}", flush=True)
    return {
        "teacher": jnet2net.model_config(teacher),
        "student_widths": list(widths),
        "teacher_acc": teacher_run.history[-1]["test_acc"],
        "scratch_acc": scratch.history[-1]["test_acc"],
        "student_config": config.to_dict(),
        "students": rows,
    }


def table(results: dict[str, Any]) -> str:
    """``symmetry.md``: provenance, then one row per family and noise setting."""
    headers = ["family", "start", "noise_scale", "final acc per seed", "mean", "vs scratch"]
    rows = []
    for name, family in results["families"].items():
        scratch = family["scratch_acc"]
        rows.append([name, "teacher (narrow)", "-", "-", family["teacher_acc"], "-"])
        rows.append([name, "scratch (wide)", "-", "-", scratch, 0.0])
        for row in family["students"]:
            mean = float(np.mean(row["test_acc"]))
            per_seed = ", ".join(f"{a:.4f}" for a in row["test_acc"])
            rows.append(
                [name, f"widen, {row['noise']}", row["noise_scale"], per_seed, mean, mean - scratch]
            )
    return (
        f"# Net2WiderNet symmetry breaking ({results['dataset']})\n\n"
        + common.provenance_md(results["environment"])
        + f"\nTeachers widened x4, students trained {results['epochs']} epochs (warm-up 0.5) "
        "with the scratch run's schedule; seeds draw the mapping and the split.\n\n"
        + common.markdown_table(headers, rows)
    )


def build_parser() -> argparse.ArgumentParser:
    """The script's options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_args(parser)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--archs", nargs="*", default=["resnet", "vgg"])
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the study and writes ``symmetry.json`` and ``symmetry.md``."""
    args = build_parser().parse_args(argv)
    common.configure_reduced_mode(args.dataset)
    setup = settings(args.dataset, args.tiny)
    train, test = common.data_for(args)
    base = common.base_config(args, setup, setup["epochs"])
    arches = architectures(args.dataset)
    families = {}
    for name in args.archs:
        teacher, widths = arches[name]
        families[name] = run_family(teacher, widths, train, test, setup, base)
    note = common.REDUCED_NOTE if args.dataset == "digits" else None
    results = {
        "dataset": args.dataset,
        "environment": common.environment(note),
        "epochs": setup["epochs"],
        "families": families,
    }
    out = common.out_dir(__file__, args.dataset, args.out)
    common.write_json(out / "symmetry.json", results)
    (out / "symmetry.md").write_text(table(results))
    print(f"wrote {out / 'symmetry.md'}", flush=True)
    return results


if __name__ == "__main__":
    main()
