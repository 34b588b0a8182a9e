"""ResNet-18 scale-down on the CPU protocol with a larger learning rate (3x) for the stages
that may freeze, at a 0.65 compute target, 3 seeds:
experiments/scale_down/results/cifar10-16px-lowered/ablations/lr_boost/target0.65 (its README
has the target-0.6 and full-training-with-the-boost runs: ``--set target=0.6`` or ``1.0``).

    python experiments/run.py configs/studies/scale_down_cpu_lr_boost.py

Same as ``python experiments/scale_down/run.py --data-dir ../shared/data --nets resnet18
--seeds 0 1 2 --arms full scale_down --lr-boost 3.0 --target 0.65 --out
experiments/scale_down/results/cifar10-16px-lowered/ablations/lr_boost/target0.65``.
"""

from experiments.study import Study

OUT = "experiments/scale_down/results/cifar10-16px-lowered/ablations/lr_boost/target0.65"


def get_config() -> Study:
    return Study(
        "scale_down",
        {
            "data_dir": "../shared/data",
            "nets": ["resnet18"],
            "seeds": [0, 1, 2],
            "arms": ["full", "scale_down"],
            "lr_boost": 3.0,
            "target": 0.65,
            "out": OUT,
        },
    )
