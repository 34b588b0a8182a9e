"""Shared pieces of the experiment scripts: data by name, timed training runs, tables, plots.

Every script in ``experiments/`` trains with :func:`jnet2net.train.fit` through
:func:`train_run`, which returns a :class:`Run` (per-epoch curve of test accuracy against
steps and training seconds), and writes its outputs with :func:`write_json`,
:func:`markdown_table` and :func:`plot_curves` / :func:`plot_budget`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import pathlib
import platform
import sys
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

import jnet2net
from jnet2net import data as data_lib
from jnet2net.train import TrainConfig, fit, read_jsonl

#: The label every result of a CPU run on the digits set carries.
REDUCED_NOTE = "reduced run on digits, CPU (2 cores), not the CIFAR-10 protocol"


# --- data ---------------------------------------------------------------------------------


def load_data(
    name: str,
    *,
    data_dir: str | None = None,
    npz: str | None = None,
    train_limit: int | None = None,
    resolution: int | None = None,
    train_subset: int | None = None,
    subset_seed: int = 0,
) -> tuple[data_lib.Dataset, data_lib.Dataset]:
    """``(train, test)`` of dataset ``name`` (``'digits'``, ``'cifar10'``, ...).

    Both sets carry the training set's ``mean``/``std`` (``jnet2net.data.load_protocol``).

    Args:
      name: a name known to ``jnet2net.data.load``.
      data_dir: a tfds data dir or a folder with ``<name>_jpeg.npz`` (``None``: tfds' default).
      npz: an ``.npz`` pack to read instead (``jnet2net.data.load_npz``).
      train_limit: keep only the first ``n`` training examples (smoke tests; taken after
        ``train_subset``).
      resolution: downsample both sets to this height (``jnet2net.data.downsample``).
      train_subset: train on a seeded stratified subset of this many examples.
      subset_seed: seed of the subset.
    """
    if npz:
        train = data_lib.shrink(
            data_lib.load_npz(npz, "train", name=name),
            resolution=resolution,
            subset=train_subset,
            seed=subset_seed,
        )
        test = data_lib.shrink(data_lib.load_npz(npz, "test", name=name), resolution=resolution)
        test = dataclasses.replace(test, mean=train.mean, std=train.std)
    else:
        train, test = data_lib.load_protocol(
            name,
            data_dir=data_dir,
            resolution=resolution,
            train_subset=train_subset,
            seed=subset_seed,
        )
    if train_limit:
        train = train.take(int(train_limit))
    return train, test


def data_for(args: argparse.Namespace) -> tuple[data_lib.Dataset, data_lib.Dataset]:
    """:func:`load_data` of the options :func:`add_common_args` added (``--tiny``: 256)."""
    return load_data(
        args.dataset,
        data_dir=args.data_dir,
        npz=args.npz,
        train_limit=256 if args.tiny else None,
        resolution=args.resolution,
        train_subset=args.train_subset,
        subset_seed=args.subset_seed,
    )


def base_config(args: argparse.Namespace, setup: dict[str, Any], epochs: int) -> TrainConfig:
    """The scripts' training config: ``--batch-size/--lr/--dtype/--seed`` over ``setup``.

    Digits (8x8) get a 1-pixel random crop and no flip (mirrored digits are other digits);
    other datasets crop with 4 pixels of padding and flip.
    """
    digits = args.dataset == "digits"
    return TrainConfig(
        epochs=epochs,
        batch_size=args.batch_size or setup["batch_size"],
        learning_rate=args.lr or setup["lr"],
        augment="crop" if digits else "crop_flip",
        crop_padding=1 if digits else 4,
        compute_dtype=args.dtype or default_dtype(),
        seed=args.seed,
        progress=False,
    )


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Adds the scripts' shared options.

    ``--dataset --data-dir --npz --resolution --train-subset --subset-seed --tiny`` pick the
    data (:func:`data_for`); ``--out --batch-size --seed --dtype`` set up the run.
    """
    parser.add_argument("--dataset", default="digits", help="digits (CPU) or cifar10 (GPU)")
    parser.add_argument("--data-dir", default=None, help="tfds data dir or folder with the npz")
    parser.add_argument("--npz", default=None, help="an npz pack, e.g. cifar10_jpeg.npz")
    parser.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="downsample images to N x N by k x k means (CIFAR-10 on CPU: 16)",
    )
    parser.add_argument(
        "--train-subset",
        type=int,
        default=None,
        help="train on a seeded stratified subset of N examples (CIFAR-10 on CPU: 10000)",
    )
    parser.add_argument("--subset-seed", type=int, default=0, help="seed of --train-subset")
    parser.add_argument("--out", default=None, help="output folder (default results/<dataset>)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default=None, help="float32 or bfloat16 (default by device)")
    parser.add_argument(
        "--tiny", action="store_true", help="smoke mode: 1 epoch budgets, a few hundred images"
    )


def configure_reduced_mode(dataset: str) -> bool:
    """On CPU with ``digits``: compile with ``jax_disable_most_optimizations``.

    The digits networks are so small that XLA's optimising compile (minutes per network on
    2 shared cores) dwarfs their training; every run of a reduced experiment compiles the
    same way, so its seconds compare with each other, not with optimised builds.

    Returns:
      Whether the setting was applied.
    """
    if dataset != "digits" or jax.default_backend() != "cpu":
        return False
    jax.config.update("jax_disable_most_optimizations", True)
    return True


# --- logged runs (JSONL logs of train.fit) ------------------------------------------------


def finished(path: pathlib.Path, epochs: int) -> bool:
    """Whether the log holds the run's last epoch."""
    if not path.exists():
        return False
    epochs_logged = [r["epoch"] for r in read_jsonl(path) if "event" not in r]
    return bool(epochs_logged) and epochs_logged[-1] == epochs


def epoch_records(path: pathlib.Path) -> list[dict[str, Any]]:
    return [r for r in read_jsonl(path) if "event" not in r and r.get("test_acc") is not None]


def run_seconds(record: dict[str, Any]) -> float:
    """Training seconds with compiles, growth events and scale-down freezes (evaluation
    excluded)."""
    events = record.get("grow_s", 0.0) + record.get("move_s", 0.0)
    return record["train_s"] + record.get("compile_s", 0.0) + events


def step_seconds(record: dict[str, Any]) -> float:
    """Training seconds without compiles: the steps, growth events and scale-down freezes
    (what a run costs once its programs are compiled or come from a compilation cache)."""
    return record["train_s"] + record.get("grow_s", 0.0) + record.get("move_s", 0.0)


def to_target(records: list[dict[str, Any]], target: float) -> tuple[float, float] | None:
    """``(flops, seconds)`` at the first epoch reaching ``target``."""
    for record in records:
        if record["test_acc"] >= target:
            return record["train_flops"], run_seconds(record)
    return None


def mean_spread(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and standard deviation over seeds (``None`` values left out and counted)."""
    known = [v for v in values if v is not None and math.isfinite(v)]
    return {
        "mean": float(np.mean(known)) if known else None,
        "std": float(np.std(known)) if len(known) > 1 else None,
        "n": len(known),
        "missing": len(values) - len(known),
    }


def format_spread(stats: dict[str, Any], digits: int = 2, scale: float = 1.0) -> str:
    """``"mean ± sd"`` of a :func:`mean_spread` (times ``scale``; the mean alone when one
    value is known); its ``mean`` must not be ``None``."""
    text = f"{scale * stats['mean']:.{digits}f}"
    if stats.get("std") is not None:
        text += f" ± {scale * stats['std']:.{digits}f}"
    return text


# --- timed runs ---------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    """One training run's curve and totals.

    Attributes:
      label: legend name.
      epochs: the schedule's length (the budget).
      step: ``(n,)`` global step at each epoch's end.
      train_s: ``(n,)`` training seconds so far: step time only (compiles and evaluation
        excluded; the first step, which ``fit`` times with its compile, is counted at the
        first epoch's mean step time).
      test_acc: ``(n,)`` test accuracy after each epoch.
      config: the TrainConfig as a dict (learning rate, warm-up, ...).
      extra: anything else worth recording (e.g. the teacher's time).
    """

    label: str
    epochs: int
    step: list[int]
    train_s: list[float]
    test_acc: list[float]
    config: dict[str, Any]
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def final_acc(self) -> float:
        """Test accuracy after the last epoch."""
        return self.test_acc[-1]

    @property
    def total_s(self) -> float:
        """Training seconds of the whole run."""
        return self.train_s[-1]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields plus ``final_acc`` and ``total_s``."""
        out = dataclasses.asdict(self)
        out.update(final_acc=self.final_acc, total_s=self.total_s)
        return out


def run_from_history(
    label: str, epochs: int, history: list[dict[str, Any]], config: TrainConfig, **extra: Any
) -> Run:
    """A :class:`Run` from ``fit``'s per-epoch records (``epoch_s``, ``first_step_s``, ...)."""
    seconds, total, previous_step = [], 0.0, 0
    for index, record in enumerate(history):
        epoch_s = record["epoch_s"]
        steps = record["step"] - previous_step
        if index == 0 and steps > 1:  # fit keeps the first step (compile) out of epoch_s
            epoch_s *= steps / (steps - 1)
        total += epoch_s
        previous_step = record["step"]
        seconds.append(total)
    return Run(
        label=label,
        epochs=epochs,
        step=[int(r["step"]) for r in history],
        train_s=seconds,
        test_acc=[float(r["test_acc"]) for r in history],
        config=config.to_dict(),
        extra=extra,
    )


def train_run(
    label: str,
    model: Any,
    train: data_lib.Dataset,
    test: data_lib.Dataset,
    config: TrainConfig,
    *,
    variables: Any = None,
    **extra: Any,
) -> tuple[Run, Any]:
    """Trains with ``jnet2net.train.fit`` and returns ``(run, final_variables)``."""
    result = fit(model, train, test, config, variables=variables)
    run = run_from_history(label, config.epochs, result.history, config, **extra)
    print(
        f"  {label:<28} epochs={config.epochs:<3} acc={run.final_acc:.4f} "
        f"train_s={run.total_s:.1f}",
        flush=True,
    )
    return run, jax.device_get(result.state.variables)


def first_reaching(run: Run, target: float) -> tuple[int | None, float | None]:
    """``(step, train_s)`` of the first epoch whose test accuracy is ``>= target``."""
    for step, seconds, acc in zip(run.step, run.train_s, run.test_acc, strict=True):
        if acc >= target:
            return step, seconds
    return None, None


# --- provenance ---------------------------------------------------------------------------


def environment(note: str | None = None) -> dict[str, Any]:
    """Command, device, date (UTC) and versions of this process, for every results file."""
    import flax
    import optax

    device = jax.devices()[0]
    info = {
        "command": " ".join([os.path.relpath(sys.argv[0]), *sys.argv[1:]])
        if sys.argv and sys.argv[0]
        else "",
        "device": f"{device.platform}: {getattr(device, 'device_kind', '')}",
        "device_count": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "jnet2net": jnet2net.__version__,
    }
    info["jax_disable_most_optimizations"] = bool(jax.config.read("jax_disable_most_optimizations"))
    if note:
        info["note"] = note
    return info


def default_dtype() -> str:
    """``'bfloat16'`` on an accelerator, ``'float32'`` on CPU."""
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def out_dir(script_file: str, dataset: str, out: str | None) -> pathlib.Path:
    """``out`` or ``<script folder>/results/<dataset>``, created."""
    path = pathlib.Path(out) if out else pathlib.Path(script_file).parent / "results" / dataset
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- writing ------------------------------------------------------------------------------


def write_json(path: str | os.PathLike, payload: Any) -> pathlib.Path:
    """Writes ``payload`` as indented JSON (numpy scalars converted)."""
    path = pathlib.Path(path)
    path.write_text(json.dumps(payload, indent=1, default=_json_default) + "\n")
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def fmt(value: Any, digits: int = 4) -> str:
    """A table cell: floats rounded, ``None`` as an en dash."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) >= 1000 else f"{value:.{digits}f}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table of ``rows`` under ``headers``."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def provenance_md(env: dict[str, Any]) -> str:
    """The provenance lines at the top of every ``table.md``."""
    lines = [f"- {key}: `{value}`" for key, value in env.items() if key != "note"]
    head = f"**{env['note']}**\n\n" if env.get("note") else ""
    return head + "\n".join(lines) + "\n"


def _figure(ncols: int, width: float = 5.5) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width * ncols, 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots(1, ncols)


def plot_curves(
    runs: Sequence[Run],
    path: str | os.PathLike,
    *,
    title: str = "",
    offsets: Any = None,
    step_label: str = "training step",
) -> pathlib.Path:
    """Test accuracy against steps (left) and training seconds (right).

    ``offsets`` maps a run label to ``(steps, seconds)`` added before plotting (e.g. a
    student's teacher time, so grown runs start where their teacher ended); ``step_label``
    names the left x axis (e.g. ``'epoch'`` when the runs' ``step`` holds epochs).
    """
    offsets = offsets or {}
    figure, (by_step, by_time) = _figure(2)
    for run in runs:
        d_step, d_s = offsets.get(run.label, (0, 0.0))
        steps = np.asarray(run.step) + d_step
        seconds = np.asarray(run.train_s) + d_s
        by_step.plot(steps, run.test_acc, marker="o", markersize=3, label=run.label)
        by_time.plot(seconds, run.test_acc, marker="o", markersize=3, label=run.label)
    by_step.set_xlabel(step_label)
    by_time.set_xlabel("training seconds")
    by_step.set_ylabel("test accuracy")
    for axes in (by_step, by_time):
        axes.grid(True, alpha=0.3)
    by_time.legend(loc="lower right", fontsize="x-small")
    if title:
        figure.suptitle(title, fontsize="small")
    return _save(figure, path)


def plot_budget(
    series: dict[str, Sequence[tuple[int, float, float]]],
    path: str | os.PathLike,
    *,
    title: str = "",
) -> pathlib.Path:
    """Final test accuracy against the epoch budget (left) and total seconds (right).

    ``series`` maps a label to ``(epochs, seconds, final_acc)`` points.
    """
    figure, (by_epochs, by_time) = _figure(2)
    for label, points in series.items():
        points = sorted(points)
        by_epochs.plot([p[0] for p in points], [p[2] for p in points], marker="o", label=label)
        by_time.plot([p[1] for p in points], [p[2] for p in points], marker="o", label=label)
    by_epochs.set_xlabel("epoch budget (full schedule each)")
    by_time.set_xlabel("training seconds (teacher included for grown runs)")
    by_epochs.set_ylabel("final test accuracy")
    for axes in (by_epochs, by_time):
        axes.grid(True, alpha=0.3)
    by_time.legend(loc="lower right", fontsize="x-small")
    if title:
        figure.suptitle(title, fontsize="small")
    return _save(figure, path)


def _save(figure: Any, path: str | os.PathLike) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path
