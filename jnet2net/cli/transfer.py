"""``jnet2net transfer``: initialise another architecture from a checkpoint (weight reuse)."""

from __future__ import annotations

import argparse
from typing import Any

from jnet2net.cli.arch import check_param_limit, count_params, describe, model_from_args
from jnet2net.cli.args import (
    EXAMPLES,
    NOISES,
    add_max_params,
    add_source_args,
    check_out,
    positive_float,
)
from jnet2net.cli.format import HelpFormatter


def add_parser(sub: Any) -> None:
    """Adds the ``transfer`` sub-parser."""
    p = sub.add_parser(
        "transfer",
        formatter_class=HelpFormatter,
        epilog=EXAMPLES["transfer"],
        help="initialise another architecture from a checkpoint (weight reuse), save it",
        description=(
            "Restore a checkpoint and build variables for another VGG/ResNet/ViT of the same "
            "family (deeper or shallower, wider or narrower, other kernel sizes or classes; a "
            "ViT's heads, MLP and patch size, its position embedding interpolated) "
            "that reuse its weights (jnet2net.reuse.transfer); print what was reused and save "
            "the result as a new checkpoint at step 0. A superset architecture computes the "
            "same function (the relative error is printed)."
        ),
    )
    add_source_args(p)
    p.add_argument(
        "--to",
        metavar="ARCH",
        default=None,
        help="destination: a preset (resnet32, vgg13, vit_tiny, ...) or a JSON spec with 'family'",
    )
    p.add_argument(
        "--arch-json", metavar="JSON", default=None, help="architecture JSON or --to overrides"
    )
    p.add_argument(
        "--width-mult",
        metavar="X",
        type=positive_float,
        default=None,
        help="scale every width field (a ViT: embed_dim, num_heads, mlp_dim)",
    )
    p.add_argument(
        "--num-classes", metavar="N", type=int, default=None, help="default: the source's"
    )
    p.add_argument(
        "--depth-map",
        choices=("proportional", "append"),
        default="proportional",
        help="where source layers go in a deeper stage: spread out, or new ones at the end",
    )
    p.add_argument(
        "--fill",
        choices=("identity", "repeat"),
        default="identity",
        help="new layers: identities (function kept) or copies of a source layer (not exact)",
    )
    p.add_argument(
        "--shrink",
        choices=("evenly", "first", "last"),
        default="evenly",
        help="which layers a shallower stage keeps: evenly spaced, the first or the last",
    )
    p.add_argument(
        "--noise", choices=NOISES, default="split", help="symmetry breaking of widened units"
    )
    p.add_argument("--noise-scale", metavar="X", type=float, default=0.1, help="size of that noise")
    p.add_argument("--seed", metavar="N", type=int, default=0, help="seeds mappings and noise")
    p.add_argument("--report", action="store_true", help="print the per-leaf report")
    add_max_params(p)
    p.add_argument("--out", metavar="CKPT", required=True, help="new checkpoint directory")
    p.set_defaults(func=cmd_transfer)


def cmd_transfer(args: argparse.Namespace) -> int:
    """``jnet2net transfer``: holds ``--out``'s lock while it works."""
    from jnet2net import checkpoint, rundir

    to = args.to
    if to is not None and to.lstrip().startswith(("{", "[")) and args.arch_json is not None:
        raise ValueError("--to is a JSON spec: pass the architecture once, drop --arch-json")
    check_out(args.out)
    if checkpoint.latest_step(args.out) is not None:
        raise ValueError(f"{args.out} already holds a checkpoint")
    with rundir.locked(args.out):
        return transfer_run(args)


def transfer_run(args: argparse.Namespace) -> int:
    """Runs ``jnet2net transfer`` once ``--out`` is checked and locked."""
    import jax
    import numpy as np

    from jnet2net import checkpoint, model_config, output_error
    from jnet2net.reuse import transfer
    from jnet2net.reuse.layout import check_pair

    to, arch_json, json_flag = args.to, args.arch_json, "--arch-json"
    if to is not None and to.lstrip().startswith(("{", "[")):
        to, arch_json, json_flag = None, to, "--to"
    info = checkpoint.checkpoint_info(args.source, step=args.step)
    classes = info.model.num_classes if args.num_classes is None else args.num_classes
    dst_model = model_from_args(
        to, arch_json, args.width_mult, classes, arch_flag="--to", json_flag=json_flag
    )
    check_pair(info.model, dst_model)  # a refusal (ViT -> ResNet, ...) before any restore
    check_param_limit(dst_model, info.input_shape, args.max_params, "the destination")
    src = checkpoint.restore(args.source, step=info.step)
    print(f"source {src.path}: {describe(src.model)}")
    variables, report = transfer(
        src.model,
        src.variables,
        dst_model,
        key=jax.random.key(args.seed),
        depth_map=args.depth_map,
        fill=args.fill,
        shrink=args.shrink,
        noise=args.noise,
        noise_scale=args.noise_scale,
        input_shape=info.input_shape,
    )
    if args.report:
        print(report)
    print(
        f"destination: {describe(dst_model)}, {count_params(variables):,} params, "
        f"{report.reused_fraction:.1%} reused"
    )
    error = None
    if report.function_preserving:
        xs = np.random.default_rng(args.seed).standard_normal((2, 8, *info.input_shape[1:]))
        errors = output_error(src.model, src.variables, dst_model, variables, xs.astype("float32"))
        error = float(np.max(np.asarray(errors)))
        print(f"function preserved: max relative output error {error:.2e}")
    else:
        print("function changed by: " + "; ".join(report.approximations))
    path = checkpoint.save(
        args.out,
        model=dst_model,
        variables=variables,
        step=0,
        metadata={
            **(
                {"dataset": src.metadata["dataset"]}
                if classes == src.model.num_classes and "dataset" in src.metadata
                else {}
            ),
            "transferred_from": str(src.path),
            "source_model": model_config(src.model),
            "reused_fraction": report.reused_fraction,
            "approximations": list(report.approximations),
            "relative_error": error,
        },
        input_shape=info.input_shape if info.input_shape_given else None,
    )
    print(f"saved {path}")
    return 0
