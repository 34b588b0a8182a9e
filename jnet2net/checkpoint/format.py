"""What a checkpoint step directory holds: its two items, the ``arch`` record, checksums.

A checkpoint directory is an Orbax ``CheckpointManager`` directory: one sub-directory per
step, each with two items::

    DIR/<step>/arch    JSON: {"format": 1, "model": model_config(model),
                              "input_shape": [1, h, w, c], "input_shape_given": bool,
                              "train_config": {...} | null,
                              "has_opt_state": bool, "rng_impl": str | null, "metadata": {...},
                              "has_extra": true (only when there are extras),
                              "checksums": {"variables/params/...": [dtype, sha256], ...}}
    DIR/<step>/state   {"variables": {"params": ..., "batch_stats": ...},
                        "opt_state": ... (optional), "rng": uint32 key data (optional),
                        "extra": {name: array tree} (optional)}

Every array of ``state`` has its SHA-256 in ``arch``; restoring recomputes them and raises
:class:`CorruptCheckpointError` naming the step and the array when one differs (a flipped bit
in a data file otherwise restores silently). Checkpoints written before the checksums
existed restore unchecked.

This module holds the record and its codecs (the RNG key, configs, checksums, shape
comparisons); reading and writing are in :mod:`jnet2net.checkpoint.io`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
from collections.abc import Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax.core import FrozenDict, unfreeze

from jnet2net import distributed
from jnet2net.models import model_config, model_from_config
from jnet2net.variables import Variables, flatten, path_str

FORMAT = 1
ARCH = "arch"
STATE = "state"
COLLECTIONS = ("params", "batch_stats")
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
      has_extra: whether the state holds extra arrays of the run (e.g. a scale-down run's
        readiness snapshot), besides variables, optimizer state and key.
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
    has_extra: bool = False


# --- the directory and its items -----------------------------------------------------


def abspath(directory: PathLike) -> pathlib.Path:
    """``directory`` with ``~`` expanded, absolute and resolved."""
    return pathlib.Path(directory).expanduser().resolve()


def manager(
    directory: pathlib.Path, *, create: bool = False, max_to_keep: int | None = None
) -> ocp.CheckpointManager:
    """A synchronous Orbax manager of ``directory`` with the ``arch`` and ``state`` items."""
    options = ocp.CheckpointManagerOptions(
        create=create, max_to_keep=max_to_keep, enable_async_checkpointing=False
    )
    handlers = {ARCH: ocp.JsonCheckpointHandler(), STATE: ocp.StandardCheckpointHandler()}
    return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of ``err`` (TensorStore errors run to dozens), at most ``limit`` chars."""
    lines = str(err).strip().splitlines() or [type(err).__name__]
    text = lines[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- trees, configs and the RNG key codec --------------------------------------------


def plain(tree: Any) -> Any:
    """``tree`` as plain dicts when it is a ``FrozenDict``."""
    return unfreeze(tree) if isinstance(tree, FrozenDict) else tree


def abstract(tree: Any) -> Any:
    """``tree`` with every leaf replaced by its ``jax.ShapeDtypeStruct``."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)), tree)


def config_dict(train_config: Any) -> dict[str, Any] | None:
    """A training config (dict, dataclass or ``to_dict()``) as a dict; ``None`` stays."""
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


def split_rng(rng: jax.Array | None) -> tuple[jax.Array | None, str | None]:
    """Returns ``(uint32 key data, impl name)``; impl ``''`` for raw uint32 keys."""
    if rng is None:
        return None, None
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(rng), str(jax.random.key_impl(rng))
    if rng.dtype != jnp.uint32:
        raise TypeError(f"rng must be a PRNG key (typed or uint32), got dtype {rng.dtype}")
    return rng, ""


def join_rng(data: Any, impl: str | None) -> jax.Array | None:
    """The key :func:`split_rng` took apart (typed again when ``impl`` names a type)."""
    if data is None or impl is None:
        return None
    data = jnp.asarray(data)
    return jax.random.wrap_key_data(data, impl=impl) if impl else data


# --- checksums -----------------------------------------------------------------------


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


def check_checksums(info: CheckpointInfo, state: dict[str, Any]) -> None:
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


# --- the arch item -------------------------------------------------------------------


def arch_item(
    model: nn.Module,
    *,
    input_shape: tuple[int, ...],
    input_shape_given: bool,
    train_config: Any,
    has_opt_state: bool,
    rng_impl: str | None,
    metadata: dict[str, Any] | None,
    has_extra: bool = False,
) -> dict[str, Any]:
    """The ``arch`` record of a checkpoint, without its checksums."""
    record = {
        "format": FORMAT,
        "model": model_config(model),
        "input_shape": list(input_shape),
        "input_shape_given": input_shape_given,
        "train_config": config_dict(train_config),
        "has_opt_state": has_opt_state,
        "rng_impl": rng_impl,
        "metadata": dict(metadata or {}),
    }
    if has_extra:  # only then: checkpoints without extras keep their exact record
        record["has_extra"] = True
    return record


def parse_arch(arch: Any, where: pathlib.Path, step: int) -> CheckpointInfo:
    """The :class:`CheckpointInfo` of the ``arch`` record read from step directory ``where``.

    Raises:
      CorruptCheckpointError: not a format-1 record, or an invalid architecture in it.
    """
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
            f"checkpoint {where} holds an invalid architecture: {first_line(err)}"
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
        has_extra=bool(arch.get("has_extra")),
    )


def checked_input_shape(
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


def shape_differences(
    have: Mapping[tuple[str, ...], tuple[int, ...]],
    want: Mapping[tuple[str, ...], tuple[int, ...]],
    line: str,
) -> list[str]:
    """``line.format(path=, have=, want=)`` for each path, in order, whose shapes differ
    (``None`` on the side that lacks it)."""
    return [
        line.format(path=path_str(p), have=have.get(p), want=want.get(p))
        for p in sorted(set(have) | set(want))
        if have.get(p) != want.get(p)
    ]


def check_architecture(info: CheckpointInfo, model: nn.Module) -> None:
    """Raises ValueError naming the checkpoint and every field where it differs from ``model``."""
    saved, expected = model_config(info.model), model_config(model)
    differences = _config_differences(saved, expected)
    if differences:
        raise ValueError(
            f"checkpoint {info.path} holds another architecture than expected: "
            + "; ".join(differences)
        )


def _config_differences(saved: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    keys = sorted(set(saved) | set(expected))
    return [
        f"{k}: checkpoint {saved.get(k)!r}, expected {expected.get(k)!r}"
        for k in keys
        if saved.get(k) != expected.get(k)
    ]
