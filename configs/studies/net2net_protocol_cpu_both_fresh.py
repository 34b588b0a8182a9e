"""The Net2Net protocol on the CPU protocol, wider and deeper at once with fresh units and
student learning rate 0.05, a 10-epoch budget, seed 0 (the ``[fresh-lr0.05]`` rows of
experiments/net2net/results/cifar10-16px).

    python experiments/run.py configs/studies/net2net_protocol_cpu_both_fresh.py

Same as ``python experiments/net2net/protocol.py --data-dir ../shared/data --archs resnet
--changes both --noise fresh --student-lr 0.05 --tag fresh-lr0.05 --budgets 10 --seeds 0``
(the command its summary.json records).
"""

from experiments.study import Study


def get_config() -> Study:
    return Study(
        "net2net.protocol",
        {
            "data_dir": "../shared/data",
            "archs": ["resnet"],
            "changes": ["both"],
            "noise": "fresh",
            "student_lr": 0.05,
            "tag": "fresh-lr0.05",
            "budgets": [10],
            "seeds": [0],
        },
    )
