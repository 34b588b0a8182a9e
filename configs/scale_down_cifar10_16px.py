"""Budgeted scale-down on the CPU protocol: CIFAR-10 at 16x16, a 10k training subset; a
ResNet-18 at reduced width whose early stages freeze so that training costs 65% of full
training's FLOPs; until they freeze they train at three times the learning rate.

    jnet2net train --config configs/scale_down_cifar10_16px.py \\
        --config.data.data_dir=DIR --out runs/scale-down

Its training and scale-down settings are the CPU protocol's of
``experiments/scale_down/run.py``, which reads them with
``--config configs/scale_down_cifar10_16px.py`` (its networks and data stay the protocol's).
"""

from jnet2net.config import DataConfig, ModelSpec, RunConfig
from jnet2net.scale_down import ScaleDownConfig
from jnet2net.train import TrainConfig


def get_config() -> RunConfig:
    return RunConfig(
        model=ModelSpec(arch="resnet18", fields={"stage_widths": (16, 32, 64, 128)}),
        data=DataConfig(dataset="cifar10", resolution=16, train_subset=10_000),
        train=TrainConfig(
            epochs=15,
            batch_size=128,
            learning_rate=0.1,
            weight_decay=5e-4,
            augment="crop_flip",
            crop_padding=2,  # 2 px at 16x16
            compute_dtype="float32",
        ),
        scale_down=ScaleDownConfig(
            target_compute=0.65,
            not_before=0.3,
            min_spacing=0.1,
            ramp=0.05,
            lr_boost=3.0,
            check_every=19,  # a quarter epoch (the experiment sets it from the data)
            mode="cache",
            cache_augment="flip",
        ),
    )
