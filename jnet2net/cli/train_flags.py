"""The flags of ``jnet2net train`` and the ``TrainConfig`` they make (a resumed run keeps its
own)."""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import typing
from typing import Any

from jnet2net.cli.args import add_max_params, count_at_least, positive_float
from jnet2net.cli.datasets import add_data_args
from jnet2net.cli.run_config import add_config_args

#: ``TrainConfig`` fields whose flag has another name: field -> flag ``dest``.
FLAG_DESTS = {"learning_rate": "lr", "compute_dtype": "dtype"}
#: ``TrainConfig`` fields without a flag (``--out`` names the log).
NO_FLAG = ("log_path",)
#: What the command line adds to a field's docstring in ``--help``.
CLI_NOTES = {
    "augment": "default: none for digits and mnist, else crop_flip",
    "input": "a resumed run may switch",
    "max_steps": "not kept by --resume",
}
#: ``TrainConfig`` fields that a resumed run may change (``max_steps`` is not kept).
RESUME_FIELDS = ("epochs", "progress", "max_steps", "eval_every_steps", "input")
#: Augmentation when --augment is not given (flipping digits changes their meaning).
DEFAULT_AUGMENT = {"digits": "none", "mnist": "none"}


def train_flags() -> dict[str, str]:
    """``{flag dest: TrainConfig field}`` of every training flag, one per field (made from
    ``TrainConfig``'s fields)."""
    from jnet2net.train import TrainConfig

    return {
        FLAG_DESTS.get(f.name, f.name): f.name
        for f in dataclasses.fields(TrainConfig)
        if f.name not in NO_FLAG
    }


def add_train_args(p: argparse.ArgumentParser) -> None:
    """Adds the argument groups of ``train``: network, data, training, scale-down, growth,
    run and several processes."""
    arch = p.add_argument_group("network")
    arch.add_argument(
        "--arch", metavar="NAME", default=None, help="preset: resnet20, vgg11, resnet18, ..."
    )
    arch.add_argument(
        "--arch-json",
        metavar="JSON",
        default=None,
        help="a whole architecture (JSON with 'family') or field overrides of --arch",
    )
    arch.add_argument(
        "--width-mult",
        metavar="X",
        type=positive_float,
        default=None,
        help="scale every width field",
    )
    arch.add_argument(
        "--from",
        dest="source",
        metavar="CKPT",
        default=None,
        help="start from this checkpoint's variables",
    )
    add_data_args(p)
    t = p.add_argument_group("training (a resumed run keeps its own)")
    add_training_flags(t)
    t.add_argument(
        "--tensorboard",
        metavar="DIR",
        default=None,
        help="also write the records as TensorBoard scalars to DIR (needs tensorboardX: "
        "pip install 'jnet2net[tensorboard]')",
    )
    sd = p.add_argument_group("training-time scale-down (Learn&Drop)")
    sd.add_argument(
        "--scale-down",
        action="store_true",
        help="drop the layers that stopped learning from training (jnet2net.scale_down)",
    )
    sd.add_argument(
        "--scale-json",
        metavar="JSON",
        default=None,
        help='ScaleDownConfig fields as JSON, e.g. \'{"mode": "cache", "check_every": 50}\'',
    )
    g = p.add_argument_group("growth schedule (Net2Net growth inside the run)")
    g.add_argument(
        "--grow-at",
        metavar="EPOCH:CHANGES",
        action="append",
        default=None,
        help="grow the network at EPOCH (fractional allowed), e.g. '3:widen=2x', "
        "'6:widen=2x,deepen=+1', '4.5:widen=16,32,64,noise=fresh,rewarm=0.5'; keys: widen "
        "(multiplier or widths), deepen (+N or depths), widen_hidden, deepen_hidden, noise, "
        "noise_scale, moments (map/reset), rewarm (epochs); repeat for more events",
    )
    run = p.add_argument_group("run")
    run.add_argument(
        "--out", metavar="DIR", required=True, help="run directory: checkpoints + metrics.jsonl"
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out; starts it when --out holds none yet, so one command "
        "serves every restart of a preemptible job",
    )
    add_max_params(run)
    run.add_argument(
        "--keep",
        metavar="N",
        type=count_at_least(0),
        default=2,
        help="checkpoints to keep (0: all)",
    )
    run.add_argument(
        "--save-every",
        metavar="N",
        type=count_at_least(1),
        default=1,
        help="write a checkpoint every N epochs (always after the last one, and before "
        "stopping on SIGINT/SIGTERM at an epoch's end)",
    )
    _add_distributed_args(p)
    add_config_args(p)


