"""Budgeted scale-down against full training on the CPU protocol (CIFAR-10 16x16, 10k train
subset), ResNet-18 and VGG-11 at reduced width, every arm, 3 seeds:
experiments/scale_down/results/cifar10-16px.

    python experiments/run.py configs/studies/scale_down_cpu.py
    python experiments/run.py configs/studies/scale_down_cpu.py --summarize

Same as ``python experiments/scale_down/run.py --data-dir ../shared/data --seeds 0 1 2``.
"""

from experiments.study import Study


def get_config() -> Study:
    return Study("scale_down", {"data_dir": "../shared/data", "seeds": [0, 1, 2]})
