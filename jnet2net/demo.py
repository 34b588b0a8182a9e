"""The offline demo: teacher -> grow -> student, against the same network from scratch.

``jnet2net demo`` (or :func:`run_demo`) runs, on scikit-learn's bundled 8x8 digits:

1. train a small CIFAR-style ResNet (the teacher) and checkpoint it with Orbax;
2. restore it, grow it wider and deeper (Net2WiderNet + Net2DeeperNet), check on random
   inputs that the student computes the teacher's function, checkpoint the student;
3. train the student, and the same architecture from a fresh initialisation, with the same
   config and number of steps;
4. print a table (steps to the teacher's accuracy, final accuracy, wall time) and plot the
   test-accuracy curves of all three runs.

Everything needed ships with the package: no download, a minute or two on a laptop CPU.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax

from jnet2net import checkpoint, data, train
from jnet2net.compile import run_once
from jnet2net.models import ResNet
from jnet2net.plot import plot_runs
from jnet2net.train.batches import stream_key

RUNS = ("teacher", "student", "scratch")
GROWN = "grown"


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """Sizes and budgets of the demo.

    Attributes:
      teacher: the teacher network.
      widths: the student's stage widths (Net2WiderNet).
      depths: the student's blocks per stage (Net2DeeperNet).
      teacher_config: how the teacher is trained.
      config: how the student and the scratch run are trained (the same budget).
      train_examples: use only this many training examples (``None``: all 1,437).
    """

    teacher: nn.Module
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    teacher_config: train.TrainConfig
    config: train.TrainConfig
    train_examples: int | None = None


def demo_settings(*, quick: bool = False, epochs: int | None = None, seed: int = 0) -> DemoSettings:
    """The demo's settings; ``quick``: one epoch of tiny networks on 256 images (for tests).

    The teacher trains at learning rate 0.05; the student and the scratch run both at 0.02,
    low enough that the student keeps what it inherited in its first steps.
    """
    base = train.TrainConfig(
        batch_size=32,
        optimizer="sgd",
        weight_decay=5e-4,
        schedule="cosine",
        augment="none",
        seed=seed,
        eval_batch_size=512,
    )
    if quick:
        return DemoSettings(
            teacher=ResNet(stage_depths=(1, 1), stage_widths=(4, 8)),
            widths=(6, 12),
            depths=(2, 1),
            teacher_config=base.replace(epochs=epochs or 1, learning_rate=0.05),
            config=base.replace(epochs=epochs or 1, learning_rate=0.02),
            train_examples=256,
        )
    return DemoSettings(
        teacher=ResNet(stage_depths=(1, 1, 1), stage_widths=(4, 8, 16)),
        widths=(8, 16, 32),
        depths=(2, 2, 2),
        teacher_config=base.replace(epochs=epochs or 5, learning_rate=0.05),
        config=base.replace(epochs=epochs or 4, learning_rate=0.02),
    )


def steps_to_accuracy(records: list[dict[str, Any]], target: float) -> int | None:
    """Step of the first record whose ``test_acc`` reaches ``target`` (``None``: never)."""
    for record in records:
        if record.get("test_acc") is not None and record["test_acc"] >= target:
            return int(record["step"])
    return None


def _init(model: nn.Module, key: jax.Array, example: jax.Array) -> Any:
    return model.init(key, example, train=False)


def init_variables(model: nn.Module, image_shape: tuple[int, ...], *, seed: int) -> Any:
    """``model.init`` with ``seed``'s init stream, compiled without XLA's slow passes.

    Initialisation runs once per network; optimising its program costs more than it saves.
    """
    example = jax.numpy.zeros((1, *image_shape), jax.numpy.float32)
    key = stream_key(seed, "init")
    return run_once(_init, {"model": model}, key=key, example=example)


def _count_params(variables: Any) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(variables["params"]))


def _describe(model: Any) -> str:
    return f"ResNet(depths={list(model.stage_depths)}, widths={list(model.stage_widths)})"


def _train_run(
    name: str,
    model: nn.Module,
    train_set: data.Dataset,
    test_set: data.Dataset,
    config: train.TrainConfig,
    run_dir: pathlib.Path,
    *,
    variables: Any = None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Trains one run with a checkpoint per epoch; its log starts with a step-0 evaluation.

    The run's seconds are its log's: ``train_s`` (the training steps) and ``wall_s`` (since
    the run started, compiling and evaluating included), as in every ``fit`` log, so the
    table, the demo's plot and ``jnet2net plot`` mean the same by them.
    """
    config = config.replace(log_path=str(run_dir / "metrics.jsonl"))
    if variables is None:
        variables = init_variables(model, train_set.image_shape, seed=config.seed)

    def on_epoch_end(state: Any, record: dict[str, Any]) -> None:
        if record["step"] == 0:
            log(f"{name}: {_describe(model)}, step 0 test_acc {record['test_acc']:.3f}")
            return
        checkpoint.save_train_state(
            run_dir,
            model,
            state,
            config,
            metadata={"run": name, "demo": True},
            input_shape=train_set.image_shape,
            max_to_keep=1,
        )
        log(
            f"{name}: epoch {record['epoch']}/{config.epochs} step {record['step']} "
            f"loss {record['train_loss']:.3f} test_acc {record['test_acc']:.3f} "
            f"(train {record['train_s']:.1f} s, wall {record['wall_s']:.1f} s)"
        )

    result = train.fit(
        model,
        train_set,
        test_set,
        config,
        variables=variables,
        on_epoch_end=on_epoch_end,
        initial_eval=True,
    )
    last = result.history[-1]
    return {
        "model": model,
        "variables": result.state.variables,
        "records": result.history,
        "final_acc": last["test_acc"],
        "train_s": last["train_s"],
        "wall_s": last["wall_s"],
        "params": _count_params(result.state.variables),
        "log": pathlib.Path(config.log_path),
    }


