"""The Net2Net protocol on the CPU protocol, half-width teachers (ResNet-20, VGG-11) widened
to full width with fresh units, student learning rate 0.05, students and scratch evaluated
through a moving average of their weights (ema 0.99), budgets 3, 10 and 20, 3 seeds (the
``resnet/wider[fresh-lr0.05-ema0.99]`` and ``vgg/wider[fresh-lr0.05-ema0.99]`` rows of
experiments/net2net/results/cifar10-16px).

    python experiments/run.py configs/studies/net2net_protocol_cpu_wider_ema.py

Same as ``python experiments/net2net/protocol.py --data-dir ../shared/data --archs resnet vgg
--changes wider --noise fresh --student-lr 0.05 --tag fresh-lr0.05 --ema-decay 0.99
--budgets 3 10 20 --seeds 0 1 2`` (the rows were run a few architectures and budgets at a
time).
"""

from experiments.study import Study


def get_config() -> Study:
    return Study(
        "net2net.protocol",
        {
            "data_dir": "../shared/data",
            "archs": ["resnet", "vgg"],
            "changes": ["wider"],
            "noise": "fresh",
            "student_lr": 0.05,
            "tag": "fresh-lr0.05",
            "ema_decay": 0.99,
            "budgets": [3, 10, 20],
            "seeds": [0, 1, 2],
        },
    )
