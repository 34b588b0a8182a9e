"""The tiny run of the multi-process tests, and the worker that runs it in one process of many.

``tests/test_distributed.py`` starts this file as a script in several processes (each with
its own simulated CPU devices), which join through ``jax.distributed``, train
:func:`fit_run` and write their final parameters; the test runs the same function in one
process and compares. Not a test module itself (no ``test_`` prefix).

    python tests/distributed_run.py --coordinator 127.0.0.1:PORT --num-processes 2 \\
        --process-id I --out DIR
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Any

#: A ResNet with BatchNorm (its statistics are reduced over the devices of every process).
WIDTHS = (4, 6)
#: Widened at epoch 1, inside the run (widths <= 8).
GROWN_WIDTHS = (6, 8)
NUM_TRAIN, NUM_TEST = 64, 24
#: Steps the multi-process run trains (2 of the 3 epochs; the rest resumes from its checkpoint).
STOP_STEP = 8


def datasets() -> tuple[Any, Any]:
    """64 training and 24 test images of uniform noise (8x8x1, 10 classes).

    Noise, not digits: the digits' many equal background pixels put ReLU inputs next to
    zero together, so a float32 rounding difference between two runs (another reduction
    order) can flip many ReLUs in one step (measured: 1e-4 after one step of a state that
    agreed to 1e-7); noise spreads them out.
    """
    import numpy as np

    from jnet2net.data import Dataset

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (NUM_TRAIN + NUM_TEST, 8, 8, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, NUM_TRAIN + NUM_TEST).astype(np.int32)
    train_set = Dataset(images[:NUM_TRAIN], labels[:NUM_TRAIN], 10, "noise")
    test_set = Dataset(
        images[NUM_TRAIN:], labels[NUM_TRAIN:], 10, "noise", train_set.mean, train_set.std
    )
    return train_set, test_set


def config(log_path: str | None = None) -> Any:
    """3 epochs of 4 steps, global batch 16 (a multiple of the 4 devices)."""
    from jnet2net import train

    return train.TrainConfig(
        epochs=3,
        batch_size=16,
        learning_rate=0.05,
        eval_batch_size=8,
        progress=False,
        augment="crop_flip",
        crop_padding=1,
        log_path=log_path,
    )


def model() -> Any:
    from jnet2net import models

    return models.ResNet((1, 1), WIDTHS, num_classes=10)


def growth() -> tuple[Any, ...]:
    from jnet2net import train

    return (train.Grow(1, widths=GROWN_WIDTHS, noise="split", noise_scale=0.5),)


def fit_run(run_dir: str | pathlib.Path | None, *, max_steps: int | None = STOP_STEP) -> Any:
    """Trains :func:`model` on :func:`datasets` up to ``max_steps`` with the growth event;
    with ``run_dir``, logs ``metrics.jsonl`` there and saves a checkpoint every epoch."""
    from jnet2net import checkpoint, train

    train_set, test_set = datasets()
    log_path = None if run_dir is None else str(pathlib.Path(run_dir) / "metrics.jsonl")
    cfg = config(log_path)
    savers = []

    def saver(for_model: Any) -> Any:
        return checkpoint.epoch_saver(run_dir, for_model, cfg, input_shape=train_set.image_shape)

    if run_dir is not None:
        savers.append(saver(model()))
    return train.fit(
        model(),
        train_set,
        test_set,
        cfg,
        growth=growth(),
        max_steps=max_steps,
        on_epoch_end=(lambda state, record: savers[-1](state, record)) if savers else None,
        on_grow=(lambda new_model, state, record: savers.append(saver(new_model)))
        if savers
        else None,
    )


def scale_down_run() -> Any:
    """:func:`model` trained 3 epochs with scale-down in cache mode: stage 0 freezes at the
    first check after 40% of the run, and its outputs are cached, sharded over every device
    of every process. Returns the ``ScaleDownResult``."""
    from jnet2net.scale_down import ScaleDownConfig, fit_scale_down

    train_set, test_set = datasets()
    scale = ScaleDownConfig(
        target_compute=1.0,
        not_before=0.4,
        min_spacing=0.0,
        ramp=0.0,
        check_every=2,
        ready_ratio=1e9,
        patience=1,
        bn_batches=2,
        max_stages=1,
        mode="cache",
    )
    return fit_scale_down(model(), train_set, test_set, config().replace(augment="none"), scale)


def streamed_eval(variables: Any) -> tuple[float, float]:
    """``(loss, accuracy)`` of :func:`model` with ``variables`` on the test set, streamed in
    batches of 8 (each process reads its rows; the last batch is padded)."""
    from jnet2net import data, train

    _, test_set = datasets()
    stream = data.stream_from_dataset(test_set.take(20))  # 3 batches, the last half padding
    return train.evaluate(model(), variables, stream, batch_size=8)


def flat_params(params: Any) -> dict[str, Any]:
    """``{'a/b/kernel': numpy array}`` of a params tree (replicated arrays read locally)."""
    from jnet2net import distributed
    from jnet2net.variables import flatten, path_str

    return {path_str(p): distributed.host_array(x) for p, x in flatten(params).items()}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--coordinator", required=True)
    parser.add_argument("--num-processes", type=int, required=True)
    parser.add_argument("--process-id", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--max-steps", type=int, default=STOP_STEP)
    args = parser.parse_args(argv)

    import jax
    import numpy as np

    from jnet2net import distributed

    jax.config.update("jax_disable_most_optimizations", True)  # as tests/conftest.py
    info = distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    out = pathlib.Path(args.out)
    result = fit_run(out / "run", max_steps=args.max_steps)
    np.savez(out / f"params{info.process_id}.npz", **flat_params(result.state.params))
    (out / f"history{info.process_id}.json").write_text(_json(result.history))
    scaled = scale_down_run()
    np.savez(out / f"scaled{info.process_id}.npz", **flat_params(scaled.variables["params"]))
    evaluated = streamed_eval(scaled.variables)
    record = {"cut": scaled.cut, "history": scaled.history, "eval": evaluated}
    (out / f"scaled{info.process_id}.json").write_text(_json(record))
    print(f"process {info.process_id}: {info}, step {int(result.state.step)}")
    return 0


def _json(history: list[dict[str, Any]]) -> str:
    import json

    return json.dumps(history, default=str)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