def format_table(results: dict[str, Any]) -> str:
    """The demo's summary table as text."""
    target = results["target_accuracy"]
    header = (
        f"{'run':<9}{'params':>9}{'steps to ' + format(target, '.1%'):>17}{'final acc':>11}"
        f"{'train s':>9}{'wall s':>8}"
    )
    lines = [header, "-" * len(header)]
    for name in RUNS:
        run = results[name]
        steps = run["steps_to_target"]
        steps_text = "-" if name == "teacher" else ("not reached" if steps is None else str(steps))
        lines.append(
            f"{name:<9}{run['params']:>9,}{steps_text:>17}{run['final_acc']:>11.1%}"
            f"{run['train_s']:>9.1f}{run['wall_s']:>8.1f}"
        )
    lines += [
        "train s: the training steps; wall s: the whole run, compiling and evaluating",
        "included (the scratch run reuses the student's compiled step). Student and scratch:",
        "same config and steps.",
        f"grow (restore, widen, deepen, check, save): {results['grow_s']:.1f} s, "
        f"max relative output error {results['relative_error']:.1e}",
    ]
    return "\n".join(lines)


def _check_replaceable(out: pathlib.Path) -> None:
    """Raises FileExistsError when ``out/<run>`` holds something the demo did not write."""
    for name in (*RUNS, GROWN):
        path = out / name
        if not path.exists():
            continue
        if not path.is_dir():
            raise FileExistsError(
                f"{path} is a file in the way of the demo's {name} run; choose another --out"
            )
        if not checkpoint.all_steps(path):
            continue  # no checkpoint: leftovers of an interrupted demo
        try:
            metadata = checkpoint.checkpoint_info(path).metadata
        except (ValueError, FileNotFoundError):
            metadata = {}
        if not (metadata.get("demo") or metadata.get("run") == name):
            raise FileExistsError(
                f"{path} holds a run that the demo did not write; the demo replaces "
                f"{', '.join((*RUNS, GROWN))} in {out}: choose another --out"
            )


