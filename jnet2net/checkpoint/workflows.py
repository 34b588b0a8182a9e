"""Workflows over whole checkpoints: growing a teacher's checkpoint into a student's, and
moving a run's damaged last steps aside.

Orbax refuses to restore into a wider or deeper target, so growth goes through the
teacher's own architecture::

    teacher = jnet2net.checkpoint.restore("runs/teacher")
    model, variables = jnet2net.widen(teacher.model, teacher.variables, widths=..., key=key)
    jnet2net.checkpoint.save("runs/student0", model=model, variables=variables, step=0)

:func:`grow_checkpoint` does exactly that, checks function preservation and returns the
student.
"""

from __future__ import annotations

import pathlib
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jnet2net import distributed
from jnet2net.checkpoint.format import (
    DATA_METADATA,
    CorruptCheckpointError,
    PathLike,
    abspath,
)
from jnet2net.checkpoint.io import Restored, checkpoint_info, restore, save
from jnet2net.checkpoint.steps import all_steps, check_not_a_file
from jnet2net.compile import run_once
from jnet2net.grow import deepen as deepen_network
from jnet2net.grow import widen as widen_network
from jnet2net.models import model_config
from jnet2net.variables import Variables
from jnet2net.verify import output_error


def set_aside_damaged(directory: PathLike) -> list[tuple[int, pathlib.Path, str]]:
    """Moves the damaged checkpoints at the end of a run aside, so that its latest step is
    its newest intact checkpoint.

    From the latest step down, each checkpoint is restored (checksums checked) until one
    restores; each that raises :class:`CorruptCheckpointError` is renamed
    ``DIR/<step>.damaged`` (kept for inspection; no longer a step).

    With several processes every process calls it (restoring is collective); process 0
    renames, the others wait for it.

    Returns:
      ``(step, new path, reason)`` of each moved checkpoint, latest first.
    """
    path = abspath(directory)
    moved = []
    for step in reversed(all_steps(path)):
        try:
            restore(path, step=step)
        except CorruptCheckpointError as err:
            target = path / f"{step}.damaged"
            n = 1
            while target.exists():
                n += 1
                target = path / f"{step}.damaged{n}"
            if distributed.is_primary():
                (path / str(step)).rename(target)
            distributed.barrier(f"set_aside_damaged:{step}")
            moved.append((step, target, str(err)))
            continue
        break
    return moved


class Grown(NamedTuple):
    """What :func:`grow_checkpoint` returns.

    Attributes:
      model: the student module.
      variables: its variables, bitwise what was saved.
      teacher: the restored teacher.
      relative_error: ``max|student - teacher| / max|teacher|`` of the logits on random
        inputs (float32 compute).
      path: the student's step directory.
    """

    model: nn.Module
    variables: Variables
    teacher: Restored
    relative_error: float
    path: pathlib.Path


def grow_checkpoint(
    source: PathLike,
    out: PathLike,
    *,
    key: jax.Array,
    widen: dict[str, Any] | None = None,
    deepen: dict[str, Any] | None = None,
    step: int | None = None,
    rtol: float = 1e-5,
    num_check_batches: int = 2,
    metadata: dict[str, Any] | None = None,
) -> Grown:
    """Restores a teacher, widens and/or deepens it, checks it, saves the student at step 0.

    Orbax cannot restore into a bigger network, so growth goes through the teacher's own
    architecture: restore, grow (``jnet2net.widen`` then ``jnet2net.deepen``), compare
    the logits of both on random inputs of the teacher's input shape, save, and restore
    the student to check that it comes back bitwise.

    Args:
      source: the teacher's checkpoint directory.
      out: the student's checkpoint directory (must hold no checkpoint yet).
      key: randomness of the widening mappings/noise and of new ResNet blocks.
      widen: keyword arguments of ``jnet2net.widen`` (``widths``, ``hidden_widths``,
        ``inner_widths``, ``stem_width``, ``noise``, ``noise_scale``), or ``None``.
      deepen: keyword arguments of ``jnet2net.deepen`` (``depths``, ``hidden_depths``),
        or ``None``.
      step: the teacher's step (``None``: latest).
      rtol: largest accepted relative error.
      num_check_batches: random batches of 8 images compared.
      metadata: extra JSON saved with the student (provenance is added).

    Returns:
      A :class:`Grown`.

    Raises:
      ValueError: nothing to grow, sizes ``widen``/``deepen`` refuse, or a student whose
        logits differ by ``rtol`` or more (unless ``noise='paper'``, which is not exact):
        then nothing is saved.
    """
    if not widen and not deepen:
        raise ValueError("grow_checkpoint needs widen and/or deepen sizes: nothing to grow")
    check_not_a_file(abspath(out))
    existing = all_steps(out)
    if existing:  # the student must be the directory's only (hence latest) checkpoint
        raise ValueError(
            f"{abspath(out)} already holds a checkpoint at step {existing[0]}"
            + (f" (steps {existing})" if len(existing) > 1 else "")
            + "; save the student into a new directory"
        )
    teacher = restore(source, step=step)
    info = checkpoint_info(source, step=teacher.step)
    widen_key, deepen_key = jax.random.split(key)
    model, variables = teacher.model, teacher.variables
    if widen:
        static = {"model": model, **widen}
        model, variables = run_once(widen_network, static, variables=variables, key=widen_key)
    if deepen:
        static = {"model": model, **deepen}
        model, variables = run_once(deepen_network, static, variables=variables, key=deepen_key)
    seed = np.asarray(jax.random.key_data(key)).tolist()
    xs = np.random.default_rng(seed).standard_normal(
        (num_check_batches, 8, *info.input_shape[1:]), np.float32
    )
    # float32 compute, so that a bfloat16 model neither hides nor fakes a mismatch
    errors = run_once(
        output_error,
        {
            "model_a": teacher.model.clone(dtype=jnp.float32),
            "model_b": model.clone(dtype=jnp.float32),
        },
        variables_a=teacher.variables,
        variables_b=variables,
        xs=jnp.asarray(xs),
    )
    error = float(np.max(np.asarray(errors)))
    noise = (widen or {}).get("noise", "split")
    if not error < rtol and noise != "paper":
        raise ValueError(
            f"the network grown from {teacher.path} differs from it: relative error "
            f"{error:.2e} >= rtol {rtol:.0e}; nothing saved"
        )
    provenance = {
        **{k: teacher.metadata[k] for k in DATA_METADATA if k in teacher.metadata},
        "grown_from": str(teacher.path),
        "teacher_step": teacher.step,
        "teacher_model": model_config(teacher.model),
        "widen": _jsonable(widen),
        "deepen": _jsonable(deepen),
        "relative_error": error,
    }
    path = save(
        out,
        model=model,
        variables=variables,
        step=0,
        metadata={**provenance, **(metadata or {})},
        input_shape=info.input_shape if info.input_shape_given else None,
    )
    restored = restore(out, model=model)
    same = jax.tree.all(
        jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), restored.variables, variables)
    )
    if not same:
        raise RuntimeError(f"{path} does not restore to the grown variables bitwise")
    return Grown(model, variables, teacher, error, path)


def _jsonable(kwargs: dict[str, Any] | None) -> dict[str, Any] | None:
    if kwargs is None:
        return None
    return {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
