"""Progressive growth against scratch on the CPU protocol (CIFAR-10 16x16, 10k train subset),
3 seeds: experiments/progressive/results/cifar10-16px.

    python experiments/run.py configs/studies/progressive_cpu.py
    python experiments/run.py configs/studies/progressive_cpu.py --summarize

Same as ``python experiments/progressive/run.py --data-dir ../shared/data --seeds 0 1 2``.
"""

from experiments.study import Study


def get_config() -> Study:
    return Study("progressive", {"data_dir": "../shared/data", "seeds": [0, 1, 2]})
