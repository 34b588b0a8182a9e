"""Train-step throughput (images/s): jnet2net against a PyTorch reference, same run, same device.

For each network (ResNet-18, ResNet-50, VGG-16 with CIFAR stems, 10 classes) one SGD step
(Nesterov momentum 0.9, weight decay 5e-4, cross-entropy) on a fixed batch already on the
device is timed after a warm-up:

* ``jnet2net``: ``jnet2net.train.make_train_step`` (jitted, state donated, bf16 compute with
  float32 parameters on GPU; no augmentation, so both sides do the same work), timed with
  ``jax.block_until_ready`` on the new state and the metrics;
* ``torch eager``: the same architecture in PyTorch, channels_last, ``torch.autocast`` bf16
  on GPU, timed with ``torch.cuda.synchronize``;
* ``torch.compile``: the same module through ``torch.compile``.

Without an importable ``torch`` the reference columns are ``None`` (ours are still measured).
Weight decay: ours decays the kernels only, torch's every parameter (a negligible difference
in work). Prints a table and appends one JSON line per measurement to ``--json``
(default ``benchmarks/throughput.jsonl``) with the command, device, date and versions.

GPU (batch 512, bf16)::

    python benchmarks/throughput.py

CPU (``--small``: batch 32, float32, few steps; ratios only, not GPU figures)::

    python benchmarks/throughput.py --small
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

import jnet2net
from jnet2net.models import resnet18, resnet50, vgg16
from jnet2net.train import TrainConfig, create_train_state, make_train_step

NETS = ("resnet18", "resnet50", "vgg16")
JAX_MODELS = {"resnet18": resnet18, "resnet50": resnet50, "vgg16": vgg16}


# --- timing -------------------------------------------------------------------------------


def time_steps(
    step: Callable[[], Any], sync: Callable[[Any], None], warmup: int, steps: int
) -> float:
    """Seconds per step: ``warmup`` untimed calls, then ``steps`` timed ones and one sync."""
    out = None
    for _ in range(warmup):
        out = step()
    sync(out)
    start = time.perf_counter()
    for _ in range(steps):
        out = step()
    sync(out)
    return (time.perf_counter() - start) / steps


# --- jnet2net -----------------------------------------------------------------------------


def jax_images_per_s(name: str, batch: int, dtype: str, warmup: int, steps: int) -> float:
    """Images/s of jnet2net's jitted train step for preset ``name``."""
    model = JAX_MODELS[name]()
    config = TrainConfig(
        epochs=1, batch_size=batch, compute_dtype=dtype, augment="none", progress=False
    )
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, (batch,), dtype=np.int32)
    state = create_train_state(model, config, images, steps_per_epoch=100)
    step = make_train_step(model, config, mean=(125.0,) * 3, std=(63.0,) * 3)
    images, labels = jax.device_put(images), jax.device_put(labels)
    holder = {"state": state}

    def one() -> Any:
        holder["state"], metrics = step(holder["state"], images, labels)
        return holder["state"], metrics

    return batch / time_steps(one, jax.block_until_ready, warmup, steps)


# --- PyTorch reference --------------------------------------------------------------------


def torch_model(name: str) -> Any:
    """The PyTorch twin of jnet2net's preset ``name`` (same layers, widths and strides)."""
    import torch
    from torch import nn

    def conv_bn(c_in: int, c_out: int, k: int, stride: int = 1) -> list[Any]:
        return [
            nn.Conv2d(c_in, c_out, k, stride, padding=k // 2, bias=False),
            nn.BatchNorm2d(c_out),
        ]

    class Block(nn.Module):
        def __init__(self, kind: str, c_in: int, width: int, inner: int, stride: int) -> None:
            super().__init__()
            if kind == "basic":
                layers = [*conv_bn(c_in, inner, 3, stride), nn.ReLU(inplace=True)]
                layers += conv_bn(inner, width, 3)
            else:
                layers = [*conv_bn(c_in, inner, 1), nn.ReLU(inplace=True)]
                layers += [*conv_bn(inner, inner, 3, stride), nn.ReLU(inplace=True)]
                layers += conv_bn(inner, width, 1)
            self.body = nn.Sequential(*layers)
            projection = stride != 1 or c_in != width
            self.shortcut = nn.Sequential(*conv_bn(c_in, width, 1, stride)) if projection else None

        def forward(self, x: Any) -> Any:
            y = self.body(x)
            return torch.relu(y + (x if self.shortcut is None else self.shortcut(x)))

    if name.startswith("vgg"):
        depths = {"vgg16": (2, 2, 3, 3, 3)}[name]
        layers, c_in = [], 3
        for depth, width in zip(depths, (64, 128, 256, 512, 512), strict=True):
            for _ in range(depth):
                layers += [*conv_bn(c_in, width, 3), nn.ReLU(inplace=True)]
                c_in = width
            layers.append(nn.MaxPool2d(2))
        return nn.Sequential(*layers, nn.Flatten(), nn.Linear(512, 10))
    kind, depths, widths, stem = {
        "resnet18": ("basic", (2, 2, 2, 2), (64, 128, 256, 512), 64),
        "resnet50": ("bottleneck", (3, 4, 6, 3), (256, 512, 1024, 2048), 64),
    }[name]
    layers = [*conv_bn(3, stem, 3), nn.ReLU(inplace=True)]
    c_in = stem
    for s, (depth, width) in enumerate(zip(depths, widths, strict=True)):
        inner = width if kind == "basic" else width // 4
        for b in range(depth):
            layers.append(Block(kind, c_in, width, inner, 2 if s > 0 and b == 0 else 1))
            c_in = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, 10))


