"""The Net2Net protocol on full CIFAR-10 (32x32, 50k images): a half-width ResNet-20 teacher
(10 epochs) grown wider, deeper and both, 3/10/20-epoch budgets, 3 seeds: the net2net step
of benchmarks/gpu_suite.sh (which sets ``out`` under its $OUT and decodes the pack to
/tmp/cifar10_raw/cifar10.npz first).

    python experiments/run.py configs/studies/net2net_protocol_gpu.py \\
        --set out=/tmp/suite/results/net2net

Same as ``python experiments/net2net/protocol.py --protocol full --npz
/tmp/cifar10_raw/cifar10.npz --archs resnet --changes wider deeper both --budgets 3 10 20
--teacher-epochs 10 --batch-size 512 --lr 0.2 --student-lr 0.1 --seeds 0 1 2 --out
/tmp/gpu_suite/results/net2net --cache /tmp/net2net_teachers``.
"""

from experiments.study import Study


def get_config() -> Study:
    return Study(
        "net2net.protocol",
        {
            "protocol": "full",
            "npz": "/tmp/cifar10_raw/cifar10.npz",
            "archs": ["resnet"],
            "changes": ["wider", "deeper", "both"],
            "budgets": [3, 10, 20],
            "teacher_epochs": 10,
            "batch_size": 512,
            "lr": 0.2,
            "student_lr": 0.1,
            "seeds": [0, 1, 2],
            "out": "/tmp/gpu_suite/results/net2net",
            "cache": "/tmp/net2net_teachers",
        },
    )
