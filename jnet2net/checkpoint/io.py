"""Saving and restoring checkpoints: variables, optimizer state, RNG key and architecture.

Restoring reads ``arch`` first, rebuilds the module with ``model_from_config`` and restores
``state`` against the abstract tree of ``model.init`` (``jax.eval_shape``, nothing is
allocated twice); the stored shapes are compared with that tree before any array is read,
and the arrays with their checksums after. :mod:`jnet2net.checkpoint.format` says what a
step directory holds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pathlib
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jnet2net.checkpoint.format import (
    ARCH,
    COLLECTIONS,
    STATE,
    CheckpointInfo,
    CorruptCheckpointError,
    PathLike,
    abspath,
    abstract,
    arch_item,
    array_checksums,
    check_architecture,
    check_checksums,
    checked_input_shape,
    first_line,
    join_rng,
    manager,
    parse_arch,
    plain,
    shape_differences,
    split_rng,
)
from jnet2net.checkpoint.steps import check_no_stray_steps, check_not_a_file, resolve_step
from jnet2net.variables import Variables, check_variables, flatten

#: The name of a train state's moving average of the weights among a checkpoint's extras.
EMA = "ema"


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
      extra: the extra arrays saved with ``save(..., extra=)`` (in the structure of
        ``extra_like`` when one was given, else as stored), or ``None``.
    """

    model: nn.Module
    variables: Variables
    step: int
    opt_state: Any
    rng: jax.Array | None
    train_config: dict[str, Any] | None
    metadata: dict[str, Any]
    path: pathlib.Path
    extra: Any = None


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
    extra: dict[str, Any] | None = None,
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
      extra: other arrays the run needs to continue, ``{name: array tree}`` (e.g. a
        scale-down run's readiness snapshot); checksummed like the rest.

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
    variables = plain(variables)
    check_variables(model, variables)
    others = sorted(set(variables) - set(COLLECTIONS))
    if others:
        raise ValueError(
            f"checkpoints hold the collections {COLLECTIONS}; variables also have {others}"
        )
    input_shape_given = input_shape is not None
    input_shape = checked_input_shape(model, variables, input_shape)
    path = abspath(directory)
    check_not_a_file(path)
    check_no_stray_steps(path)
    rng_data, rng_impl = split_rng(rng)
    arch = arch_item(
        model,
        input_shape=input_shape,
        input_shape_given=input_shape_given,
        train_config=train_config,
        has_opt_state=opt_state is not None,
        rng_impl=rng_impl,
        metadata=metadata,
        has_extra=bool(extra),
    )
    json.dumps(arch)  # fail here, not half-way through a save, on non-JSON values
    state: dict[str, Any] = {"variables": variables}
    if opt_state is not None:
        state["opt_state"] = plain(opt_state)
    if rng_data is not None:
        state["rng"] = rng_data
    if extra:
        state["extra"] = plain(extra)
    arch["checksums"] = array_checksums(state)
    with manager(path, create=True, max_to_keep=max_to_keep) as opened:
        if step in opened.all_steps():
            raise ValueError(f"{path} already holds a checkpoint at step {step}")
        opened.save(
            step,
            args=ocp.args.Composite(
                **{ARCH: ocp.args.JsonSave(arch), STATE: ocp.args.StandardSave(state)}
            ),
            force=True,
        )
        opened.wait_until_finished()
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

    Params, batch stats, optimizer state and step are saved, and the moving average of the
    weights (``state.ema``, as the extra arrays ``{'ema': ...}``) when the state has one;
    ``rng`` defaults to ``state.rng`` when the state has one. See :func:`save`.
    """
    variables = {"params": state.params}
    batch_stats = getattr(state, "batch_stats", None)
    if batch_stats is not None and len(jax.tree.leaves(batch_stats)):
        variables["batch_stats"] = batch_stats
    if rng is None:
        rng = getattr(state, "rng", None)
    ema = getattr(state, "ema", None)
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
        extra=None if ema is None else {EMA: ema},
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
    path = abspath(directory)
    step, _ = resolve_step(path, step)
    where = path / str(step)
    try:
        with manager(path) as opened:
            arch = opened.restore(step, args=ocp.args.Composite(**{ARCH: ocp.args.JsonRestore()}))[
                ARCH
            ]
    except Exception as err:  # orbax raises many kinds; they all mean "unreadable"
        raise CorruptCheckpointError(
            f"checkpoint {where} is corrupt: cannot read its '{ARCH}' item ({first_line(err)})"
        ) from err
    return parse_arch(arch, where, step)


def restore(
    directory: PathLike,
    *,
    step: int | None = None,
    model: nn.Module | None = None,
    opt_state_like: Any = None,
    extra_like: Any = None,
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
      extra_like: the same for the extra arrays (``save(..., extra=)``).

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
    abstract_variables = plain(jax.eval_shape(info.model.init, jax.random.key(0), example))
    target: dict[str, Any] = {"variables": abstract_variables}
    if info.has_opt_state:
        target["opt_state"] = None if opt_state_like is None else abstract(opt_state_like)
    if info.rng_impl is not None:
        target["rng"] = None
    if info.has_extra:
        target["extra"] = None if extra_like is None else abstract(extra_like)
    state = _restore_state(info, target)
    check_checksums(info, state)
    return Restored(
        model=info.model,
        variables=state["variables"],
        step=info.step,
        opt_state=state.get("opt_state"),
        rng=join_rng(state.get("rng"), info.rng_impl),
        train_config=info.train_config,
        metadata=info.metadata,
        path=info.path,
        extra=state.get("extra"),
    )


def _restore_state(info: CheckpointInfo, target: dict[str, Any]) -> dict[str, Any]:
    """Restores the ``state`` item; parts whose target is ``None`` take the stored structure.

    The stored shapes are compared with the variables' target first, so a state that does
    not fit the architecture in ``arch`` is named leaf by leaf before any array is read.
    """
    try:
        with manager(info.path.parent) as opened:
            with _quiet_absl():  # a damaged item is reported below, in one line
                metadata = opened.item_metadata(info.step)[STATE]
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
            restored = opened.restore(
                info.step, args=ocp.args.Composite(**{STATE: ocp.args.StandardRestore(target)})
            )[STATE]
    except _ArchitectureMismatch as err:
        raise CorruptCheckpointError(str(err)) from None
    except Exception as err:  # orbax raises many kinds; they all mean "does not restore"
        raise CorruptCheckpointError(
            f"checkpoint {info.path} is corrupt or does not match the architecture in its "
            f"'{ARCH}' item ({type(info.model).__name__}): {first_line(err)}"
        ) from err
    return dict(restored)


class _ArchitectureMismatch(Exception):
    pass


def _check_stored_variables(info: CheckpointInfo, stored: Any, target: Any) -> None:
    """Raises _ArchitectureMismatch unless the stored variables have ``target``'s shapes."""
    if not isinstance(stored, dict) or "variables" not in stored:
        raise _ArchitectureMismatch(
            f"checkpoint {info.path} is corrupt: its state has no variables"
        )
    have = {p: tuple(m.shape) for p, m in flatten(stored["variables"]).items()}
    want = {p: tuple(a.shape) for p, a in flatten(target).items()}
    problems = shape_differences(
        have, want, "{path} stored with shape {have}, the architecture needs {want}"
    )
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
      A ``state`` with a moving average of the weights (``ema`` not ``None``) gets the
      checkpoint's, or, from a checkpoint saved without one, an average that starts at the
      restored variables.

    Raises:
      ValueError: the checkpoint has no optimizer state, or see :func:`restore`.
    """
    info = checkpoint_info(directory, step=step)
    if model is not None:
        check_architecture(info, model)
    _check_state_fits(info, state)
    ema_like = getattr(state, "ema", None)
    extra_like = {EMA: ema_like} if ema_like is not None and info.has_extra else None
    restored = restore(
        directory,
        step=info.step,
        model=model,
        opt_state_like=state.opt_state,
        extra_like=extra_like,
    )
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
    if ema_like is not None:
        ema = (restored.extra or {}).get(EMA)
        if ema is None:  # saved without an average: it starts at the restored weights
            ema = jax.tree.map(jnp.copy, restored.variables)
        changes["ema"] = ema
    return state.replace(**changes), restored


def _check_state_fits(info: CheckpointInfo, state: Any) -> None:
    """Raises ValueError unless the checkpoint's variables have the state's paths and shapes."""
    example = jax.ShapeDtypeStruct(info.input_shape, jnp.float32)
    saved = flatten(plain(jax.eval_shape(info.model.init, jax.random.key(0), example)))
    wanted = flatten(
        plain({"params": state.params, "batch_stats": getattr(state, "batch_stats", None) or {}})
    )
    have = {p: tuple(x.shape) for p, x in saved.items()}
    want = {p: tuple(np.shape(x)) for p, x in wanted.items()}
    problems = shape_differences(have, want, "{path}: checkpoint {have}, state {want}")
    if problems:
        raise ValueError(
            f"checkpoint {info.path} holds another architecture than the train state "
            f"({len(problems)} leaves differ): " + "; ".join(problems[:3])
        )
