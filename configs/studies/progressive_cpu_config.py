"""Progressive growth on the CPU protocol with the training settings of a run config
(configs/resnet20_cifar10_progressive.py: its train section and --epochs' default), seed 0.

    python experiments/run.py configs/studies/progressive_cpu_config.py
    python experiments/run.py configs/studies/progressive_cpu_config.py --set run.train.epochs=14

Same as ``python experiments/progressive/run.py --config
configs/resnet20_cifar10_progressive.py --data-dir ../shared/data --seeds 0``.
"""

import pathlib

from experiments.study import Study
from jnet2net.config import load_config


def get_config() -> Study:
    run = load_config(pathlib.Path(__file__).parents[1] / "resnet20_cifar10_progressive.py")
    return Study("progressive", {"data_dir": "../shared/data", "seeds": [0]}, run=run)
