"""The Net2Net protocol's teacher on the CPU protocol: CIFAR-10 at 16x16, a 10k training
subset; a ResNet-20 at half width (8, 16, 32) for 10 epochs.

    jnet2net train --config configs/net2net_cifar10_16px.py \\
        --config.data.data_dir=DIR --out runs/teacher

Its training settings are the CPU protocol's of ``experiments/net2net/protocol.py``, which
reads them with ``--config configs/net2net_cifar10_16px.py``: the teacher trains with them,
students and scratch runs with their own epochs, learning rate and warm-up.
"""

from jnet2net.config import DataConfig, ModelSpec, RunConfig
from jnet2net.train import TrainConfig


def get_config() -> RunConfig:
    return RunConfig(
        model=ModelSpec(arch="resnet20", fields={"stage_widths": (8, 16, 32)}),
        data=DataConfig(dataset="cifar10", resolution=16, train_subset=10_000),
        train=TrainConfig(
            epochs=10,
            batch_size=128,
            learning_rate=0.1,
            weight_decay=5e-4,
            augment="crop_flip",
            crop_padding=2,  # 2 px at 16x16
            compute_dtype="float32",
        ),
    )
