"""Models: DIRL, its CPU-demo variant dirl_lite, and the UNet / DeepLabv3 baselines, all on ResNet-34.

from dirl.models import create_model, list_models
model = create_model("dirl", pretrained="resnet34-b627a593.pth")  # or a URL; random init without it
final, *attention = model(x)  # x: (B, 3, H, W) ImageNet-normalised, H and W multiples of 16
"""

from . import deeplabv3, dirl, unet  # noqa: F401,E402 - registers the models
from .registry import create_model, list_models, model_options, register_model
from .resnet import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TORCHVISION_RESNET34_URL,
    ResNet34Segmenter,
    load_resnet_layers,
    read_state_dict,
    torchvision_resnet34_state_dict,
)

__all__ = [
    "create_model",
    "list_models",
    "model_options",
    "register_model",
    "ResNet34Segmenter",
    "load_resnet_layers",
    "read_state_dict",
    "torchvision_resnet34_state_dict",
    "TORCHVISION_RESNET34_URL",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]
