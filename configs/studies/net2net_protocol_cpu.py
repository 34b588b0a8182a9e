"""The Net2Net protocol on the CPU protocol (CIFAR-10 16x16, 10k train subset): a half-width
ResNet-20 teacher widened to full width, 3- and 10-epoch student budgets against scratch,
3 seeds: experiments/net2net/results/cifar10-16px.

    python experiments/run.py configs/studies/net2net_protocol_cpu.py
    python experiments/run.py configs/studies/net2net_protocol_cpu.py --set changes=deeper

Same as ``python experiments/net2net/protocol.py --data-dir ../shared/data --archs resnet
--changes wider --budgets 3 10 --seeds 0 1 2``.
"""

from experiments.study import Study


def get_config() -> Study:
    return Study(
        "net2net.protocol",
        {
            "data_dir": "../shared/data",
            "archs": ["resnet"],
            "changes": ["wider"],
            "budgets": [3, 10],
            "seeds": [0, 1, 2],
        },
    )
