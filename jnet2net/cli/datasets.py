"""The data flags of ``train`` and ``eval`` (``--dataset``, ``--resolution``, ``--train-subset``,
...), what a checkpoint saved of them, and the datasets they load."""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
from typing import Any

from jnet2net.cli.args import count_at_least


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset",
        metavar="NAME",
        default=None,
        help="digits (offline, the default), cifar10, cifar100, mnist, fashion_mnist",
    )
    p.add_argument(
        "--data-dir", metavar="DIR", default=None, help="tfds data dir or folder of npz packs"
    )
    p.add_argument("--download", action="store_true", help="let tfds download the dataset")
    p.add_argument(
        "--resolution",
        metavar="N",
        type=count_at_least(1),
        default=None,
        help="downsample images to N x N by k x k means (e.g. 16 for CIFAR-10 on CPU)",
    )
    p.add_argument(
        "--train-subset",
        metavar="N",
        type=count_at_least(1),
        default=None,
        help="train on a seeded stratified subset of N training examples",
    )
    p.add_argument(
        "--subset-seed",
        metavar="N",
        type=count_at_least(0),
        default=None,
        help="seed of --train-subset (default 0)",
    )


def dataset_name(
    args: argparse.Namespace, source: str | pathlib.Path | None, *, strict: bool = False
) -> str:
    """``--dataset``, else the dataset that checkpoint ``source`` names, else ``digits``.

    ``strict`` (a resumed run): a ``--dataset`` other than the saved one is an error.
    """
    from jnet2net import checkpoint

    saved = None
    if source is not None:
        saved = checkpoint.checkpoint_info(source).metadata.get("dataset")
    if strict and args.dataset and saved and args.dataset != saved:
        raise ValueError(
            f"--dataset {args.dataset} differs from the resumed run's dataset {saved!r}"
        )
    return args.dataset or saved or "digits"


#: ``--flag`` dest -> its value when neither given nor saved with the checkpoint.
DATA_FLAGS = {"resolution": None, "train_subset": None, "subset_seed": 0}


def data_flags(
    args: argparse.Namespace, source: str | pathlib.Path | None, *, strict: bool = False
) -> dict[str, int | None]:
    """``--resolution/--train-subset/--subset-seed``, else checkpoint ``source``'s, else defaults.

    ``strict`` (a resumed run): a flag other than the run's saved value is an error.
    """
    from jnet2net import checkpoint

    saved = {} if source is None else checkpoint.checkpoint_info(source).metadata
    flags: dict[str, int | None] = {}
    for key, default in DATA_FLAGS.items():
        given, kept = getattr(args, key), saved.get(key, default)
        if strict and given is not None and given != kept:
            flag = f"--{key.replace('_', '-')}"
            theirs = f"{flag} {kept}" if kept is not None else f"data (no {flag})"
            raise ValueError(
                f"{flag} {given} differs from the resumed run's {theirs}; a resumed run keeps "
                "its data"
            )
        flags[key] = given if given is not None else kept
    return flags


def training_data(
    dataset: str, flags: dict[str, int | None], args: argparse.Namespace, input_mode: str
) -> tuple[Any, Any]:
    """``(train, test)`` of ``jnet2net train``: :class:`~jnet2net.data.StreamSet` s of a
    tfds dataset under ``--input stream`` (digits, which lives in memory, is loaded and
    streamed from there by ``fit``), else :class:`~jnet2net.data.Dataset` s in memory.
    """
    from jnet2net import data

    if input_mode == "stream" and dataset != "digits":
        if flags["train_subset"] is not None:
            raise ValueError(
                "--train-subset picks an in-memory subset; with --input stream the whole "
                "training split is read (use --input memory or auto for the subset)"
            )
        return data.stream_protocol(
            dataset,
            data_dir=args.data_dir,
            download=args.download,
            image_size=flags["resolution"],
        )
    return data.load_protocol(
        dataset,
        data_dir=args.data_dir,
        download=args.download,
        resolution=flags["resolution"],
        train_subset=flags["train_subset"],
        seed=flags["subset_seed"],
    )


def data_metadata(flags: dict[str, int | None]) -> dict[str, int]:
    """The checkpoint metadata of a run's data flags: only those that change the data."""
    if flags["train_subset"] is None:
        return {} if flags["resolution"] is None else {"resolution": flags["resolution"]}
    return {k: v for k, v in flags.items() if v is not None}


def load_eval_split(
    name: str, split: str, flags: dict[str, int | None], *, data_dir: Any, download: bool
) -> Any:
    """The split ``jnet2net eval`` measures, normalised as its training run's data was.

    With ``flags['train_subset']``, ``split='train'`` is that subset and every other split
    carries the subset's ``mean``/``std`` (as ``fit`` normalised the test set).
    """
    from jnet2net import data

    common = {"data_dir": data_dir, "download": download, "resolution": flags["resolution"]}
    if flags["train_subset"] is None:
        return data.load(name, split, **common)
    train_set = data.load(
        name,
        "train",
        train_subset=flags["train_subset"],
        subset_seed=flags["subset_seed"],
        **common,
    )
    if split == "train":
        return train_set
    dataset = data.load(name, split, **common)
    return dataclasses.replace(dataset, mean=train_set.mean, std=train_set.std)


def check_dataset_fits(info: Any, dataset: Any, hint: str = "") -> None:
    """Raises ValueError unless ``dataset`` has the images and classes of checkpoint ``info``.

    Only the channels are compared when the checkpoint does not know its image size.
    """
    want_shape = tuple(int(n) for n in info.input_shape[1:])
    have_shape = tuple(int(n) for n in dataset.image_shape)
    compared = slice(None) if info.input_shape_given else slice(-1, None)
    problems = []
    if have_shape[compared] != want_shape[compared]:
        problems.append(f"images of shape {have_shape}, the checkpoint's network {want_shape}")
    if dataset.num_classes != info.model.num_classes:
        problems.append(
            f"{dataset.num_classes} classes, the checkpoint's network {info.model.num_classes}"
        )
    if problems:
        raise ValueError(
            f"dataset {dataset.name!r} does not fit the checkpoint {info.path}: it has "
            + "; ".join(problems)
            + hint
        )
