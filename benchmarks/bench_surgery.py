"""Surgery speed: seconds to widen and deepen ResNet-50, VGG-16, ViT-Small on the CPU, compiled.

* widen: every stage width x1.5 (ResNet-50 also its stem width; the bottleneck inner widths
  follow the stage widths), ``noise='split'`` (the default); ViT-Small: embedding width x2
  (uniform replication), MLP width x1.5 and 6 -> 9 heads;
* deepen: one more block (ResNet) or conv layer (VGG) at the end of every stage; ViT-Small:
  one more block.

The growth is jitted with the architecture static
(``jax.jit(jnet2net.widen, static_argnames=('model', 'widths', 'stem_width'))``), compiled by
one warm-up call, then timed over ``--runs`` calls (``jax.block_until_ready``); the median is
reported. For comparison, ``eager`` is one plain (un-jitted) call after a warm-up call.
The networks have CIFAR stems and 10 classes, as the presets do; the variables are
``init`` on a 32x32 batch. Target: under 1 s each.

Run::

    JAX_PLATFORMS=cpu python benchmarks/bench_surgery.py
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

import jnet2net
from jnet2net.models import ViT, resnet50, vgg16, vit_small


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def scaled(widths: tuple[int, ...], factor: float) -> tuple[int, ...]:
    return tuple(round(w * factor) for w in widths)


def timed(grow: Callable[[], Any], runs: int) -> tuple[float, float]:
    """``(compile_and_first_call_s, median_s)`` of ``grow()``, synchronised."""
    start = time.perf_counter()
    jax.block_until_ready(grow())
    first = time.perf_counter() - start
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        jax.block_until_ready(grow())
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def bench(name: str, model: Any, runs: int) -> list[tuple[str, str, float, float, float]]:
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    key = jax.random.key(1)
    widen_kwargs: dict[str, Any] = {"widths": scaled(model.stage_widths, 1.5)}
    if getattr(model, "stem_width", None) is not None:
        widen_kwargs["stem_width"] = round(model.stem_width * 1.5)
    widen = jax.jit(jnet2net.widen, static_argnames=("model", "widths", "stem_width"))
    depths = tuple(d + 1 for d in model.stage_depths)
    deepen = jax.jit(jnet2net.deepen, static_argnames=("model", "depths"))
    rows = []
    first, median = timed(lambda: widen(model, variables, key=key, **widen_kwargs), runs)
    _, eager = timed(lambda: jnet2net.widen(model, variables, key=key, **widen_kwargs), 1)
    rows.append((name, f"widen x1.5 {widen_kwargs}", first, median, eager))
    first, median = timed(lambda: deepen(model, variables, key=key, depths=depths), runs)
    _, eager = timed(lambda: jnet2net.deepen(model, variables, key=key, depths=depths), 1)
    rows.append((name, f"deepen {model.stage_depths} -> {depths}", first, median, eager))
    return rows


def bench_vit(name: str, model: ViT, runs: int) -> list[tuple[str, str, float, float, float]]:
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    key = jax.random.key(1)
    sizes = {
        "embed_dim": 2 * model.embed_dim,
        "mlp_dim": round(1.5 * model.mlp_dim),
        "num_heads": round(1.5 * model.num_heads),
    }
    widen = jax.jit(jnet2net.widen, static_argnames=("model", *sizes))
    deepen = jax.jit(jnet2net.deepen, static_argnames=("model", "depth"))
    depth = model.depth + 1
    rows = []
    first, median = timed(lambda: widen(model, variables, key=key, **sizes), runs)
    _, eager = timed(lambda: jnet2net.widen(model, variables, key=key, **sizes), 1)
    rows.append((name, f"widen {sizes}", first, median, eager))
    first, median = timed(lambda: deepen(model, variables, key=key, depth=depth), runs)
    _, eager = timed(lambda: jnet2net.deepen(model, variables, key=key, depth=depth), 1)
    rows.append((name, f"deepen depth {model.depth} -> {depth}", first, median, eager))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed calls after the warm-up")
    args = parser.parse_args()
    print(
        f"# {datetime.date.today()}  {cpu_model()}  {os.cpu_count()} cores  "
        f"jax {jax.__version__}  backend {jax.default_backend()}  median of {args.runs} runs"
    )
    print("| network | growth | jit: compile + first call (s) | jit: median (s) | eager (s) |")
    print("|---|---|---|---|---|")
    networks = (
        (bench, "ResNet-50", resnet50()),
        (bench, "VGG-16", vgg16()),
        (bench_vit, "ViT-Small", vit_small()),
    )
    for run, name, model in networks:
        for net, growth, first, median, eager in run(name, model, args.runs):
            print(f"| {net} | {growth} | {first:.2f} | {median:.3f} | {eager:.2f} |", flush=True)


if __name__ == "__main__":
    main()
