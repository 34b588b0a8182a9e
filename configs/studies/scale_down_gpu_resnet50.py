"""Scale-down against full training, ResNet-50 on full CIFAR-10 (32x32, 50k images), seed 0,
15 epochs: the scale_down_resnet50 step of benchmarks/gpu_suite.sh (which sets ``out``
under its $OUT and decodes the pack to /tmp/cifar10_raw/cifar10.npz first).

    python experiments/run.py configs/studies/scale_down_gpu_resnet50.py \\
        --set out=/tmp/suite/results/scale_down

Same as ``python experiments/scale_down/run.py --protocol full --npz
/tmp/cifar10_raw/cifar10.npz --nets resnet50 --arms full scale_down --seeds 0 --epochs 15
--batch-size 512 --lr 0.2 --warmup-epochs 2 --dtype bfloat16 --out
/tmp/gpu_suite/results/scale_down``.
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
        },
    )
