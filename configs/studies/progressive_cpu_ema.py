"""Progressive growth against scratch on the CPU protocol, every arm evaluated through a
moving average of its weights, 3 seeds: experiments/progressive/results/cifar10-16px-ema0.99.

    python experiments/run.py configs/studies/progressive_cpu_ema.py

Same as ``python experiments/progressive/run.py --data-dir ../shared/data --ema-decay 0.99
--arms scratch fresh@14 scratch@7 --headline fresh@14 --seeds 0 1 2 --out
experiments/progressive/results/cifar10-16px-ema0.99``.
"""

from experiments.study import Study


def get_config() -> Study:
    return Study(
        "progressive",
        {
            "data_dir": "../shared/data",
            "ema_decay": 0.99,
            "arms": ["scratch", "fresh@14", "scratch@7"],
            "headline": "fresh@14",
            "seeds": [0, 1, 2],
            "out": "experiments/progressive/results/cifar10-16px-ema0.99",
        },
    )
