"""Data sets: the embedded digits (the default), local torchvision data, feature files.

The bundled scikit-learn digits need no data directory or network; MNIST, Fashion-MNIST,
CIFAR-10/100 and SVHN are read from a local folder; extracted features live in safetensors.
"""

from .digits import DigitsSplit, digits_images, load_digits_dataset
from .vision import (
    VISION_DATASETS,
    FeatureSplit,
    canonical_dataset_name,
    extracted_features_path,
    load_features,
    load_features_or_pixels,
    load_vision_dataset,
    save_features,
    vision_tensors,
)

__all__ = [
    "DigitsSplit",
    "digits_images",
    "load_digits_dataset",
    "VISION_DATASETS",
    "FeatureSplit",
    "canonical_dataset_name",
    "extracted_features_path",
    "load_features",
    "load_features_or_pixels",
    "load_vision_dataset",
    "save_features",
    "vision_tensors",
]
