"""Training throughput of streaming input against the whole set in device memory, same run.

On the CPU protocol (CIFAR-10 downsampled to 16x16, the seeded 10k training subset; see
``jnet2net.data.load_protocol``) a CIFAR ResNet-20 (widths 8, 16, 32) trains
``--steps`` steps twice with ``jnet2net.train.fit``: ``TrainConfig.input='memory'`` (the
set on every device, batches gathered on device) and ``input='stream'`` (batches read by
the grain pipeline on the host and put on the devices each step). Both use the same
batches and the same on-device crop-and-flip augmentation. The rate is ``fit``'s
``images_per_s`` (the first, compiling step left out). The pipeline column is the stream
alone (host reads and transfers to the devices, no training): the rate the input can feed.
Prints one markdown table row.

    python benchmarks/bench_streaming.py --data-dir /path/to/folder/with/cifar10_jpeg.npz
    python benchmarks/bench_streaming.py --data-dir ... --quick    # 3 steps: a smoke check

Run it alone: other CPU work on the machine distorts both rates.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import jax

from jnet2net import data, models, train
from jnet2net.data import streaming


def train_rate(model: Any, train_set: Any, config: train.TrainConfig, steps: int) -> float:
    """Images per second of ``steps`` training steps of ``fit`` (compile step excluded)."""
    result = train.fit(model, train_set, None, config, max_steps=steps)
    rates = [r["images_per_s"] for r in result.history if r.get("images_per_s")]
    if not rates:
        raise RuntimeError("no timed steps: raise --steps above 1")
    seconds = sum(r["epoch_s"] for r in result.history if r.get("images_per_s"))
    images = sum(r["images_per_s"] * r["epoch_s"] for r in result.history if r.get("images_per_s"))
    return images / seconds


def pipeline_rate(train_set: Any, batch: int, steps: int) -> float:
    """Images per second of the stream alone: ``steps`` global batches (at least 50, so
    the read-ahead buffers do not hide the work) read and put on the devices, the
    pipeline's start included."""
    steps = max(steps, 50)
    stream = data.stream_from_dataset(train_set)
    mesh = train.data_mesh()
    start = time.perf_counter()
    with streaming.stream_batches(stream, mesh, seed=0, batch_size=batch, stop=steps) as it:
        for images, labels in it:
            jax.block_until_ready((images, labels))
    return steps * batch / (time.perf_counter() - start)


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("JNET2NET_DATA_DIR"),
        help="folder holding cifar10_jpeg.npz or a tfds data dir (default $JNET2NET_DATA_DIR)",
    )
    parser.add_argument("--steps", type=int, default=78, help="steps per input (78: 1 epoch)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--quick", action="store_true", help="3 steps of batch 32: smoke check")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    steps, batch = (3, 32) if args.quick else (args.steps, args.batch_size)
    t0 = time.perf_counter()
    train_set, _ = data.load_protocol(data_dir=args.data_dir)
    load_s = time.perf_counter() - t0
    model = models.resnet20(stage_widths=(8, 16, 32), num_classes=10)
    config = train.TrainConfig(
        epochs=max(1, -(-steps * batch // len(train_set))),
        batch_size=batch,
        learning_rate=0.05,
        progress=False,
    )
    memory = train_rate(model, train_set, config.replace(input="memory"), steps)
    stream = train_rate(model, train_set, config.replace(input="stream"), steps)
    pipeline = pipeline_rate(train_set, batch, steps)
    print(f"data loaded in {load_s:.1f} s; {jax.device_count()} {jax.default_backend()} device(s)")
    print(
        "| data | model | batch | steps | memory img/s | stream img/s | stream / memory "
        "| pipeline img/s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| CIFAR-10 16x16, {len(train_set)} | ResNet-20 (8,16,32) | {batch} | {steps} "
        f"| {memory:,.0f} | {stream:,.0f} | {stream / memory:.2f} | {pipeline:,.0f} |"
    )


if __name__ == "__main__":
    main()
