"""Convolutions on tiny maps: XLA's convolution against the library's pixel-wise lowering.

Times, in one process, (a) single 3x3 'SAME' convolutions, forward and forward + backward,
lowered as :func:`jax.lax.conv_general_dilated` and as
:func:`jnet2net.models.lowering.pixelwise_conv`, and (b) the training step of the CPU
protocol's ResNet-18 (widths (16, 32, 64, 128), 16x16 inputs, batch 128, SGD-Nesterov)
with the library's convolutions as they lower by default and under
:func:`~jnet2net.models.lowering.plain_convs`, at cut 0 (full training) and after each
scale-down cut (stages frozen in front: the suffix's step on the cut's input), and (c)
VGG-11's full training step at full and half width on 16x16 inputs. Each is
compiled by one call, then the median of ``--runs`` repeats of ``--calls`` calls is taken.

Run::

    JAX_PLATFORMS=cpu python benchmarks/bench_conv_lowering.py --out benchmarks/conv_lowering.jsonl
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from bench_surgery import cpu_model
from jax import lax

from jnet2net.models import resnet18, vgg11
from jnet2net.models.lowering import pixelwise_conv, plain_convs
from jnet2net.scale_down.split import split_variables, suffix_apply
from jnet2net.train.steps import cross_entropy_loss

NHWC = ("NHWC", "HWIO", "NHWC")


def median_seconds(fn: Callable[..., Any], *args: Any, calls: int, runs: int) -> float:
    """Median over ``runs`` of the mean seconds of ``calls`` calls (after a compiling call)."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(calls):
            out = fn(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times)


def conv_rows(calls: int, runs: int) -> list[dict]:
    rows = []
    shapes = [(128, 2, 2, 128), (128, 1, 1, 128), (128, 2, 2, 64), (512, 2, 2, 256)]
    pads = ((1, 1), (1, 1))
    for shape in shapes:
        x = jax.random.normal(jax.random.key(0), shape)
        k = jax.random.normal(jax.random.key(1), (3, 3, shape[-1], shape[-1]))
        lowerings = {
            "lax": lambda x, k: lax.conv_general_dilated(
                x, k, (1, 1), "SAME", dimension_numbers=NHWC
            ),
            "pixelwise": lambda x, k: pixelwise_conv(x, k, pads),
        }
        row: dict[str, Any] = {"bench": "conv3x3", "shape": list(shape)}
        for name, conv in lowerings.items():
            grad = jax.grad(lambda x, k, conv=conv: jnp.sum(conv(x, k) ** 2), (0, 1))
            row[f"{name}_fwd_ms"] = 1e3 * median_seconds(
                jax.jit(conv), x, k, calls=calls, runs=runs
            )
            row[f"{name}_grad_ms"] = 1e3 * median_seconds(
                jax.jit(grad), x, k, calls=calls, runs=runs
            )
        row["fwd_speedup"] = row["lax_fwd_ms"] / row["pixelwise_fwd_ms"]
        row["grad_speedup"] = row["lax_grad_ms"] / row["pixelwise_grad_ms"]
        rows.append(row)
    return rows


def suffix_step(model: Any, cut: int, tx: optax.GradientTransformation) -> Callable:
    def step(params: Any, stats: Any, opt: Any, h: jax.Array, labels: jax.Array) -> Any:
        def loss_fn(p: Any) -> tuple[jax.Array, Any]:
            logits, new = suffix_apply(model, p, stats, h, cut, train=True)
            return cross_entropy_loss(logits, labels).mean(), new

        (_, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), new_stats, opt

    return jax.jit(step)


def resnet_rows(calls: int, runs: int) -> list[dict]:
    model = resnet18(stage_widths=(16, 32, 64, 128), num_classes=10)
    x = jax.random.normal(jax.random.key(0), (128, 16, 16, 3))
    labels = jnp.arange(128) % 10
    variables = model.init(jax.random.key(1), x, train=False)
    tx = optax.sgd(0.1, momentum=0.9, nesterov=True)
    rows = []
    for cut in (0, 3, 5, 7):
        _, suffix = split_variables(model, variables, cut)
        h = model.apply(variables, x, train=False, stop=cut) if cut else x
        params, stats = suffix["params"], suffix.get("batch_stats", {})
        args = (params, stats, tx.init(params), h, labels)
        row: dict[str, Any] = {"bench": "resnet18_16px_step", "cut": cut, "input": list(h.shape)}
        row["library_ms"] = 1e3 * median_seconds(
            suffix_step(model, cut, tx), *args, calls=calls, runs=runs
        )
        with plain_convs():  # traced (and compiled) inside: every conv is the lax primitive
            row["lax_ms"] = 1e3 * median_seconds(
                suffix_step(model, cut, tx), *args, calls=calls, runs=runs
            )
        row["speedup"] = row["lax_ms"] / row["library_ms"]
        rows.append(row)
    for row in rows:
        row["library_of_full"] = row["library_ms"] / rows[0]["library_ms"]
        row["lax_of_full"] = row["lax_ms"] / rows[0]["lax_ms"]
    return rows


def vgg_rows(calls: int, runs: int) -> list[dict]:
    """Full training steps of VGG-11 (full and half width) on 16x16 inputs, batch 128."""
    x = jax.random.normal(jax.random.key(0), (128, 16, 16, 3))
    labels = jnp.arange(128) % 10
    tx = optax.sgd(0.1, momentum=0.9, nesterov=True)
    rows = []
    for widths in ((64, 128, 256, 512, 512), (32, 64, 128, 256, 256)):
        model = vgg11(stage_widths=widths, num_classes=10)
        variables = model.init(jax.random.key(1), x, train=False)
        params, stats = variables["params"], variables["batch_stats"]
        args = (params, stats, tx.init(params), x, labels)
        row: dict[str, Any] = {"bench": "vgg11_16px_step", "widths": list(widths)}
        row["library_ms"] = 1e3 * median_seconds(
            suffix_step(model, 0, tx), *args, calls=calls, runs=runs
        )
        with plain_convs():
            row["lax_ms"] = 1e3 * median_seconds(
                suffix_step(model, 0, tx), *args, calls=max(1, calls // 3), runs=runs
            )
        row["speedup"] = row["lax_ms"] / row["library_ms"]
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", default=None, help="append the rows to this JSONL file")
    parser.add_argument(
        "--benches",
        nargs="+",
        default=["conv", "resnet", "vgg"],
        choices=["conv", "resnet", "vgg"],
        help="which tables to measure",
    )
    args = parser.parse_args()
    meta = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="minutes"),
        "device": f"{jax.devices()[0].platform}: {cpu_model()}",
        "jax": jax.__version__,
    }
    benches = {"conv": conv_rows, "resnet": resnet_rows, "vgg": vgg_rows}
    rows = [row for name in args.benches for row in benches[name](args.calls, args.runs)]
    for row in rows:
        row.update(meta)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}))
    if args.out:
        with open(args.out, "a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
