"""Runs a study from its study config: a study is a config file plus this runner.

::

    python experiments/run.py configs/studies/progressive_cpu.py
    python experiments/run.py configs/studies/progressive_cpu.py --set seeds=0,1 --set epochs=5
    python experiments/run.py configs/studies/progressive_cpu.py --summarize
    python experiments/run.py configs/studies/progressive_cpu.py --dry-run

A study config (``configs/studies/*.py``) is a file whose ``get_config()`` returns an
``experiments.study.Study``: the study's script (``'progressive'``, ``'net2net.protocol'``,
...), ``options`` holding what its command-line flags hold (keys are the argparse dests:
``data_dir``, ``seeds``, ``arms``, ``out``, ...) and optionally ``run``, a
``jnet2net.config.RunConfig`` that reaches a script taking ``--config FILE`` as a temporary
JSON file of ``to_dict``. The runner turns the options into the argv of the script's own
``build_parser()`` (which reads and checks every value) and calls its ``main(argv)``.

``--set KEY=VALUE`` sets an option (``seeds=0,1``: commas separate the values of a
many-valued flag; ``tiny=true`` for an on/off flag) or a run config key
(``run.train.epochs=5``); ``--summarize`` sets the script's ``--summarize``;
``--dry-run`` prints the script's command (and the run config's JSON) and exits without
training. Bad input gives a one-line error and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shlex
import sys
import tempfile
from collections.abc import Sequence

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from experiments import study as study_lib

RUN_CONFIG_NAME = "run_config.json"


def build_parser() -> argparse.ArgumentParser:
    """The runner's options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("study_config", help="a study config, e.g. configs/studies/*.py")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set an option (seeds=0,1) or a run config key (run.train.epochs=5)",
    )
    parser.add_argument("--summarize", action="store_true", help="the study's --summarize")
    parser.add_argument("--dry-run", action="store_true", help="print the command; run nothing")
    return parser


def resolved_study(args: argparse.Namespace) -> study_lib.Study:
    """The study config with ``--set`` and ``--summarize`` applied."""
    study = study_lib.with_overrides(study_lib.load_study(args.study_config), args.overrides)
    if args.summarize:
        study = study_lib.with_overrides(study, [f"{study_lib.SUMMARIZE_KEY}=true"])
    return study


def command_text(study: study_lib.Study, argv: Sequence[str]) -> str:
    """The script's command line, ``python experiments/<...>.py ARGV``."""
    script = study_lib.study_script(study.study).relative_to(study_lib.EXPERIMENTS.parent)
    return shlex.join(["python", script.as_posix(), *argv])


def run_config_json(study: study_lib.Study) -> str | None:
    """The study's run config as JSON (``None`` without one).

    Raises:
      ValueError: it does not read back as the same config (``jnet2net.config.from_dict``).
    """
    if study.run is None:
        return None
    from jnet2net.config import from_dict, to_dict

    values = to_dict(study.run)
    if from_dict(values) != study.run:
        raise ValueError("the study's run config does not read back from to_dict's JSON")
    return json.dumps(values)


def run_study(study: study_lib.Study, run_json: str | None) -> int:
    """Calls the script's ``main`` with the study's argv, the run config in a temporary
    file; its exit code (0 where it returns a result instead)."""
    module = study_lib.study_module(study.study)
    with tempfile.TemporaryDirectory(prefix="study_") as folder:
        config_path = pathlib.Path(folder) / RUN_CONFIG_NAME
        if run_json is not None:
            config_path.write_text(run_json + "\n")
        argv = study_lib.study_argv(study, str(config_path))
        print(command_text(study, argv), flush=True)
        result = module.main(argv)
    return result if isinstance(result, int) else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        study = resolved_study(args)
        study_argv = study_lib.study_argv(study, RUN_CONFIG_NAME)
        run_json = run_config_json(study)
    except (FileNotFoundError, ValueError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    study_lib.study_parser(study.study).parse_args(study_argv)  # the script's own checks
    if not args.dry_run:
        return run_study(study, run_json)
    print(command_text(study, study_argv))
    if run_json is not None:
        print(f"{RUN_CONFIG_NAME}: {run_json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
