"""The Net2Net protocol on the CPU protocol, half-width teachers widened to full width, and
widened and deepened at once (ResNet-20 -> full-width ResNet-32, VGG-11 -> full-width
VGG-13), with fresh units, student learning rate 0.05 and a moving average of the weights,
budgets 3, 10 and 20, 3 seeds (the ``wider[fresh-lr0.05-ema0.99]`` and
``both[fresh-lr0.05-ema0.99]`` rows of experiments/net2net/results/cifar10-16px; the deeper
rows: ``net2net_protocol_cpu_deeper_ema.py``).

    python experiments/run.py configs/studies/net2net_protocol_cpu_fresh_ema.py

Same as ``python experiments/net2net/protocol.py --data-dir ../shared/data --archs resnet vgg
--changes wider both --noise fresh --student-lr 0.05 --tag fresh-lr0.05 --ema-decay 0.99
--budgets 3 10 20 --seeds 0 1 2`` (the rows were run a few architectures, changes and
budgets at a time, e.g. ``--set archs=resnet --set changes=both``).
"""

from experiments.study import Study


def get_config() -> Study:
    return Study(
        "net2net.protocol",
        {
            "data_dir": "../shared/data",
            "archs": ["resnet", "vgg"],
            "changes": ["wider", "both"],
            "noise": "fresh",
            "student_lr": 0.05,
            "tag": "fresh-lr0.05",
            "ema_decay": 0.99,
            "budgets": [3, 10, 20],
            "seeds": [0, 1, 2],
        },
    )
