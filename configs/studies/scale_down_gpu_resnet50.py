"""Scale-down against full training, ResNet-50 on full CIFAR-10 (32x32, 50k images), seed 0,
15 epochs: the scale_down_resnet50 step of benchmarks/gpu_suite.sh (which sets ``out``
under its $OUT and decodes the pack to /tmp/cifar10_raw/cifar10.npz first).

    python experiments/run.py configs/studies/scale_down_gpu_resnet50.py \\
        --set out=/tmp/suite/results/scale_down

Same as ``python experiments/scale_down/run.py --protocol full --npz
/tmp/cifar10_raw/cifar10.npz --nets resnet50 --arms full scale_down --seeds 0 --epochs 15
--batch-size 512 --lr 0.2 --warmup-epochs 2 --dtype bfloat16 --out
/tmp/gpu_suite/results/scale_down --target 0.5 --not-before 0.2``.

The target is the issue's 2x. ResNet-50's cached steps after its stages 0, 1 and 2 cost
0.80, 0.54 and 0.17 of a full step (counted FLOPs), so with the default ``not_before=0.3``
and ``min_spacing=0.1`` no plan goes below 0.557 of full training; ``not_before=0.2`` lets
the planner freeze at about 23%, 33% and 43% of training, which meets 0.5.
"""

from experiments.study import Study


def get_config() -> Study:
    return Study(
        "scale_down",
        {
            "protocol": "full",
            "npz": "/tmp/cifar10_raw/cifar10.npz",
            "nets": ["resnet50"],
            "arms": ["full", "scale_down"],
            "seeds": [0],
            "epochs": 15,
            "batch_size": 512,
            "lr": 0.2,
            "warmup_epochs": 2,
            "dtype": "bfloat16",
            "out": "/tmp/gpu_suite/results/scale_down",
            "target": 0.5,
            "not_before": 0.2,
            "lr_boost": 1.0,  # the recorded runs predate the boost
        },
    )
