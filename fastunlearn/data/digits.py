"""The embedded default data set: scikit-learn's bundled handwritten digits.

scikit-learn ships 1797 real 8x8 grey-scale digit images (pixel values 0..16, ten classes,
about 180 per class) inside the package, so every demo, CLI command and test can run with no
data directory and no network. ``binary=(3, 8)`` gives the small analogue of the MNIST
"3 vs 8" task used in the certified-removal literature.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .._equality import dataclass_eq
from .._numbers import check_flag, check_fraction, check_seed, is_integer
from .._repr import fields_repr

__all__ = ["MAX_DIGITS_SEED", "DigitsSplit", "digits_images", "load_digits_dataset"]

#: Largest seed of the digits split: digit ``c`` seeds its generator with ``seed * 16 + c``,
#: which must stay a 64-bit generator seed.
MAX_DIGITS_SEED = 2**60 - 1

#: Largest pixel value in the bundled digits (4-bit intensities).
_PIXEL_MAX = 16.0


@dataclass(frozen=True, repr=False)
class DigitsSplit:
    """A deterministic train/test split of the digits.

    Attributes:
        X_train: Features ``[n_train, 64]``.
        y_train: Labels ``[n_train]`` (int64): ``0..9`` for all classes, ``{0, 1}`` for a
            binary task.
        X_test: Features ``[n_test, 64]``.
        y_test: Labels ``[n_test]`` (int64).
        classes: The original digit of each label: ``classes[label] == digit``.

    """

    X_train: Tensor
    y_train: Tensor
    X_test: Tensor
    y_test: Tensor
    classes: tuple[int, ...]

    __eq__ = dataclass_eq  # tensors compared by value (the generated one raises)
    __repr__ = fields_repr  # bounded: long tensors and lists are summarised

    @property
    def n_features(self) -> int:
        """Number of features (64)."""
        return int(self.X_train.shape[1])

    @property
    def n_classes(self) -> int:
        """Number of labels (2 for a binary task, 10 otherwise)."""
        return len(self.classes)


@functools.lru_cache(maxsize=1)
def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    """Load the bundled images once: float64 ``[1797, 64]`` and int64 labels, read-only."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    data = np.ascontiguousarray(bunch.data, dtype=np.float64)
    target = np.ascontiguousarray(bunch.target, dtype=np.int64)
    data.setflags(write=False)
    target.setflags(write=False)
    return data, target


def _check_dtype(dtype: torch.dtype) -> None:
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"'dtype' must be a torch.dtype, got {type(dtype).__name__}")
    if not dtype.is_floating_point:
        raise ValueError(f"'dtype' must be a floating-point dtype, got {dtype}")


def _check_binary(binary: object) -> tuple[int, int] | None:
    if binary is None:
        return None
    if not isinstance(binary, (tuple, list)):
        raise TypeError(f"'binary' must be a pair of digits like (3, 8), got "
                        f"{type(binary).__name__} {binary!r}")
    if len(binary) != 2:
        raise ValueError(f"'binary' must be a pair of digits like (3, 8), got {binary!r}")
    a, b = binary
    for digit in (a, b):
        if not is_integer(digit):  # a bool or a float is not a digit
            raise TypeError(f"'binary' must hold two int digits, got {binary!r}")
        if not 0 <= digit <= 9:
            raise ValueError(f"'binary' digits must be in 0..9, got {binary!r}")
    if a == b:
        raise ValueError(f"'binary' digits must differ, got {binary!r}")
    return int(a), int(b)


def _test_rows(test_fraction: float, n_rows: int) -> int:
    """Test rows of a class of ``n_rows``: ``round(test_fraction * n_rows)``."""
    return int(round(test_fraction * n_rows))


def _check_split(digits: np.ndarray, test_fraction: float) -> None:
    """Refuse a ``test_fraction`` that leaves some class without a test or a training row.

    Every class needs both: a class missing from the test part has no accuracy, and one
    missing from the training part cannot be learnt. The fraction is not moved to the
    nearest usable one (which would silently give another split than asked for).
    """
    counts = np.bincount(digits)
    counts = counts[counts > 0]
    if all(1 <= _test_rows(test_fraction, int(n)) <= n - 1 for n in counts):
        return
    smallest = int(counts.min())
    raise ValueError(
        f"'test_fraction' {test_fraction!r} leaves a class without a test or a training "
        f"row: round(test_fraction * rows of the class) must be between 1 and rows - 1 for "
        f"every class, and the smallest class here has {smallest} rows (so test_fraction "
        f"must be in about ({0.5 / smallest:.4g}, {1 - 0.5 / smallest:.4g}))")