def _add_distributed_args(p: argparse.ArgumentParser) -> None:
    d = p.add_argument_group(
        "several processes (jax.distributed; every process runs the same command)"
    )
    d.add_argument(
        "--distributed",
        action="store_true",
        help="join a multi-process run detected from the environment (SLURM, Open MPI, Cloud "
        "TPU, or $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES, $JAX_PROCESS_ID)",
    )
    d.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        default=None,
        help="process 0's address for the others to join (implies --distributed)",
    )
    d.add_argument(
        "--num-processes",
        metavar="N",
        type=count_at_least(1),
        default=None,
        help="processes in the run (implies --distributed)",
    )
    d.add_argument(
        "--process-id",
        metavar="I",
        type=count_at_least(0),
        default=None,
        help="this process's index, 0 .. N-1 (implies --distributed)",
    )


def add_training_flags(group: Any) -> None:
    """One flag per ``TrainConfig`` field (but :data:`NO_FLAG`): its name the field's (or
    :data:`FLAG_DESTS`'), its type, choices and help from the field's annotation, docstring
    and default; every default is ``None`` (not given)."""
    from jnet2net.config.overrides import field_docs, field_hints
    from jnet2net.train import TrainConfig

    docs = field_docs(TrainConfig)
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for dest, field in train_flags().items():
        hint = field_hints(TrainConfig)[field]
        help_text = docs[field].rstrip(".").replace("%", "%%")
        if field in CLI_NOTES:
            help_text += f"; {CLI_NOTES[field]}"
        if field == "progress":
            help_text += f"; the line comes every {_progress_every_s():g} s"
        if defaults[field] is not None and "default" not in help_text:
            help_text += f" (default: {defaults[field]})"
        group.add_argument(
            f"--{dest.replace('_', '-')}",
            dest=dest,
            default=None,
            help=help_text,
            **_flag_kind(hint, f"--{dest.replace('_', '-')}"),
        )


def _flag_kind(hint: Any, flag: str) -> dict[str, Any]:
    """``add_argument`` keywords for a field of type ``hint``: a ``--x/--no-x`` switch for
    a bool, ``choices`` for a ``Literal``, else a ``type`` that reads the value."""
    from jnet2net.config.overrides import parse_value, type_text

    if hint in (bool, bool | None):
        return {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(hint) is typing.Literal:
        return {"choices": typing.get_args(hint)}

    def read(text: str) -> Any:
        try:
            return parse_value(text, hint, flag)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {type_text(hint)}, got {text!r}") from None

    inner = {int: "N", float: "X"}
    metavar = next((m for t, m in inner.items() if hint in (t, t | None)), "VALUE")
    return {"type": read, "metavar": metavar}


def _progress_every_s() -> float:
    from jnet2net.train.progress import LINE_EVERY_S

    return LINE_EVERY_S


def train_config_from_args(
    args: argparse.Namespace, dataset: str, saved: dict[str, Any] | None = None
) -> Any:
    """The ``TrainConfig`` of a run: the fields the user stated (``--config FILE``, the flags,
    ``--config.train.KEY=VALUE``) over the defaults, or a resumed run's saved config.

    Raises:
      ValueError: a resumed run given a flag (other than those of :data:`RESUME_FIELDS`)
        that differs from its saved config.
    """
    from jnet2net.cli.run_config import run_config_from_args, stated_train_fields
    from jnet2net.train import TrainConfig

    run = getattr(args, "run_config", None) or run_config_from_args(args)
    flags = train_flags()
    given = {field: getattr(run.train, field) for field in stated_train_fields(args, flags)}
    log_path = str(pathlib.Path(args.out) / "metrics.jsonl")
    if saved is None:
        given.setdefault("augment", DEFAULT_AUGMENT.get(dataset, TrainConfig.augment))
        return TrainConfig(**given, log_path=log_path)
    config = TrainConfig.from_dict(saved)
    for field, value in given.items():
        if field not in RESUME_FIELDS and value != getattr(config, field):
            flag = next(d for d, f in flags.items() if f == field).replace("_", "-")
            raise ValueError(
                f"--{flag} {value} differs from the resumed run's --{flag} "
                f"{getattr(config, field)}; a resumed run keeps its config (only --epochs, "
                "--max-steps, --eval-every-steps, --progress may change): drop the flag or "
                "start a new --out"
            )
    changes = {k: v for k, v in given.items() if k in RESUME_FIELDS}
    changes.setdefault("max_steps", None)
    return config.replace(**changes, log_path=log_path)


def __getattr__(name: str) -> Any:
    if name == "TRAIN_FLAGS":  # made from TrainConfig on first use (which imports JAX)
        return train_flags()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