def torch_images_per_s(
    name: str, batch: int, bf16: bool, compiled: bool, warmup: int, steps: int
) -> float:
    """Images/s of a PyTorch train step (channels_last, autocast bf16 on GPU)."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = torch_model(name).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    images = torch.randn(batch, 3, 32, 32, device=device).to(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch,), device=device)
    loss_fn = torch.nn.CrossEntropyLoss()

    def train_step() -> Any:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model(images), labels)
        loss.backward()
        optimizer.step()
        return loss

    step = torch.compile(train_step) if compiled else train_step

    def sync(_: Any) -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    return batch / time_steps(step, sync, warmup, steps)


# --- the report ---------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    """Command, device, date and versions."""
    import flax

    info = {
        "command": " ".join([os.path.relpath(sys.argv[0]), *sys.argv[1:]]),
        "device": f"{jax.devices()[0].platform}: {getattr(jax.devices()[0], 'device_kind', '')}",
        "cpu_count": os.cpu_count(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "jnet2net": jnet2net.__version__,
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    except ImportError:
        info["torch"] = None
    return info


def measure(
    args: argparse.Namespace, on_row: Callable[[dict[str, Any]], None] = lambda row: None
) -> list[dict[str, Any]]:
    """Every requested (network, implementation) measurement; ``on_row`` gets each network's
    row as soon as it is measured (so a run stopped by a time limit keeps what it has)."""
    gpu = jax.default_backend() != "cpu"
    small = args.small or not gpu
    batch = args.batch or (32 if small else 512)
    dtype = "float32" if small else "bfloat16"
    warmup, steps = (2, args.steps or 5) if small else (10, args.steps or 50)
    use_torch = not args.no_torch and torch_available()
    if not args.no_torch and not use_torch:
        print("torch is not importable: the PyTorch reference is skipped", flush=True)
    rows = []
    for name in args.nets:
        row = {"net": name, "batch": batch, "dtype": dtype, "steps": steps}
        row["jnet2net_images_per_s"] = jax_images_per_s(name, batch, dtype, warmup, steps)
        if not args.no_torch and not use_torch:
            row["torch_eager_images_per_s"] = row["torch_compile_images_per_s"] = None
        if use_torch:
            row["torch_eager_images_per_s"] = torch_images_per_s(
                name, batch, not small, False, warmup, steps
            )
            if not args.no_compile:
                row["torch_compile_images_per_s"] = torch_images_per_s(
                    name, batch, not small, True, warmup, steps
                )
        rows.append(row)
        on_row(row)
        print(format_row(row), flush=True)
    return rows


def torch_available() -> bool:
    """Whether ``import torch`` works."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def format_row(row: dict[str, Any]) -> str:
    """One line of the table: images/s and jnet2net's ratio to each reference (x ours/theirs)."""
    parts = [f"{row['net']:<9} batch {row['batch']:<4} {row['dtype']:<8}"]
    ours = row["jnet2net_images_per_s"]
    parts.append(f"jnet2net {ours:>9.1f}")
    for ref in ("torch_eager", "torch_compile"):
        value = row.get(f"{ref}_images_per_s")
        if value:
            parts.append(f"{ref} {value:>9.1f} (x{ours / value:.2f})")
    return " | ".join(parts)


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="CPU mode: batch 32, float32")
    parser.add_argument("--nets", nargs="*", default=list(NETS))
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--json", default=str(pathlib.Path(__file__).parent / "throughput.jsonl"))
    return parser


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Measures, prints the table and appends JSON lines."""
    args = build_parser().parse_args(argv)
    env = environment()
    print(json.dumps(env))

    def append(row: dict[str, Any]) -> None:
        with open(args.json, "a") as f:
            f.write(json.dumps({**env, **row}) + "\n")

    return measure(args, append)


if __name__ == "__main__":
    main()
