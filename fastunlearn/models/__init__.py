"""Model zoo: feature extractors with a linear head (torchvision where it has the model)."""

from .zoo import (
    MODELS,
    FeatureClassifier,
    L2Normalize,
    allcnn,
    build_model,
    cifar_cnn,
    mlp,
    mobilenet_v2,
    resnet9,
    resnet18,
    resnet34,
    resnet_cifar,
    small_cnn,
    svhn_dp_extractor,
)

__all__ = [
    "MODELS",
    "FeatureClassifier",
    "L2Normalize",
    "allcnn",
    "build_model",
    "cifar_cnn",
    "mlp",
    "mobilenet_v2",
    "resnet9",
    "resnet18",
    "resnet34",
    "resnet_cifar",
    "small_cnn",
    "svhn_dp_extractor",
]
