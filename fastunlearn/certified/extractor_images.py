"""The images ``fastunlearn extract`` trains an extractor on and extracts features from."""

from __future__ import annotations

import torch

__all__ = ["ScaledImages", "load_extractor_images"]


class ScaledImages(torch.utils.data.Dataset):
    """Images kept in their stored dtype (uint8 for the vision sets) and scaled per item."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, scale: float) -> None:
        self.images, self.labels, self.scale = images, labels, scale

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i].to(torch.float32) / self.scale, self.labels[i]


def load_extractor_images(dataset: str, data_dir: str,
                          svhn_extra: bool) -> dict[str, ScaledImages]:
    """Train and test images in [0, 1], in the row order the removal experiment uses.

    Args:
        dataset: ``digits`` (bundled, the split of ``remove --dataset digits``), ``MNIST``,
            ``SVHN`` or ``CIFAR10`` (torchvision files under ``data_dir``).
        data_dir: The folder of the vision data sets.
        svhn_extra: SVHN: train on train + extra (as the reference).

    Returns:
        ``{"train": ..., "test": ...}``.

    """
    if dataset == "digits":
        from ..data import load_digits_dataset

        # the same split (and row order) as `remove --dataset digits`; pixels 0..16
        split = load_digits_dataset(normalize=False, dtype=torch.float32)
        return {name: ScaledImages(X.reshape(-1, 1, 8, 8), y, 16.0) for name, X, y in (
            ("train", split.X_train, split.y_train), ("test", split.X_test, split.y_test))}
    from ..data import vision_tensors

    out = {}
    for name, train in (("train", True), ("test", False)):
        images, labels = vision_tensors(dataset, data_dir, train=train,
                                        svhn_extra=svhn_extra and train)
        out[name] = ScaledImages(images, labels, 255.0)
    return out
