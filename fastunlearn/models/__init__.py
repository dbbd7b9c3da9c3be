"""Model zoo: feature extractors with a linear head (torchvision where it has the model)."""

from .zoo import (
    MODELS,
    FeatureClassifier,
    L2Normalize,
    build_model,
    mlp,
    resnet_cifar,
    small_cnn,
    svhn_dp_extractor,
)

__all__ = [
    "MODELS",
    "FeatureClassifier",
    "L2Normalize",
    "build_model",
    "mlp",
    "resnet_cifar",
    "small_cnn",
    "svhn_dp_extractor",
]
