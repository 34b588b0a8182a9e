"""``jnet2net train``: start a run, resume it, or start from a checkpoint; growth events and
scale-down inside the run."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import pathlib
from typing import Any

from jnet2net import signals
from jnet2net.cli.arch import check_param_limit, describe
from jnet2net.cli.args import CONFIG_FILE, EXAMPLES, check_out
from jnet2net.cli.datasets import (
    check_dataset_fits,
    data_flags,
    data_metadata,
    dataset_name,
    training_data,
)
from jnet2net.cli.format import HelpFormatter, format_record, print_line, run_summary
from jnet2net.cli.grow_at import growth_events
from jnet2net.cli.resume import (
    check_epochs_left,
    check_run_log,
    restore_plain,
    restore_scale_down,
    set_aside_damaged_checkpoints,
)
from jnet2net.cli.run_config import (
    overridden,
    run_config_from_args,
    scale_down_config,
    stated_train_fields,
    with_run_config,
)
from jnet2net.cli.train_flags import add_train_args, train_config_from_args, train_flags

__all__ = [
    "add_parser",
    "check_epochs_left",
    "check_run_log",
    "cmd_train",
    "save_run_config",
    "scale_down_config",
    "set_aside_damaged_checkpoints",
    "start_distributed",
    "train_run",
]


def add_parser(sub: Any) -> None:
    """Adds the ``train`` sub-parser."""
    p = sub.add_parser(
        "train",
        formatter_class=HelpFormatter,
        epilog=EXAMPLES["train"],
        help="train a network (new, resumed, or from a grown checkpoint)",
        description=(
            "Train a network and write a checkpoint every epoch plus metrics.jsonl into --out. "
            "The network is a preset (--arch, --arch-json, --width-mult), the variables of "
            "a checkpoint (--from, e.g. one written by 'jnet2net grow'), or, with --resume, the "
            "run already in --out, which continues where it stopped with its saved config "
            "(only --epochs, --max-steps, --eval-every-steps and --progress may change). "
            "--config FILE reads the whole run (network, data, training, growth, scale-down) "
            "from a config file, and --config.KEY=VALUE sets one field of it."
        ),
    )
    add_train_args(p)
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    """``jnet2net train``: joins a multi-process run first when asked, then holds
    ``--out``'s lock (process 0) while it trains; only process 0 prints to stdout."""
    from jnet2net import distributed

    start_distributed(args)
    check_out(args.out)
    # Orbax's directory checks are collective: all look before process 0 creates --out
    distributed.barrier("check_out")
    quiet = contextlib.nullcontext() if distributed.is_primary() else _stdout_to_devnull()
    with distributed.primary_locked(args.out), quiet:
        train_run(args)
    return 0


def start_distributed(args: argparse.Namespace) -> None:
    """``jnet2net.distributed.initialize`` when ``--distributed``, ``--coordinator``,
    ``--num-processes`` or ``--process-id`` is given (before any JAX work)."""
    from jnet2net import distributed

    given = (args.coordinator, args.num_processes, args.process_id)
    if args.distributed or any(v is not None for v in given):
        info = distributed.initialize(*given)
        if info.process_id == 0:
            print(
                f"{info.num_processes} processes, {info.global_devices} devices "
                f"({info.local_devices} in this process)"
            )


@contextlib.contextmanager
def _stdout_to_devnull() -> Any:
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield


