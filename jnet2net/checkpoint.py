"""Orbax checkpoints that know which architecture they hold.

A checkpoint directory is an Orbax ``CheckpointManager`` directory: one sub-directory per
step, each with two items::

    DIR/<step>/arch    JSON: {"format": 1, "model": model_config(model),
                              "input_shape": [1, h, w, c], "input_shape_given": bool,
                              "train_config": {...} | null,
                              "has_opt_state": bool, "rng_impl": str | null, "metadata": {...},
                              "checksums": {"variables/params/...": [dtype, sha256], ...}}
    DIR/<step>/state   {"variables": {"params": ..., "batch_stats": ...},
                        "opt_state": ... (optional), "rng": uint32 key data (optional)}

Restoring reads ``arch`` first, rebuilds the module with ``model_from_config`` and restores
``state`` against the abstract tree of ``model.init`` (``jax.eval_shape``, nothing is
allocated twice). Orbax refuses to restore into a wider or deeper target, so growth is::

    teacher = jnet2net.checkpoint.restore("runs/teacher")
    model, variables = jnet2net.widen(teacher.model, teacher.variables, widths=..., key=key)
    jnet2net.checkpoint.save("runs/student0", model=model, variables=variables, step=0)

:func:`grow_checkpoint` does exactly that, checks function preservation and returns the
student. Other files in ``DIR`` (``metrics.jsonl`` of a training run) are left alone, so a run
directory is also its checkpoint directory.

Every array of ``state`` has its SHA-256 in ``arch``; :func:`restore` recomputes them and
raises :class:`CorruptCheckpointError` naming the step and the array when one differs (a
flipped bit in a data file otherwise restores silently). Checkpoints written before the
checksums existed restore unchecked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import pathlib
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax.core import FrozenDict, unfreeze

from jnet2net import distributed
from jnet2net.compile import ONE_SHOT_COMPILER_OPTIONS, run_once  # noqa: F401 (kept importable)
from jnet2net.grow import deepen as deepen_network
from jnet2net.grow import widen as widen_network
from jnet2net.models import model_config, model_from_config
from jnet2net.variables import Variables, check_variables, flatten, path_str
from jnet2net.verify import output_error

FORMAT = 1
ARCH = "arch"
STATE = "state"
_COLLECTIONS = ("params", "batch_stats")
#: Metadata naming a run's data (``jnet2net train``); a grown checkpoint keeps its teacher's.
DATA_METADATA = ("dataset", "resolution", "train_subset", "subset_seed")

PathLike = str | os.PathLike


class CorruptCheckpointError(ValueError):
    """A checkpoint that cannot be read back as it was written (damaged or edited files)."""


class CheckpointInfo(NamedTuple):
    """What a checkpoint's ``arch`` item says, read without touching its arrays.

    Attributes:
      path: the step directory ``DIR/<step>``.
      step: the training step.
      model: the module rebuilt from the stored config.
      input_shape: ``(1, h, w, c)`` example input that ``model.init`` was traced with.
      train_config: the training config dict, or ``None``.
      has_opt_state: whether the state holds optimizer state.
      rng_impl: PRNG implementation name of a typed key, ``''`` for a raw uint32 key,
        ``None`` when no key was saved.
      metadata: free-form JSON saved with the checkpoint (e.g. where it was grown from).
      input_shape_given: whether ``input_shape`` was given when saving (the images the
        network was trained on); ``False``: derived from the variables, whose spatial size
        a ResNet's do not fix.
      checksums: ``{array path: [dtype, sha256 hex]}`` of the state's arrays, or ``None``
        for a checkpoint saved without them.
    """

    path: pathlib.Path
    step: int
    model: nn.Module
    input_shape: tuple[int, int, int, int]
    train_config: dict[str, Any] | None
    has_opt_state: bool
    rng_impl: str | None
    metadata: dict[str, Any]
    input_shape_given: bool = True
    checksums: dict[str, list[str]] | None = None


class Restored(NamedTuple):
    """A restored checkpoint.

    Attributes:
      model: the module the variables belong to.
      variables: ``{'params': ..., 'batch_stats': ...}``.
      step: the training step.
      opt_state: optimizer state (in the structure of ``opt_state_like`` when one was
        given, else as stored: dicts and lists), or ``None``.
      rng: the saved PRNG key (typed again if it was typed), or ``None``.
      train_config: the training config dict, or ``None``.
      metadata: free-form JSON saved with the checkpoint.
      path: the step directory it came from.
    """

    model: nn.Module
    variables: Variables
    step: int
    opt_state: Any
    rng: jax.Array | None
    train_config: dict[str, Any] | None
    metadata: dict[str, Any]
    path: pathlib.Path


# --- helpers -------------------------------------------------------------------------


def _abspath(directory: PathLike) -> pathlib.Path:
    return pathlib.Path(directory).expanduser().resolve()


def _manager(
    directory: pathlib.Path, *, create: bool = False, max_to_keep: int | None = None
) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        create=create, max_to_keep=max_to_keep, enable_async_checkpointing=False
    )
    handlers = {ARCH: ocp.JsonCheckpointHandler(), STATE: ocp.StandardCheckpointHandler()}
    return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def _plain(tree: Any) -> Any:
    return unfreeze(tree) if isinstance(tree, FrozenDict) else tree


def _config_dict(train_config: Any) -> dict[str, Any] | None:
    if train_config is None or isinstance(train_config, dict):
        return train_config
    if hasattr(train_config, "to_dict"):
        return train_config.to_dict()
    if dataclasses.is_dataclass(train_config):
        return dataclasses.asdict(train_config)
    raise TypeError(
        f"train_config must be a dict, a dataclass or have to_dict(), got "
        f"{type(train_config).__name__}"
    )


def _split_rng(rng: jax.Array | None) -> tuple[jax.Array | None, str | None]:
    """Returns ``(uint32 key data, impl name)``; impl ``''`` for raw uint32 keys."""
    if rng is None:
        return None, None
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(rng), str(jax.random.key_impl(rng))
    if rng.dtype != jnp.uint32:
        raise TypeError(f"rng must be a PRNG key (typed or uint32), got dtype {rng.dtype}")
    return rng, ""


def _join_rng(data: Any, impl: str | None) -> jax.Array | None:
    if data is None or impl is None:
        return None
    data = jnp.asarray(data)
    return jax.random.wrap_key_data(data, impl=impl) if impl else data


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)), tree)


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def array_checksums(tree: Any) -> dict[str, list[str]]:
    """``{'a/b/c': [dtype, sha256 hex of the bytes]}`` for every array leaf of ``tree``.

    Paths join dict keys, attribute names and sequence indices, so an optax state and the
    dicts and lists Orbax stores it as give the same paths. With several processes, arrays
    replicated over them (a training state) are read locally; arrays split across processes
    are gathered, so every process must compute the checksums of the same tree.
    """
    sums = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        array = np.ascontiguousarray(distributed.host_array(leaf)).reshape(-1)
        digest = hashlib.sha256(array.view(np.uint8))
        sums["/".join(_key_name(k) for k in path)] = [str(array.dtype), digest.hexdigest()]
    return sums


def _first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of ``err`` (TensorStore errors run to dozens), at most ``limit`` chars."""
    lines = str(err).strip().splitlines() or [type(err).__name__]
    text = lines[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _checked_input_shape(
    model: nn.Module, variables: Variables, input_shape: tuple[int, ...] | None
) -> tuple[int, ...]:
    """``(1, h, w, c)``; raises ValueError when ``model.init`` on it gives other shapes."""
    if input_shape is None:
        return tuple(model.example_input(variables).shape)
    if len(tuple(input_shape)) not in (3, 4):
        raise ValueError(f"input_shape must be (h, w, c) or (n, h, w, c), got {input_shape}")
    shape = (1, *(int(n) for n in tuple(input_shape)[-3:]))
    example = jax.ShapeDtypeStruct(shape, jnp.float32)
    expected = flatten(jax.eval_shape(model.init, jax.random.key(0), example))
    for path, leaf in flatten(variables).items():
        if path in expected and expected[path].shape != np.shape(leaf):
            raise ValueError(
                f"input_shape {shape} does not fit the variables: {path_str(path)} would have "
                f"shape {expected[path].shape}, the variables have {np.shape(leaf)}"
            )
    return shape


def _config_differences(saved: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    keys = sorted(set(saved) | set(expected))
    return [
        f"{k}: checkpoint {saved.get(k)!r}, expected {expected.get(k)!r}"
        for k in keys
        if saved.get(k) != expected.get(k)
    ]


def _check_not_a_file(directory: pathlib.Path) -> None:
    if directory.exists() and not directory.is_dir():
        raise FileExistsError(f"checkpoint directory {directory} exists and is not a directory")


def _check_no_stray_steps(directory: pathlib.Path) -> None:
    """Raises ValueError when ``directory`` has step-named directories that are not checkpoints.

    Orbax takes every directory named like a step for a checkpoint (and ``max_to_keep``
    deletes old ones), so a user's ``DIR/100/`` would be lost or shadow the real steps.
    """
    if not directory.is_dir():
        return
    stray = sorted(
        int(p.name)
        for p in directory.iterdir()
        if p.is_dir()
        and p.name.isdigit()
        and not any((p / item).exists() for item in (ARCH, STATE, "_CHECKPOINT_METADATA"))
    )
    if stray:
        raise ValueError(
            f"{directory} holds directories named like checkpoint steps that are not "
            f"checkpoints: {', '.join(str(directory / str(n)) for n in stray)}; Orbax would take "
            "them for steps (and delete them to keep max_to_keep): move them away"
        )


def _step_directory(directory: pathlib.Path, step: int | None) -> tuple[int, list[int]]:
    """Resolves ``step`` (``None``: the latest) and checks that it exists."""
    if not directory.exists():
        raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint path {directory} is not a directory")
    with _manager(directory) as manager:
        steps = sorted(manager.all_steps())
    if not steps:
        parent = directory.parent
        if directory.name.isdigit() and int(directory.name) in all_steps(parent):
            raise FileNotFoundError(
                f"{directory} is step {int(directory.name)} of the run {parent}: pass {parent} "
                f"(and step={int(directory.name)}, on the command line --step "
                f"{int(directory.name)})"
            )
        raise FileNotFoundError(
            f"{directory} holds no checkpoint (no finished step directories such as "
            f"{directory}/0); was the run interrupted before its first save?"
        )
    if step is None:
        return steps[-1], steps
    if step not in steps:
        raise FileNotFoundError(
            f"{directory} has no checkpoint at step {step}; it has steps {steps}"
        )
    return step, steps


# --- public API ----------------------------------------------------------------------


def all_steps(directory: PathLike) -> list[int]:
    """Steps saved in ``directory``, ascending; ``[]`` when it is missing or empty."""
    path = _abspath(directory)
    if not path.is_dir():
        return []
    with _manager(path) as manager:
        return sorted(manager.all_steps())


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
    path = _abspath(directory)
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


def latest_step(directory: PathLike) -> int | None:
    """The last saved step in ``directory``, or ``None`` when it holds no checkpoint."""
    steps = all_steps(directory)
    return steps[-1] if steps else None


def save(
    directory: PathLike,
    *,
    model: nn.Module,
    variables: Variables,
    step: int,
    opt_state: Any = None,
    rng: jax.Array | None = None,
    train_config: Any = None,
    metadata: dict[str, Any] | None = None,
    input_shape: tuple[int, ...] | None = None,
    max_to_keep: int | None = None,
) -> pathlib.Path:
    """Saves variables, optimizer state, RNG key and architecture as step ``step``.

    Args:
      directory: the checkpoint (run) directory; created if missing.
      model: the module; its ``model_config`` is saved so the checkpoint names its
        architecture. ``variables`` are checked against it first.
      variables: ``{'params': ..., 'batch_stats': ...}`` of ``model``.
      step: training step (>= 0); the step directory's name.
      opt_state: optax state, any pytree of arrays.
      rng: a PRNG key (typed or raw ``uint32``).
      train_config: a ``TrainConfig`` (``to_dict()``), dataclass or dict.
      metadata: JSON-serialisable extras (e.g. provenance of a grown network).
      input_shape: ``(1, h, w, c)`` of the images the network sees (default:
        ``model.example_input(variables)``, whose size may differ for ResNets).
      max_to_keep: keep only this many most recent steps (``None``: keep all).

    Returns:
      The step directory ``directory/<step>``.

    Raises:
      ValueError: variables that do not fit ``model`` (or ``input_shape``), a negative
        step, or a step that is already saved there.
      FileExistsError: ``directory`` is a file.
    """
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    step = int(step)
    variables = _plain(variables)
    check_variables(model, variables)
    extra = sorted(set(variables) - set(_COLLECTIONS))
    if extra:
        raise ValueError(
            f"checkpoints hold the collections {_COLLECTIONS}; variables also have {extra}"
        )
    input_shape_given = input_shape is not None
    input_shape = _checked_input_shape(model, variables, input_shape)
    path = _abspath(directory)
    _check_not_a_file(path)
    _check_no_stray_steps(path)
    rng_data, rng_impl = _split_rng(rng)
    arch = {
        "format": FORMAT,
        "model": model_config(model),
        "input_shape": list(input_shape),
        "input_shape_given": input_shape_given,
        "train_config": _config_dict(train_config),
        "has_opt_state": opt_state is not None,
        "rng_impl": rng_impl,
        "metadata": dict(metadata or {}),
    }
    json.dumps(arch)  # fail here, not half-way through a save, on non-JSON values
    state: dict[str, Any] = {"variables": variables}
    if opt_state is not None:
        state["opt_state"] = _plain(opt_state)
    if rng_data is not None:
        state["rng"] = rng_data
    arch["checksums"] = array_checksums(state)
    with _manager(path, create=True, max_to_keep=max_to_keep) as manager:
        if step in manager.all_steps():
            raise ValueError(f"{path} already holds a checkpoint at step {step}")
        manager.save(
            step,
            args=ocp.args.Composite(
                **{ARCH: ocp.args.JsonSave(arch), STATE: ocp.args.StandardSave(state)}
            ),
            force=True,
        )
        manager.wait_until_finished()
    return path / str(step)


def save_train_state(
    directory: PathLike,
    model: nn.Module,
    state: Any,
    train_config: Any = None,
    *,
    rng: jax.Array | None = None,
    metadata: dict[str, Any] | None = None,
    input_shape: tuple[int, ...] | None = None,
    max_to_keep: int | None = None,
) -> pathlib.Path:
    """Saves a flax ``TrainState`` with ``batch_stats`` at ``state.step``.

    Params, batch stats, optimizer state and step are saved; ``rng`` defaults to
    ``state.rng`` when the state has one. See :func:`save`.
    """
    variables = {"params": state.params}
    batch_stats = getattr(state, "batch_stats", None)
    if batch_stats is not None and len(jax.tree.leaves(batch_stats)):
        variables["batch_stats"] = batch_stats
    if rng is None:
        rng = getattr(state, "rng", None)
    return save(
        directory,
        model=model,
        variables=variables,
        step=int(state.step),
        opt_state=state.opt_state,
        rng=rng,
        train_config=train_config,
        metadata=metadata,
        input_shape=input_shape,
        max_to_keep=max_to_keep,
    )


def epoch_saver(
    directory: PathLike,
    model: nn.Module,
    train_config: Any = None,
    *,
    input_shape: tuple[int, ...] | None = None,
    metadata: dict[str, Any] | None = None,
    max_to_keep: int | None = None,
) -> Callable[[Any, dict[str, Any]], None]:
    """An ``on_epoch_end(state, record)`` callback for ``jnet2net.train.fit``.

    It saves the train state at ``state.step`` after every epoch (synchronously, so the
    next step may donate the state's buffers), with the epoch's record in the metadata.
    """

    def save_epoch(state: Any, record: dict[str, Any]) -> None:
        save_train_state(
            directory,
            model,
            state,
            train_config,
            metadata={**(metadata or {}), "record": record},
            input_shape=input_shape,
            max_to_keep=max_to_keep,
        )

    return save_epoch


def checkpoint_info(directory: PathLike, *, step: int | None = None) -> CheckpointInfo:
    """Reads only the ``arch`` item of step ``step`` (``None``: the latest).

    Raises:
      FileNotFoundError: no such directory, no checkpoint in it, or no such step.
      ValueError: an unreadable or inconsistent ``arch`` item (corrupt checkpoint).
    """
    path = _abspath(directory)
    step, _ = _step_directory(path, step)
    where = path / str(step)
    try:
        with _manager(path) as manager:
            arch = manager.restore(step, args=ocp.args.Composite(**{ARCH: ocp.args.JsonRestore()}))[
                ARCH
            ]
    except Exception as err:  # orbax raises many kinds; they all mean "unreadable"
        raise CorruptCheckpointError(
            f"checkpoint {where} is corrupt: cannot read its '{ARCH}' item ({_first_line(err)})"
        ) from err
    if not isinstance(arch, dict) or arch.get("format") != FORMAT or "model" not in arch:
        raise CorruptCheckpointError(
            f"checkpoint {where} is corrupt or not a jnet2net checkpoint: its '{ARCH}' item "
            f"is {str(arch)[:200]!r}, expected format {FORMAT} with a 'model' entry"
        )
    try:
        model = model_from_config(arch["model"])
        input_shape = tuple(int(n) for n in arch["input_shape"])
    except (KeyError, TypeError, ValueError) as err:
        raise CorruptCheckpointError(
            f"checkpoint {where} holds an invalid architecture: {_first_line(err)}"
        ) from err
    checksums = arch.get("checksums")
    if checksums is not None and not isinstance(checksums, dict):
        raise CorruptCheckpointError(
            f"checkpoint {where} is corrupt: its '{ARCH}' item has checksums "
            f"{str(checksums)[:80]!r}"
        )
    return CheckpointInfo(
        path=where,
        step=step,
        model=model,
        input_shape=input_shape,
        train_config=arch.get("train_config"),
        has_opt_state=bool(arch.get("has_opt_state")),
        rng_impl=arch.get("rng_impl"),
        metadata=arch.get("metadata") or {},
        input_shape_given=bool(arch.get("input_shape_given", True)),
        checksums=checksums,
    )


def check_architecture(info: CheckpointInfo, model: nn.Module) -> None:
    """Raises ValueError naming the checkpoint and every field where it differs from ``model``."""
    saved, expected = model_config(info.model), model_config(model)
    differences = _config_differences(saved, expected)
    if differences:
        raise ValueError(
            f"checkpoint {info.path} holds another architecture than expected: "
            + "; ".join(differences)
        )


def restore(
    directory: PathLike,
    *,
    step: int | None = None,
    model: nn.Module | None = None,
    opt_state_like: Any = None,
) -> Restored:
    """Restores a checkpoint against the architecture it stores.

    Args:
      directory: the checkpoint (run) directory.
      step: which step (``None``: the latest).
      model: the expected architecture; a checkpoint of another one raises ValueError
        listing the fields that differ. ``None``: whatever the checkpoint holds.
      opt_state_like: a tree (arrays or ``jax.ShapeDtypeStruct``, e.g.
        ``jax.eval_shape(tx.init, params)``) giving the optimizer state's structure; without
        it the optimizer state comes back as stored (dicts and lists of arrays).

    Returns:
      A :class:`Restored`.

    Raises:
      FileNotFoundError: no such directory, no checkpoint in it, or no such step.
      ValueError: another architecture than ``model``, or a corrupt checkpoint.
    """
    info = checkpoint_info(directory, step=step)
    if model is not None:
        check_architecture(info, model)
    example = jnp.zeros(info.input_shape, jnp.float32)
    abstract_variables = _plain(jax.eval_shape(info.model.init, jax.random.key(0), example))
    target: dict[str, Any] = {"variables": abstract_variables}
    if info.has_opt_state:
        target["opt_state"] = None if opt_state_like is None else _abstract(opt_state_like)
    if info.rng_impl is not None:
        target["rng"] = None
    state = _restore_state(info, target)
    _check_checksums(info, state)
    return Restored(
        model=info.model,
        variables=state["variables"],
        step=info.step,
        opt_state=state.get("opt_state"),
        rng=_join_rng(state.get("rng"), info.rng_impl),
        train_config=info.train_config,
        metadata=info.metadata,
        path=info.path,
    )


def _restore_state(info: CheckpointInfo, target: dict[str, Any]) -> dict[str, Any]:
    """Restores the ``state`` item; parts whose target is ``None`` take the stored structure.

    The stored shapes are compared with the variables' target first, so a state that does
    not fit the architecture in ``arch`` is named leaf by leaf before any array is read.
    """
    try:
        with _manager(info.path.parent) as manager:
            with _quiet_absl():  # a damaged item is reported below, in one line
                metadata = manager.item_metadata(info.step)[STATE]
            if metadata is None:
                raise _ArchitectureMismatch(
                    f"checkpoint {info.path} is corrupt: its '{STATE}' item has no readable "
                    "metadata (is state/_METADATA missing?)"
                )
            stored = metadata.tree
            _check_stored_variables(info, stored, target["variables"])
            target = {
                k: jax.tree.map(_metadata_to_abstract, stored[k]) if v is None else v
                for k, v in target.items()
            }
            target = jax.tree.map(_on_every_device, target)
            restored = manager.restore(
                info.step, args=ocp.args.Composite(**{STATE: ocp.args.StandardRestore(target)})
            )[STATE]
    except _ArchitectureMismatch as err:
        raise CorruptCheckpointError(str(err)) from None
    except Exception as err:  # orbax raises many kinds; they all mean "does not restore"
        raise CorruptCheckpointError(
            f"checkpoint {info.path} is corrupt or does not match the architecture in its "
            f"'{ARCH}' item ({type(info.model).__name__}): {_first_line(err)}"
        ) from err
    return dict(restored)


def _check_checksums(info: CheckpointInfo, state: dict[str, Any]) -> None:
    """Raises CorruptCheckpointError naming the first restored array whose bytes differ
    from the checksum saved with it (arrays restored in another dtype are not compared)."""
    if info.checksums is None:
        return
    restored = array_checksums(state)
    missing = sorted(set(info.checksums) - set(restored))
    if missing:
        raise CorruptCheckpointError(
            f"checkpoint {info.path} (step {info.step}) is corrupt: {len(missing)} saved arrays "
            f"did not restore, e.g. {STATE}/{missing[0]}"
        )
    bad = [
        path
        for path, (dtype, digest) in sorted(restored.items())
        if info.checksums.get(path, [dtype, digest]) != [dtype, digest]
        and info.checksums[path][0] == dtype
    ]
    if bad:
        raise CorruptCheckpointError(
            f"checkpoint {info.path} (step {info.step}) is corrupt: {len(bad)} of "
            f"{len(restored)} arrays differ from the checksums saved with them, first "
            f"{STATE}/{bad[0]} (its data files under {info.path / STATE} are damaged)"
        )


class _ArchitectureMismatch(Exception):
    pass


def _check_stored_variables(info: CheckpointInfo, stored: Any, abstract: Any) -> None:
    if not isinstance(stored, dict) or "variables" not in stored:
        raise _ArchitectureMismatch(
            f"checkpoint {info.path} is corrupt: its state has no variables"
        )
    have = {p: tuple(m.shape) for p, m in flatten(stored["variables"]).items()}
    want = {p: tuple(a.shape) for p, a in flatten(abstract).items()}
    problems = [
        f"{path_str(p)} stored with shape {have.get(p)}, the architecture needs {want.get(p)}"
        for p in sorted(set(have) | set(want))
        if have.get(p) != want.get(p)
    ]
    if problems:
        raise _ArchitectureMismatch(
            f"checkpoint {info.path} is corrupt: its state does not fit the architecture in its "
            f"'{ARCH}' item ({len(problems)} leaves differ): " + "; ".join(problems[:3])
        )


@contextlib.contextmanager
def _quiet_absl() -> Iterator[None]:
    """Silences absl's warnings (Orbax logs a damaged item as a warning, then returns None)."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _on_every_device(leaf: jax.ShapeDtypeStruct) -> jax.ShapeDtypeStruct:
    """``leaf`` replicated over every device, of every process (how training holds its
    state): a checkpoint saved on another number of devices or processes restores here
    instead of failing on Orbax's saved sharding, and training uses the arrays as they come
    (no transfer between devices that a donating step could race)."""
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)


def _metadata_to_abstract(leaf: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(leaf.shape), leaf.dtype)


def restore_train_state(
    directory: PathLike,
    state: Any,
    *,
    step: int | None = None,
    model: nn.Module | None = None,
) -> tuple[Any, Restored]:
    """Restores a checkpoint into a flax ``TrainState`` shaped like ``state``.

    Args:
      directory: the checkpoint (run) directory.
      state: a ``TrainState`` with ``batch_stats`` (concrete, or abstract from
        ``jax.eval_shape`` of its constructor) giving the optimizer state's structure.
      step: which step (``None``: the latest).
      model: the expected architecture (see :func:`restore`).

    Returns:
      ``(state with params, batch_stats, opt_state, step (and rng) replaced, restored)``.

    Raises:
      ValueError: the checkpoint has no optimizer state, or see :func:`restore`.
    """
    info = checkpoint_info(directory, step=step)
    if model is not None:
        check_architecture(info, model)
    _check_state_fits(info, state)
    restored = restore(directory, step=info.step, model=model, opt_state_like=state.opt_state)
    if restored.opt_state is None:
        raise ValueError(
            f"checkpoint {restored.path} holds no optimizer state, so it cannot resume a "
            "training state; start a new run from its variables instead"
        )
    step_like = state.step
    new_step = (
        jnp.asarray(restored.step, jnp.result_type(step_like))
        if hasattr(step_like, "dtype")
        else restored.step
    )
    changes: dict[str, Any] = {
        "params": restored.variables["params"],
        "batch_stats": restored.variables.get("batch_stats", {}),
        "opt_state": restored.opt_state,
        "step": new_step,
    }
    if hasattr(state, "rng") and restored.rng is not None:
        changes["rng"] = restored.rng
    return state.replace(**changes), restored


def _check_state_fits(info: CheckpointInfo, state: Any) -> None:
    """Raises ValueError unless the checkpoint's variables have the state's paths and shapes."""
    example = jax.ShapeDtypeStruct(info.input_shape, jnp.float32)
    saved = flatten(_plain(jax.eval_shape(info.model.init, jax.random.key(0), example)))
    wanted = flatten(
        _plain({"params": state.params, "batch_stats": getattr(state, "batch_stats", None) or {}})
    )
    have = {p: tuple(x.shape) for p, x in saved.items()}
    want = {p: tuple(np.shape(x)) for p, x in wanted.items()}
    problems = [
        f"{path_str(p)}: checkpoint {have.get(p)}, state {want.get(p)}"
        for p in sorted(set(have) | set(want))
        if have.get(p) != want.get(p)
    ]
    if problems:
        raise ValueError(
            f"checkpoint {info.path} holds another architecture than the train state "
            f"({len(problems)} leaves differ): " + "; ".join(problems[:3])
        )


# --- growth between checkpoints ------------------------------------------------------


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
    _check_not_a_file(_abspath(out))
    existing = all_steps(out)
    if existing:  # the student must be the directory's only (hence latest) checkpoint
        raise ValueError(
            f"{_abspath(out)} already holds a checkpoint at step {existing[0]}"
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
