"""``jnet2net eval``: loss and accuracy of a checkpoint on a dataset split."""

from __future__ import annotations

import argparse
import json
from typing import Any

from jnet2net.cli.args import EXAMPLES, add_source_args, count_at_least
from jnet2net.cli.datasets import (
    add_data_args,
    check_dataset_fits,
    data_flags,
    dataset_name,
    load_eval_split,
)
from jnet2net.cli.format import HelpFormatter


def add_parser(sub: Any) -> None:
    """Adds the ``eval`` sub-parser."""
    p = sub.add_parser(
        "eval",
        formatter_class=HelpFormatter,
        epilog=EXAMPLES["eval"],
        help="loss and accuracy of a checkpoint on a dataset split",
        description="Restore a checkpoint and print its loss and accuracy on a dataset split.",
    )
    add_source_args(p)
    add_data_args(p)
    p.add_argument("--split", metavar="NAME", default="test", help="dataset split to measure")
    p.add_argument(
        "--batch-size", metavar="N", type=count_at_least(1), default=256, help="eval batch"
    )
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    """``jnet2net eval``."""
    from jnet2net import checkpoint, train

    restored = checkpoint.restore(args.source, step=args.step)
    name = dataset_name(args, restored.path.parent)
    flags = data_flags(args, restored.path.parent)
    dataset = load_eval_split(
        name, args.split, flags, data_dir=args.data_dir, download=args.download
    )
    check_dataset_fits(checkpoint.checkpoint_info(args.source, step=restored.step), dataset)
    loss, accuracy = train.evaluate(
        restored.model, restored.variables, dataset, batch_size=args.batch_size
    )
    metrics = {"loss": loss, "accuracy": accuracy}
    result = {
        "checkpoint": str(restored.path),
        "step": restored.step,
        "dataset": dataset.name,
        "split": args.split,
        "examples": len(dataset),
        **{k: float(v) for k, v in metrics.items()},
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{restored.path} (step {restored.step}) on {dataset.name}/{args.split}:")
        for k, v in metrics.items():
            print(f"  {k}: {float(v):.4f}")
    return 0
