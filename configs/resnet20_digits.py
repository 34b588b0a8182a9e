"""ResNet-20 at half width on the bundled 8x8 digits (offline, a minute on a CPU).

jnet2net train --config configs/resnet20_digits.py --out runs/t
jnet2net train --config configs/resnet20_digits.py --config.train.epochs=10 --out runs/t10
"""

from jnet2net.config import DataConfig, ModelSpec, RunConfig
from jnet2net.train import TrainConfig


def get_config() -> RunConfig:
    return RunConfig(
        model=ModelSpec(arch="resnet20", width_mult=0.5),
        data=DataConfig(dataset="digits"),
        # flipping digits changes their meaning: no augmentation
        train=TrainConfig(epochs=5, batch_size=128, learning_rate=0.1, augment="none"),
    )