def train_run(args: argparse.Namespace) -> Any:
    """Runs ``jnet2net train``; returns ``jnet2net.train.FitResult``."""
    import jax

    from jnet2net import checkpoint, distributed, train
    from jnet2net.scale_down.saving import is_run_checkpoint

    out = check_out(args.out)
    saved_steps = checkpoint.all_steps(out)
    if saved_steps and not args.resume:
        raise FileExistsError(
            f"{out} already holds a run (checkpoint steps {saved_steps}); pass --resume to "
            "continue it, or choose another --out"
        )
    resuming = args.resume and bool(saved_steps)
    run = run_config_from_args(args)
    args = with_run_config(args, run)
    model_given = bool(args.arch or args.arch_json or args.width_mult) or overridden(args, "model")
    if resuming and (args.source or model_given):
        raise ValueError(
            "--resume continues the run in --out with its own architecture; drop "
            "--from/--arch/--arch-json/--width-mult"
        )
    if args.source and model_given:
        raise ValueError(
            "--from takes the architecture from the checkpoint; drop "
            "--arch/--arch-json/--width-mult"
        )
    if resuming:
        set_aside_damaged_checkpoints(out)
        if jax.process_index() == 0:  # the log's one writer
            check_run_log(out / "metrics.jsonl")
    dataset = dataset_name(args, out if resuming else args.source, strict=resuming)
    flags = data_flags(args, out if resuming else args.source, strict=resuming)
    saved_config = checkpoint.checkpoint_info(out).train_config if resuming else None
    stated = stated_train_fields(args, train_flags())
    input_mode = run.train.input
    if resuming and "input" not in stated:
        input_mode = (saved_config or {}).get("input", "auto")
    train_set, test_set = training_data(dataset, flags, args, input_mode)
    signals.check_interrupt()
    start_dir = out if resuming else args.source
    if start_dir is not None:
        hint = "" if resuming else "; for other classes, 'jnet2net transfer --num-classes N' first"
        check_dataset_fits(checkpoint.checkpoint_info(start_dir), train_set, hint)
    spe = train.steps_per_epoch(len(train_set), _batch_size(args, out, resuming))

    state = variables = run_state = None
    metadata: dict[str, Any] = {"dataset": train_set.name, **data_metadata(flags)}
    if resuming:
        info = checkpoint.checkpoint_info(out)
        if info.train_config is None:
            raise ValueError(f"{info.path} has no training config to resume with")
        config = train_config_from_args(args, dataset, info.train_config)
        if not check_epochs_left(info, config, spe, out):
            print(f"run {out} already finished its {config.epochs} epochs (step {info.step})")
            return None
        model = info.model
        metadata.update(info.metadata)
        metadata.pop("record", None)
        if is_run_checkpoint(info):
            run_state = restore_scale_down(args, out, model, config, train_set, spe, metadata)
        else:
            state = restore_plain(out, model, config, train_set, spe)
    else:
        config = train_config_from_args(args, dataset)
        if args.source:
            start = checkpoint.restore(args.source)
            model, variables = start.model, start.variables
            metadata["started_from"] = str(start.path)
            print(f"starting from {start.path}: {describe(model)}")
        else:
            names = {} if args.config else {"arch_name": "--arch", "fields_name": "--arch-json"}
            model = run.model.build(train_set.num_classes, **names)
            check_param_limit(model, train_set.image_shape, args.max_params, "the network")
            print(f"new network: {describe(model)}")
    signals.check_interrupt()
    growth = ()
    growth_given = bool(args.grow_at) or overridden(args, "growth")
    if args.grow_at and overridden(args, "growth"):
        raise ValueError("give the growth schedule once: --grow-at or --config.growth")
    if resuming and "growth" in metadata:
        if growth_given:
            raise ValueError(
                "a resumed run keeps its growth schedule; drop --grow-at (saved: "
                f"{metadata['growth']})"
            )
        growth = tuple(train.Grow(**fields) for fields in metadata["growth"])
    elif growth_given or (run.growth and not resuming):
        if resuming:
            raise ValueError("--grow-at starts a growth schedule; a resumed run keeps its own")
        if args.scale_down:
            raise ValueError("--grow-at and --scale-down do not combine yet; pick one")
        growth = growth_events(
            model, args.grow_at or run.growth, train_set.image_shape, max_params=args.max_params
        )
        metadata["growth"] = [event.to_dict() for event in growth]
        for event in growth:
            print(f"growth at epoch {event.at_epoch:g}: {event.to_dict()}")
    saved_as = {"model": model, "started_from": bool(args.source)}
    if args.scale_down and resuming and run_state is None:
        raise ValueError(
            f"the run in {out} trains the whole network; resume it without --scale-down, or "
            "start a scale-down run in a new --out with --from its last checkpoint"
        )
    if not resuming:
        save_run_config(out, run, dataset, flags, config, growth, **saved_as)
    if args.scale_down or run_state is not None:
        return _train_scale_down(
            args, model, train_set, test_set, config, variables, metadata, run_state
        )
    keep = None if args.keep == 0 else args.keep
    save_epoch = checkpoint.epoch_saver(
        out,
        model,
        config,
        input_shape=train_set.image_shape,
        metadata=metadata,
        max_to_keep=keep,
    )

    savers = [save_epoch]
    board = None
    if args.tensorboard and distributed.is_primary():
        board = train.TensorBoardWriter(args.tensorboard)

    def on_epoch_end(state: Any, record: dict[str, Any]) -> None:
        if checkpoint_due(record, config.epochs, args.save_every, signals.pending_signal()):
            savers[-1](state, record)
        if board is not None:
            board.write(record)
        print_line(format_record(record, config.epochs), config.progress)
        signals.check_interrupt()

    def on_grow(new_model: Any, state: Any, record: dict[str, Any]) -> None:
        savers.append(
            checkpoint.epoch_saver(
                out,
                new_model,
                config,
                input_shape=train_set.image_shape,
                metadata=metadata,
                max_to_keep=keep,
            )
        )
        if board is not None:
            board.write(record)
        print_line(
            f"grew at epoch {record['epoch']:g} (step {record['step']}): {describe(new_model)}, "
            f"output error {record['output_error']:.1e}",
            config.progress,
        )
        signals.check_interrupt()

    with board if board is not None else contextlib.nullcontext():
        result = train.fit(
            model,
            train_set,
            test_set,
            config,
            state=state,
            variables=variables,
            on_epoch_end=on_epoch_end,
            growth=growth,
            on_grow=on_grow,
            initial_eval=variables is not None,
            on_step=lambda step: signals.check_interrupt(),
        )
    final = checkpoint.latest_step(out)
    if distributed.is_primary():
        print(run_summary(result.history))
    print(f"run {out}: checkpoint step {final}, metrics {config.log_path}")
    return result