def _stratified_test_mask(digits: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask choosing ``round(test_fraction * n_c)`` test rows of every digit c.

    Stratifying keeps the class balance of both parts equal to the whole set's. Each digit
    draws from its own seeded ``torch.Generator``, so the split is identical on every machine
    and a binary task's split is exactly the matching subset of the ten-class split.
    """
    mask = np.zeros(digits.shape[0], dtype=bool)
    for c in np.unique(digits):
        rows = np.flatnonzero(digits == c)
        n_test = _test_rows(test_fraction, rows.shape[0])
        gen = torch.Generator().manual_seed(seed * 16 + int(c))
        perm = torch.randperm(rows.shape[0], generator=gen).numpy()
        mask[rows[perm[:n_test]]] = True
    return mask


def load_digits_dataset(
    *,
    binary: tuple[int, int] | None = None,
    normalize: bool = True,
    dtype: torch.dtype = torch.float64,
    test_fraction: float | np.floating = 0.2,
    seed: int | np.integer = 0,
) -> DigitsSplit:
    """Load the bundled digits as flat feature vectors with a stratified train/test split.

    Args:
        binary: ``None`` for all ten classes (labels ``0..9``), or a pair of distinct digits
            ``(a, b)``: only those images are kept; ``a`` is the positive class (label 1)
            and ``b`` the negative one (label 0), as in the certified-removal reference's
            MNIST 3-vs-8 (3 -> +1) and in :func:`fastunlearn.data.load_features_or_pixels`.
            ``classes[label]`` is the digit of a label, so ``classes == (b, a)``.
        normalize: If true, every row is scaled to unit L2 norm (``||x_i||_2 = 1``; the
            digits have no all-zero image), which is the ``||x|| <= 1`` assumption of the
            certified-removal bounds (Guo et al. 2020). If false, the raw pixel values
            ``0..16`` are returned unscaled.
        dtype: Floating-point dtype of the features (labels are always int64).
        test_fraction: Fraction of each class put in the test part, in ``(0, 1)``
            (``round(test_fraction * rows)`` rows of each class); every class must get at
            least one test and one training row.
        seed: Seed of the split; the same seed always gives the same split.

    Returns:
        A :class:`DigitsSplit` with ``X_*`` ``[n, 64]`` and ``y_*`` ``[n]`` on the CPU.

    Raises:
        ValueError: If ``binary`` is not two distinct digits in 0..9, ``test_fraction`` is
            not in (0, 1) or leaves some class without a test or a training row (outside
            about (0.0029, 0.9971): the smallest class has 174 images), ``seed``
            is outside ``0..2**60-1`` or ``dtype`` is not floating point.
        TypeError: If ``binary`` is not a tuple or list of two ints, ``normalize`` is not a
            bool, ``test_fraction`` is not a number, ``dtype`` is not a ``torch.dtype`` or
            ``seed`` is not an int.

    Example:
        >>> split = load_digits_dataset(binary=(3, 8))
        >>> split.classes, sorted(set(split.y_train.tolist()))
        ((8, 3), [0, 1])

    """
    pair = _check_binary(binary)
    normalize = check_flag("normalize", normalize)
    _check_dtype(dtype)
    test_fraction = check_fraction("test_fraction", test_fraction)
    seed = check_seed("seed", seed, MAX_DIGITS_SEED)  # each class seeds seed * 16 + class

    data, target = _raw_digits()
    if pair is None:
        features, digits, labels, classes = data, target, target, tuple(range(10))
    else:
        keep = (target == pair[0]) | (target == pair[1])
        features, digits = data[keep], target[keep]
        labels = (digits == pair[0]).astype(np.int64)
        classes = (pair[1], pair[0])
    _check_split(digits, float(test_fraction))
    if normalize:
        norms = np.linalg.norm(features, axis=1, keepdims=True)
        features = features / np.where(norms > 0, norms, 1.0)

    test = _stratified_test_mask(digits, float(test_fraction), int(seed))
    X = torch.from_numpy(np.array(features, dtype=np.float64)).to(dtype)
    y = torch.from_numpy(np.array(labels, dtype=np.int64))
    test_t = torch.from_numpy(test)
    return DigitsSplit(
        X_train=X[~test_t].contiguous(),
        y_train=y[~test_t].contiguous(),
        X_test=X[test_t].contiguous(),
        y_test=y[test_t].contiguous(),
        classes=classes,
    )


def digits_images(*, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """All 1797 digits as images for convolutional models.

    Args:
        dtype: Floating-point dtype of the images.

    Returns:
        ``(images, labels)``: images ``[1797, 1, 8, 8]`` with pixel values scaled to
        ``[0, 1]`` (divided by 16) and int64 labels ``[1797]`` in ``0..9``, in the bundled
        order (unshuffled).

    Raises:
        ValueError: If ``dtype`` is not floating point.
        TypeError: If ``dtype`` is not a ``torch.dtype``.

    """
    _check_dtype(dtype)
    data, target = _raw_digits()
    images = torch.from_numpy(np.array(data, dtype=np.float64) / _PIXEL_MAX).to(dtype)
    return images.reshape(-1, 1, 8, 8).contiguous(), torch.from_numpy(np.array(target))
