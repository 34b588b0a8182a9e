"""The flags of ``jnet2net train`` and the ``TrainConfig`` they make (a resumed run keeps its
own)."""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
from typing import Any

from jnet2net.cli.args import add_max_params, count_at_least, positive_float
from jnet2net.cli.datasets import add_data_args

#: ``--flag`` dest -> ``TrainConfig`` field, for the flags that set the training config.
TRAIN_FLAGS = {
    "epochs": "epochs",
    "batch_size": "batch_size",
    "lr": "learning_rate",
    "optimizer": "optimizer",
    "momentum": "momentum",
    "weight_decay": "weight_decay",
    "schedule": "schedule",
    "warmup_epochs": "warmup_epochs",
    "label_smoothing": "label_smoothing",
    "augment": "augment",
    "crop_padding": "crop_padding",
    "dtype": "compute_dtype",
    "seed": "seed",
    "progress": "progress",
    "max_steps": "max_steps",
    "eval_every_steps": "eval_every_steps",
    "input": "input",
}
#: ``TrainConfig`` fields that a resumed run may change (``max_steps`` is not kept).
RESUME_FIELDS = ("epochs", "progress", "max_steps", "eval_every_steps", "input")
#: Augmentation when --augment is not given (flipping digits changes their meaning).
DEFAULT_AUGMENT = {"digits": "none", "mnist": "none"}


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
    t.add_argument("--epochs", metavar="N", type=int, default=None, help=_config_help("epochs"))
    t.add_argument(
        "--batch-size", metavar="N", type=int, default=None, help=_config_help("batch_size")
    )
    t.add_argument(
        "--lr", metavar="X", type=float, default=None, help=_config_help("learning_rate")
    )
    t.add_argument(
        "--optimizer", choices=("sgd", "adamw"), default=None, help=_config_help("optimizer")
    )
    t.add_argument(
        "--momentum", metavar="X", type=float, default=None, help=_config_help("momentum")
    )
    t.add_argument(
        "--weight-decay", metavar="X", type=float, default=None, help=_config_help("weight_decay")
    )
    t.add_argument(
        "--schedule",
        choices=("cosine", "onecycle", "constant"),
        default=None,
        help=_config_help("schedule"),
    )
    t.add_argument(
        "--warmup-epochs", metavar="X", type=float, default=None, help=_config_help("warmup_epochs")
    )
    t.add_argument(
        "--label-smoothing",
        metavar="X",
        type=float,
        default=None,
        help=_config_help("label_smoothing"),
    )
    t.add_argument(
        "--augment",
        choices=("crop_flip", "crop", "flip", "none"),
        default=None,
        help="training augmentation ('crop': no flips); default: none for digits and mnist, "
        "else crop_flip",
    )
    t.add_argument(
        "--crop-padding", metavar="N", type=int, default=None, help=_config_help("crop_padding")
    )
    t.add_argument(
        "--tensorboard",
        metavar="DIR",
        default=None,
        help="also write the records as TensorBoard scalars to DIR (needs tensorboardX: "
        "pip install 'jnet2net[tensorboard]')",
    )
    t.add_argument(
        "--input",
        choices=("auto", "memory", "stream"),
        default=None,
        help="where batches come from: 'stream' reads a tfds array_record dataset record by "
        "record with grain (each process its rows; --resolution then resizes and "
        "centre-crops), 'memory' holds the training set on every device, 'auto' (default) "
        "streams sets larger than a quarter of a device's memory (and a resumed run may switch)",
    )
    t.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default=None,
        help=_config_help("compute_dtype"),
    )
    t.add_argument("--seed", metavar="N", type=int, default=None, help=_config_help("seed"))
    t.add_argument(
        "--max-steps",
        metavar="N",
        type=count_at_least(1),
        default=None,
        help="stop at global step N, mid-epoch allowed (the schedule still spans --epochs; "
        "not kept by --resume)",
    )
    t.add_argument(
        "--eval-every-steps",
        metavar="N",
        type=count_at_least(1),
        default=None,
        help="also evaluate, log and save a checkpoint every N steps (default: at epoch ends)",
    )
    t.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar; default: a bar on a terminal, else a progress line every "
        f"{_progress_every_s():g} s on stderr",
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
    _add_distributed_args(p)


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


def _config_help(field: str) -> str:
    """A training flag's help: what it sets and the ``TrainConfig`` field's default."""
    from jnet2net.train import TrainConfig

    default = next(f.default for f in dataclasses.fields(TrainConfig) if f.name == field)
    return f"{_FIELD_HELP[field]} (default: {default})"


#: What each ``TrainConfig`` flag sets, for ``--help``.
_FIELD_HELP = {
    "epochs": "passes over the training set; the schedule spans them",
    "batch_size": "global batch, a multiple of the device count",
    "learning_rate": "peak learning rate",
    "optimizer": "sgd (Nesterov momentum) or adamw",
    "momentum": "SGD momentum",
    "weight_decay": "decay of kernels (L2 for SGD, decoupled for AdamW)",
    "schedule": "learning-rate schedule after the warm-up",
    "warmup_epochs": "linear warm-up from 0, in epochs (fractional allowed)",
    "label_smoothing": "weight of the uniform distribution in the targets",
    "crop_padding": "zero padding of the random crop, in pixels",
    "compute_dtype": "compute dtype; parameters stay float32",
    "seed": "seeds initialisation, data order and augmentation",
}


def _progress_every_s() -> float:
    from jnet2net.train.progress import LINE_EVERY_S

    return LINE_EVERY_S


def train_config_from_args(
    args: argparse.Namespace, dataset: str, saved: dict[str, Any] | None = None
) -> Any:
    """The ``TrainConfig`` of a run: flags over defaults, or a resumed run's saved config.

    Raises:
      ValueError: a resumed run given a flag (other than those of :data:`RESUME_FIELDS`)
        that differs from its saved config.
    """
    from jnet2net.train import TrainConfig

    given = {
        field: getattr(args, dest)
        for dest, field in TRAIN_FLAGS.items()
        if getattr(args, dest, None) is not None
    }
    log_path = str(pathlib.Path(args.out) / "metrics.jsonl")
    if saved is None:
        given.setdefault("augment", DEFAULT_AUGMENT.get(dataset, TrainConfig.augment))
        return TrainConfig(**given, log_path=log_path)
    config = TrainConfig.from_dict(saved)
    for field, value in given.items():
        if field not in RESUME_FIELDS and value != getattr(config, field):
            flag = next(d for d, f in TRAIN_FLAGS.items() if f == field).replace("_", "-")
            raise ValueError(
                f"--{flag} {value} differs from the resumed run's --{flag} "
                f"{getattr(config, field)}; a resumed run keeps its config (only --epochs, "
                "--max-steps, --eval-every-steps, --progress may change): drop the flag or "
                "start a new --out"
            )
    changes = {k: v for k, v in given.items() if k in RESUME_FIELDS}
    changes.setdefault("max_steps", None)
    return config.replace(**changes, log_path=log_path)