def run_demo(
    out_dir: str | pathlib.Path = "runs/demo",
    *,
    quick: bool = False,
    epochs: int | None = None,
    seed: int = 0,
    target_accuracy: float | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Teacher -> grow -> student vs. scratch on the bundled digits; see the module doc.

    Args:
      out_dir: gets ``teacher/``, ``grown/``, ``student/``, ``scratch/`` (Orbax checkpoints
        and ``metrics.jsonl``), ``curves.png`` and ``results.json``; those are replaced,
        unless one holds a checkpoint that the demo did not write (FileExistsError).
      quick: tiny networks, a subset of the data and one epoch per run (for tests).
      epochs: epochs of every run (default: 5 for the teacher and 4 for the student and
        the scratch run; 1 with ``quick``).
      seed: seeds initialisation, data order and growth.
      target_accuracy: the accuracy that "steps to target" counts to (default: the
        teacher's final test accuracy, which the grown student starts from).
      log: where progress lines go.

    Returns:
      ``{'teacher'|'student'|'scratch': {'params', 'steps_to_target', 'final_acc',
      'train_s', 'wall_s', 'log'}, 'target_accuracy', 'relative_error', 'grow_s', 'total_s',
      'curves', 'table'}``.
    """
    start = time.perf_counter()
    settings = demo_settings(quick=quick, epochs=epochs, seed=seed)
    out = pathlib.Path(out_dir)
    _check_replaceable(out)
    for name in (*RUNS, GROWN):
        shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    train_set = data.load("digits", "train")
    test_set = data.load("digits", "test")
    if settings.train_examples is not None:
        train_set = train_set.take(settings.train_examples)
    log(f"digits: {len(train_set)} train / {len(test_set)} test images, 8x8x1")

    teacher = _train_run(
        "teacher",
        settings.teacher,
        train_set,
        test_set,
        settings.teacher_config,
        out / "teacher",
        log=log,
    )

    t_grow = time.perf_counter()
    grown = checkpoint.grow_checkpoint(
        out / "teacher",
        out / GROWN,
        key=jax.random.key(seed),
        widen={"widths": settings.widths, "noise": "split"},
        deepen={"depths": settings.depths},
        metadata={"demo": True},
    )
    grow_s = time.perf_counter() - t_grow
    log(
        f"grown: {_describe(settings.teacher)} -> {_describe(grown.model)}, "
        f"max relative output error {grown.relative_error:.1e} ({grow_s:.1f} s)"
    )

    student = _train_run(
        "student",
        grown.model,
        train_set,
        test_set,
        settings.config,
        out / "student",
        variables=grown.variables,
        log=log,
    )
    scratch = _train_run(
        "scratch", grown.model, train_set, test_set, settings.config, out / "scratch", log=log
    )

    target = teacher["final_acc"] if target_accuracy is None else target_accuracy
    results: dict[str, Any] = {
        "target_accuracy": target,
        "relative_error": grown.relative_error,
        "grow_s": grow_s,
    }
    for name, run in (("teacher", teacher), ("student", student), ("scratch", scratch)):
        results[name] = {
            "params": run["params"],
            "steps_to_target": steps_to_accuracy(run["records"], target),
            "final_acc": run["final_acc"],
            "train_s": run["train_s"],
            "wall_s": run["wall_s"],
            "log": str(run["log"]),
        }
    results["curves"] = str(
        plot_runs(
            [teacher["log"], student["log"], scratch["log"]],
            out / "curves.png",
            labels=["teacher", "student (grown)", "student from scratch"],
        )
    )
    results["total_s"] = time.perf_counter() - start
    results["table"] = format_table(results)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    log("")
    log(results["table"])
    log(f"curves: {results['curves']}; total {results['total_s']:.1f} s")
    return results
