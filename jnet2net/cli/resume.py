"""``jnet2net train --resume``: the checks before a run continues (damaged checkpoints, a log
line cut short, epochs left) and the restore of its state, plain or scale-down."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import sys
from typing import Any

from jnet2net.cli.arch import describe
from jnet2net.cli.args import PROG


def set_aside_damaged_checkpoints(out: pathlib.Path) -> None:
    """Before a resume: damaged checkpoints at the end of the run are moved aside, one line
    each on stderr, so the run continues from its newest intact checkpoint.

    Raises:
      ValueError: no checkpoint of the run is intact.
    """
    from jnet2net import checkpoint

    moved = checkpoint.set_aside_damaged(out)
    if not moved:
        return
    step = checkpoint.latest_step(out)
    for i, (_, target, reason) in enumerate(moved):
        then = f", resuming from step {step}" if step is not None and i == len(moved) - 1 else ""
        print(f"{PROG} train: {reason}; moved it to {target.name}{then}", file=sys.stderr)
    if step is None:
        raise ValueError(
            f"{out} holds no intact checkpoint to resume (damaged ones were moved to "
            f"{', '.join(t.name for _, t, _ in moved)}); start a new --out"
        )


def check_run_log(log: pathlib.Path) -> None:
    """Before a resume: a partial last line of ``log`` (a write cut by a kill) is dropped with
    a line on stderr; any other unreadable line is an error naming the file and line."""
    from jnet2net.train.progress import repair_jsonl

    if log.is_file():
        dropped = repair_jsonl(log)
        if dropped is not None:
            print(
                f"{PROG} train: dropped the partial last line of {log} (a write cut short): "
                f"{dropped[:60]!r}",
                file=sys.stderr,
            )


def check_epochs_left(info: Any, config: Any, steps_per_epoch: int, out: pathlib.Path) -> bool:
    """Whether a resumed run has steps left; raises ValueError when ``--epochs`` ends before the
    run's latest checkpoint (the run would do nothing)."""
    end = config.epochs * steps_per_epoch
    if info.step > end:
        done = info.step / steps_per_epoch
        raise ValueError(
            f"--epochs {config.epochs} ends at step {end}, but the run in {out} is already at "
            f"step {info.step} (epoch {done:g}); pass --epochs {math.ceil(done)} or more to train "
            "on, or start a new --out"
        )
    return info.step < end


def restore_plain(out: pathlib.Path, model: Any, config: Any, train_set: Any, spe: int) -> Any:
    """The train state of the run in ``out``, restored to continue it."""
    import jax
    import numpy as np

    from jnet2net import checkpoint, train

    abstract = jax.eval_shape(
        lambda: train.create_train_state(
            model,
            config,
            np.zeros((1, *train_set.image_shape), np.uint8),
            key=jax.random.key(0),
            steps_per_epoch=spe,
        )
    )
    state, restored = checkpoint.restore_train_state(out, abstract, model=model)
    print(f"resuming {restored.path}: {describe(model)}, step {restored.step}")
    return state


def restore_scale_down(
    args: argparse.Namespace,
    out: pathlib.Path,
    model: Any,
    config: Any,
    train_set: Any,
    spe: int,
    metadata: dict[str, Any],
) -> Any:
    """The run state of the scale-down run in ``out``; it keeps its scale-down config."""
    from jnet2net.scale_down.saving import RUN_KEY, restore_run

    given, saved = args.run_config.scale_down, metadata.get("scale_down")
    if given is not None and dataclasses.asdict(given) != saved:
        raise ValueError(
            "a resumed scale-down run keeps its own config; drop --scale-down/--scale-json "
            f"or give the saved one (saved: {json.dumps(saved)})"
        )
    run_state, restored = restore_run(out, model, config, train_set.image_shape, spe)
    metadata.pop(RUN_KEY, None)
    cut = restored.metadata[RUN_KEY]["cut"]
    print(f"resuming {restored.path}: {describe(model)}, step {restored.step}, cut {cut}")
    return run_state
