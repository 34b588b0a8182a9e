"""``jnet2net grow``: widen/deepen a checkpointed network, check its function, save it."""

from __future__ import annotations

import argparse
from typing import Any

from jnet2net.cli.arch import (
    check_growth_syntax,
    check_param_limit,
    count_params,
    describe,
    grown_model,
    growth_kwargs,
)
from jnet2net.cli.args import (
    EXAMPLES,
    GROW_NOISES,
    add_max_params,
    add_source_args,
    check_out,
    count_at_least,
    positive_float,
)
from jnet2net.cli.format import HelpFormatter


def add_parser(sub: Any) -> None:
    """Adds the ``grow`` sub-parser."""
    p = sub.add_parser(
        "grow",
        formatter_class=HelpFormatter,
        epilog=EXAMPLES["grow"],
        help="widen/deepen a checkpointed network, check it computes the same function, save it",
        description=(
            "Restore a checkpoint, grow it with Net2WiderNet (--widen) and/or Net2DeeperNet "
            "(--deepen), check on random inputs that the grown network computes the same "
            "function (prints the relative error), and save it as a new checkpoint at step 0."
        ),
    )
    add_source_args(p)
    p.add_argument(
        "--widen",
        metavar="W1,W2,..|Fx",
        default=None,
        help="new stage widths 'W1,W2,...' or a multiplier like '1.5x' (all width fields)",
    )
    p.add_argument(
        "--widen-hidden", metavar="H1,H2,..", default=None, help="new VGG hidden widths 'H1,H2,...'"
    )
    p.add_argument(
        "--deepen",
        metavar="D1,D2,..|+N",
        default=None,
        help="new stage depths 'D1,D2,...' or '+N' (N more per stage)",
    )
    p.add_argument(
        "--deepen-hidden", metavar="N", type=int, default=None, help="new VGG hidden layer count"
    )
    p.add_argument(
        "--noise",
        choices=GROW_NOISES,
        default="split",
        help="new units: replicas ('split', 'none', 'paper') or 'fresh' random units with zero "
        "outgoing weights (exact; trains best as a student)",
    )
    p.add_argument("--noise-scale", metavar="X", type=float, default=0.1, help="size of that noise")
    p.add_argument(
        "--seed", metavar="N", type=int, default=0, help="seeds the mappings and new blocks"
    )
    p.add_argument(
        "--rtol",
        metavar="X",
        type=positive_float,
        default=1e-5,
        help="largest accepted relative error",
    )
    p.add_argument(
        "--check-batches",
        metavar="N",
        type=count_at_least(1),
        default=2,
        help="random batches to compare",
    )
    add_max_params(p)
    p.add_argument("--out", metavar="CKPT", required=True, help="new checkpoint directory")
    p.set_defaults(func=cmd_grow)


def cmd_grow(args: argparse.Namespace) -> int:
    """``jnet2net grow``: flags first, then ``--out`` (locked while written), then the teacher."""
    from jnet2net import rundir

    sizes = (args.widen, args.widen_hidden, args.deepen, args.deepen_hidden)
    if all(size is None for size in sizes):
        raise ValueError("nothing to grow: pass --widen and/or --deepen")
    check_growth_syntax(args.widen, args.widen_hidden, args.deepen)
    check_out(args.out)
    with rundir.locked(args.out):
        return grow_run(args)


def grow_run(args: argparse.Namespace) -> int:
    """Runs ``jnet2net grow`` once its flags are checked and ``--out`` is locked."""
    import jax

    from jnet2net import checkpoint

    info = checkpoint.checkpoint_info(args.source, step=args.step)
    print(f"teacher {info.path}: {describe(info.model)}, step {info.step}")
    widen, deepen = growth_kwargs(
        info.model,
        widen=args.widen,
        widen_hidden=args.widen_hidden,
        deepen=args.deepen,
        deepen_hidden=args.deepen_hidden,
        noise=args.noise,
        noise_scale=args.noise_scale,
    )
    student = grown_model(info.model, widen, deepen)
    check_param_limit(student, info.input_shape, args.max_params, "the grown network")
    grown = checkpoint.grow_checkpoint(
        args.source,
        args.out,
        key=jax.random.key(args.seed),
        widen=widen,
        deepen=deepen,
        step=info.step,
        rtol=args.rtol,
        num_check_batches=args.check_batches,
        metadata={"seed": args.seed},
    )
    before, after = count_params(grown.teacher.variables), count_params(grown.variables)
    print(f"student: {describe(grown.model)}, {before:,} -> {after:,} params")
    exact = "preserved" if grown.relative_error < args.rtol else "NOT preserved (noise=paper)"
    print(f"function {exact}: max relative output error {grown.relative_error:.2e}")
    print(f"saved {grown.path} (restores bitwise)")
    return 0
