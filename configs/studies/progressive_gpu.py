"""Progressive growth on full CIFAR-10 (32x32, 50k images), 15 epochs, 3 seeds: the
progressive step of benchmarks/gpu_suite.sh (which sets ``out`` under its $OUT and decodes
the pack to /tmp/cifar10_raw/cifar10.npz first).

    python experiments/run.py configs/studies/progressive_gpu.py \\
        --set out=/tmp/suite/results/progressive

Same as ``python experiments/progressive/run.py --protocol full --npz
/tmp/cifar10_raw/cifar10.npz --epochs 15 --batch-size 512 --lr 0.2 --arms scratch fresh
scratch_eq split0.1 --seeds 0 1 2 --out /tmp/gpu_suite/results/progressive``.
"""

from experiments.study import Study


def get_config() -> Study:
    return Study(
        "progressive",
        {
            "protocol": "full",
            "npz": "/tmp/cifar10_raw/cifar10.npz",
            "epochs": 15,
            "batch_size": 512,
            "lr": 0.2,
            "arms": ["scratch", "fresh", "scratch_eq", "split0.1"],
            "seeds": [0, 1, 2],
            "out": "/tmp/gpu_suite/results/progressive",
        },
    )