def checkpoint_due(
    record: dict[str, Any], epochs: float, save_every: int, signal_pending: Any
) -> bool:
    """Whether the evaluation ``record`` (``step``, ``epoch``) is followed by a checkpoint:
    never at step 0 (the starting network), else at every record when ``save_every`` is 1,
    every ``save_every`` epochs otherwise, after the last epoch, and whenever a signal is
    pending (the run stops at this point)."""
    if record["step"] <= 0:
        return False
    epoch = float(record["epoch"])
    every = epoch / save_every
    on_multiple = save_every == 1 or abs(every - round(every)) < 1e-9
    return bool(signal_pending) or epoch >= epochs or on_multiple


def save_run_config(
    out: pathlib.Path,
    run: Any,
    dataset: str,
    flags: dict[str, Any],
    config: Any,
    growth: tuple,
    *,
    model: Any = None,
    started_from: bool = False,
) -> None:
    """Writes ``out/config.json`` (process 0): the run's config tree as it trains, with the
    data and training settings it resolved and its growth events, for ``--config``; a run
    started from a checkpoint (``started_from``) has its architecture as ``model.fields``."""
    from jnet2net import config as run_config
    from jnet2net import distributed, models

    if not distributed.is_primary():
        return
    spec = run.model
    if started_from:
        spec = run_config.ModelSpec(fields=models.model_config(model))
    data = dataclasses.replace(run.data, dataset=dataset, **flags)
    resolved = dataclasses.replace(run, model=spec, data=data, train=config, growth=growth)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(run_config.to_dict(resolved), indent=2)
    (out / CONFIG_FILE).write_text(text + "\n")


def _train_scale_down(
    args: argparse.Namespace,
    model: Any,
    train_set: Any,
    test_set: Any,
    config: Any,
    variables: Any,
    metadata: dict[str, Any],
    run_state: Any = None,
) -> Any:
    """``train --scale-down``: Learn&Drop training, the run state saved at every epoch's end
    (``--resume`` continues it); ``run_state`` continues a saved run with its own config."""
    from jnet2net import checkpoint, distributed, train
    from jnet2net.scale_down import ScaleDownConfig
    from jnet2net.scale_down.saving import CONFIG_KEY, run_saver

    if run_state is None:
        scale_config = scale_down_config(args.scale_json)
    else:
        scale_config = ScaleDownConfig(**metadata[CONFIG_KEY])
    keep = None if args.keep == 0 else args.keep
    save_epoch = run_saver(
        args.out,
        model,
        config,
        scale_config,
        input_shape=train_set.image_shape,
        metadata=metadata,
        max_to_keep=keep,
    )

    def on_epoch_end(run: Any, record: dict[str, Any]) -> None:
        if checkpoint_due(record, config.epochs, args.save_every, signals.pending_signal()):
            save_epoch(run, record)
        line = format_record(record, config.epochs)
        print_line(f"{line} cut {record.get('cut')}", config.progress)
        signals.check_interrupt()

    result = train.fit(
        model,
        train_set,
        test_set,
        config,
        scale_down=scale_config,
        state=run_state,
        variables=variables,
        on_epoch_end=on_epoch_end,
        initial_eval=variables is not None,
        on_step=lambda step: signals.check_interrupt(),
    )
    run = result.scale_down
    summary = run.summary
    saved = summary.get("flops_saved")
    saved_text = "n/a" if saved is None else f"{saved:.1%}"
    if distributed.is_primary():
        print(run_summary(result.history))
    print(
        f"scale-down: cut {run.cut} (frozen {summary.get('frozen')}), training FLOPs saved "
        f"{saved_text}; run {args.out}: checkpoint step {checkpoint.latest_step(args.out)}, "
        f"metrics {config.log_path}"
    )
    return result


def _batch_size(args: argparse.Namespace, out: pathlib.Path, resuming: bool) -> int:
    """The batch size the run uses (a resumed run keeps its own)."""
    from jnet2net import checkpoint
    from jnet2net.train import TrainConfig

    if resuming:
        saved = checkpoint.checkpoint_info(out).train_config or {}
        return int(saved.get("batch_size", TrainConfig.batch_size))
    return args.run_config.train.batch_size
