"""The DeepLab model zoo. Models never import Lightning."""
from .backbones.base import Backbone, FeatureInfo
from .backbones.resnet import ResNetBackbone
from .deeplab import DeepLab, DeepLabV3, DeepLabV3Plus
from .convert import architectures_only, from_torchvision
from .layers import convert_sync_batchnorm
from .registry import ModelName, create_model, list_models

__all__ = [
    "Backbone", "FeatureInfo", "ResNetBackbone", "DeepLab", "DeepLabV3", "DeepLabV3Plus",
    "ModelName", "create_model", "list_models", "from_torchvision", "convert_sync_batchnorm",
    "architectures_only",
]
