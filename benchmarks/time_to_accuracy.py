"""Time to accuracy: a Net2Net-grown student against the same network from scratch.

One command for the Net2Net table (``experiments/net2net/run.py``'s functions): a teacher
is trained, grown (``--change wider|deeper|both``) and trained for ``--epochs`` with a full
schedule; the same student is trained from random init for as many epochs. Printed per
start: steps and seconds to 98% of scratch's final accuracy, final accuracy, teacher +
student seconds against scratch's, and whether the targets hold:

* the grown student reaches the target in <= 50% of scratch's steps,
* its final accuracy is within 0.3 points of scratch's,
* teacher + student training seconds to that target are below scratch's seconds to it
  (the whole budgets are printed too, but with equal epochs for the student and scratch the
  grown run's total always includes the teacher on top).

One JSON line per run goes to ``--json`` (default ``benchmarks/time_to_accuracy.jsonl``);
with ``--out`` the table (``table.md``) and the runs (``results.json``) go there too.

GPU, CIFAR-10 (ResNet-20 half width -> full width, 30 epochs)::

    python benchmarks/time_to_accuracy.py --dataset cifar10 --npz data/cifar10_jpeg.npz

CPU, reduced run on digits (a tiny ResNet; a few minutes)::

    python benchmarks/time_to_accuracy.py --dataset digits
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from experiments import common
from experiments.net2net import run as net2net

STEP_RATIO_MAX = 0.5
ACC_GAP_MAX = 0.003


def verdict(row: Sequence[Any]) -> dict[str, Any]:
    """The targets of one summary row (``net2net.SUMMARY_HEADERS`` order)."""
    named = dict(zip(net2net.SUMMARY_HEADERS, row, strict=True))
    ratio = named["steps / scratch's"]
    seconds, scratch_s = named["s to 98% (+teacher)"], named["scratch s to 98%"]
    grown = named["start"] != "scratch"
    return {
        **named,
        "steps_ok": grown and ratio is not None and ratio <= STEP_RATIO_MAX,
        "accuracy_ok": named["vs scratch"] >= -ACC_GAP_MAX,
        "time_ok": grown and None not in (seconds, scratch_s) and seconds < scratch_s,
    }


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_args(parser)
    parser.add_argument("--arch", default="resnet", choices=("resnet", "vgg"))
    parser.add_argument("--change", default="wider", choices=net2net.CHANGES)
    parser.add_argument("--epochs", type=int, default=None, help="student and scratch budget")
    parser.add_argument("--teacher-epochs", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--student-lr-scale", type=float, default=0.5)
    parser.add_argument("--student-warmup", type=float, default=0.5)
    parser.add_argument(
        "--json", default=str(pathlib.Path(__file__).parent / "time_to_accuracy.jsonl")
    )
    return parser


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Runs teacher, grown student and scratch; prints and appends the verdicts."""
    args = build_parser().parse_args(argv)
    common.configure_reduced_mode(args.dataset)

    setup = net2net.settings(args.dataset, args.tiny)
    digits = args.dataset == "digits"
    epochs = args.epochs or (1 if args.tiny else 5 if digits else 30)
    train, test = common.data_for(args)
    base = common.base_config(args, setup, epochs)
    spec = net2net.architectures(args.dataset)[args.arch]
    family = net2net.run_family(
        args.arch,
        spec,
        train,
        test,
        base,
        (epochs,),
        args.teacher_epochs or setup["teacher_epochs"],
        lr_scale=args.student_lr_scale,
        warmup=args.student_warmup,
        changes=(args.change,),
        noises=("split",),
    )
    rows = net2net.summary_rows(family, args.arch)
    env = common.environment(common.REDUCED_NOTE if digits else None)
    table = common.markdown_table(net2net.SUMMARY_HEADERS, rows)
    print(table)
    if args.out:
        out = common.out_dir(__file__, args.dataset, args.out)
        common.write_json(
            out / "results.json", {"dataset": args.dataset, "environment": env, "family": family}
        )
        (out / "table.md").write_text(common.provenance_md(env) + "\n" + table)
    verdicts = [verdict(row) for row in rows]
    with open(args.json, "a") as f:
        for item in verdicts:
            f.write(json.dumps({**env, **item}, default=str) + "\n")
    for item in verdicts:
        if item["start"].startswith("net2net"):
            print(
                f"{item['student']} {item['start']}: 98% of scratch's final accuracy in "
                f"<= 50% of scratch's steps to it: "
                f"{item['steps_ok']}; within 0.3 points: {item['accuracy_ok']}; "
                f"teacher + student reach it in less time than scratch: {item['time_ok']}"
            )
    return verdicts


if __name__ == "__main__":
    main()
