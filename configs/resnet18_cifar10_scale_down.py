"""Learn&Drop scale-down: ResNet-18 on CIFAR-10 whose early stages freeze on a compute
budget, the frozen prefix served from an activation cache.

    jnet2net train --config configs/resnet18_cifar10_scale_down.py \\
        --config.data.data_dir=DIR --out runs/r18-drop
"""

from jnet2net.config import DataConfig, ModelSpec, RunConfig
from jnet2net.scale_down import ScaleDownConfig
from jnet2net.train import TrainConfig


def get_config() -> RunConfig:
    return RunConfig(
        model=ModelSpec(arch="resnet18"),
        data=DataConfig(dataset="cifar10"),
        train=TrainConfig(epochs=30, batch_size=128, learning_rate=0.1),
        scale_down=ScaleDownConfig(mode="cache", target_compute=0.75),
    )
