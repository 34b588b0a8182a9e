"""The Net2Net protocol on the CPU protocol with a half-width VGG-11 teacher deepened to
VGG-13 depths, a 10-epoch budget, students and scratch evaluated through a moving average of
their weights (ema 0.99), 3 seeds (the ``vgg/deeper[ema0.99]`` rows of
experiments/net2net/results/cifar10-16px).

    python experiments/run.py configs/studies/net2net_protocol_cpu_vgg.py

Same as ``python experiments/net2net/protocol.py --data-dir ../shared/data --archs vgg
--changes deeper --ema-decay 0.99 --budgets 10 --seeds 0 1 2``.
"""

from experiments.study import Study


def get_config() -> Study:
    return Study(
        "net2net.protocol",
        {
            "data_dir": "../shared/data",
            "archs": ["vgg"],
            "changes": ["deeper"],
            "ema_decay": 0.99,
            "budgets": [10],
            "seeds": [0, 1, 2],
        },
    )
