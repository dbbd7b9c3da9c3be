"""Data sets: the embedded scikit-learn digits (the default everywhere, no download)."""

from .digits import DigitsSplit, digits_images, load_digits_dataset

__all__ = ["DigitsSplit", "digits_images", "load_digits_dataset"]
