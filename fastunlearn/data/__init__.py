"""Data sets: the embedded digits (the default), local torchvision data, feature files.

The bundled scikit-learn digits need no data directory or network; MNIST, Fashion-MNIST,
CIFAR-10/100 and SVHN are read from a local folder; extracted features live in safetensors.
Face-age image folders give decade-bin labels; forget sets come from a short spec.
"""

from .age_folder import AGE_LAYOUTS, AgeImageFolder, age_bins, subject_forget_split
from .digits import DigitsSplit, digits_images, load_digits_dataset
from .forget_sets import (
    FORGET_SPEC_FORMS,
    load_forget_indices,
    parse_forget_spec,
    save_forget_indices,
)
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
    "AGE_LAYOUTS",
    "AgeImageFolder",
    "age_bins",
    "subject_forget_split",
    "FORGET_SPEC_FORMS",
    "load_forget_indices",
    "parse_forget_spec",
    "save_forget_indices",
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
