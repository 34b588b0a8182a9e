"""Model families (VGG, ResNet, ViT) whose fields are the architecture, and their presets."""

from jnet2net.models.config import model_config, model_from_config
from jnet2net.models.presets import (
    PRESETS,
    preset,
    resnet18,
    resnet20,
    resnet32,
    resnet34,
    resnet44,
    resnet50,
    resnet56,
    resnet101,
    resnet110,
    resnet152,
    vgg11,
    vgg13,
    vgg16,
    vgg19,
    vit_small,
    vit_tiny,
)
from jnet2net.models.resnet import ResNet
from jnet2net.models.vgg import VGG
from jnet2net.models.vit import ViT

__all__ = [
    "PRESETS",
    "ResNet",
    "VGG",
    "ViT",
    "model_config",
    "model_from_config",
    "preset",
    "resnet18",
    "resnet20",
    "resnet32",
    "resnet34",
    "resnet44",
    "resnet50",
    "resnet56",
    "resnet101",
    "resnet110",
    "resnet152",
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
    "vit_small",
    "vit_tiny",
]
