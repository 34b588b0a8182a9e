"""The Net2Net protocol on the CPU protocol, half-width teachers deepened (ResNet-20 ->
ResNet-32 depths, VGG-11 -> VGG-13 depths, exact), students and scratch evaluated through a
moving average of their weights (ema 0.99), budgets 3, 10 and 20, 3 seeds (the
``resnet/deeper[ema0.99]`` and ``vgg/deeper[ema0.99]`` rows of
experiments/net2net/results/cifar10-16px).

    python experiments/run.py configs/studies/net2net_protocol_cpu_deeper_ema.py

Same as ``python experiments/net2net/protocol.py --data-dir ../shared/data --archs resnet vgg
--changes deeper --ema-decay 0.99 --budgets 3 10 20 --seeds 0 1 2`` (the rows were run a few
architectures and budgets at a time).
"""

from experiments.study import Study


def get_config() -> Study:
    return Study(
        "net2net.protocol",
        {
            "data_dir": "../shared/data",
            "archs": ["resnet", "vgg"],
            "changes": ["deeper"],
            "ema_decay": 0.99,
            "budgets": [3, 10, 20],
            "seeds": [0, 1, 2],
        },
    )
