"""Progressive growth on the CPU protocol: CIFAR-10 at 16x16, a 10k training subset; a
ResNet-20 at a quarter width doubles its widths after epochs 3 and 6.

    jnet2net train --config configs/resnet20_cifar10_progressive.py \\
        --config.data.data_dir=DIR --out runs/progressive

Its training settings are the CPU protocol's of ``experiments/progressive/run.py``, which
reads them with ``--config configs/resnet20_cifar10_progressive.py``.

The same run as
``jnet2net train --arch resnet20 --width-mult 0.25 --grow-at 3:widen=2x --grow-at 6:widen=2x
--dataset cifar10 --data-dir DIR --resolution 16 --train-subset 10000 --epochs 10
--crop-padding 2``.
"""

from jnet2net.config import DataConfig, ModelSpec, RunConfig
from jnet2net.train import Grow, TrainConfig


def get_config() -> RunConfig:
    return RunConfig(
        model=ModelSpec(arch="resnet20", width_mult=0.25),  # widths (4, 8, 16)
        data=DataConfig(dataset="cifar10", resolution=16, train_subset=10_000),
        # the CPU protocol of experiments/progressive: 2 px crop padding at 16x16
        train=TrainConfig(epochs=10, batch_size=128, learning_rate=0.1, crop_padding=2),
        growth=(
            Grow(3, widths=(8, 16, 32)),  # new units: fresh weights (the default)
            Grow(6, widths=(16, 32, 64)),
        ),
    )
