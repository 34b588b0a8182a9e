"""Scale-down on the CPU protocol, ResNet-18 seed 0 timed alone, against full training at
equal epochs and at equal seconds: experiments/scale_down/results/cifar10-16px-quiet.

    python experiments/run.py configs/studies/scale_down_cpu_quiet.py

Same as ``python experiments/scale_down/run.py --data-dir ../shared/data --nets resnet18
--out experiments/scale_down/results/cifar10-16px-quiet --arms full scale_down
full_eq_seconds --seeds 0`` (the command its summary.json records).
"""

from experiments.study import Study


def get_config() -> Study:
    return Study(
        "scale_down",
        {
            "data_dir": "../shared/data",
            "nets": ["resnet18"],
            "out": "experiments/scale_down/results/cifar10-16px-quiet",
            "arms": ["full", "scale_down", "full_eq_seconds"],
            "seeds": [0],
            "target": 0.6,  # the recorded run's settings (the protocol before the boost)
            "lr_boost": 1.0,
        },
    )
