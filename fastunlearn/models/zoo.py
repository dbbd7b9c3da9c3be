"""Model zoo: feature extractors with a linear head, built from torchvision where it has them.

Every model is a :class:`FeatureClassifier`: a ``backbone`` mapping an input batch to flat
features ``[B, feature_dim]`` and a linear ``head`` giving logits. Feature extraction for
certified removal (:func:`fastunlearn.certified.extractors.extract_features`) runs only the
backbone. No weights are ever downloaded (``weights=None``).

Models meant for DP-SGD (``svhn_dp``, ``small_cnn``, ``mlp``, and ``resnet*`` with
``norm="group"``) contain no BatchNorm, which mixes examples of a batch and so has no
per-example gradient; Opacus rejects it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

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


class L2Normalize(nn.Module):
    """Scale each row of a ``[B, f]`` batch to unit L2 norm (zero rows stay zero)."""

    def forward(self, x: Tensor) -> Tensor:
        """Return ``x / max(||x_i||, 1e-12)`` row-wise."""
        return F.normalize(x, dim=1)


class FeatureClassifier(nn.Module):
    """A feature extractor followed by a linear classifier.

    Args:
        backbone: Module mapping inputs to flat features ``[B, feature_dim]``.
        feature_dim: Width of the backbone's output.
        num_classes: Number of logits of the linear head.

    Attributes:
        backbone: The feature extractor.
        head: ``nn.Linear(feature_dim, num_classes)``.
        feature_dim: Width of the features.

    """

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        _check_positive_int(feature_dim, "feature_dim")
        _check_positive_int(num_classes, "num_classes")
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, num_classes)
        self.feature_dim = int(feature_dim)

    def forward(self, x: Tensor) -> Tensor:
        """Return logits ``[B, num_classes]``."""
        return self.head(self.backbone(x))

    def extract(self, x: Tensor) -> Tensor:
        """Return features ``[B, feature_dim]`` (the backbone's output)."""
        return self.backbone(x)


def _check_positive_int(value: object, arg: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"'{arg}' must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"'{arg}' must be >= 1, got {value}")
    return value


def _norm_factory(norm: str | None, arg: str = "norm") -> Callable[[int], nn.Module] | None:
    """Normalisation layer for ``c`` channels: BatchNorm, GroupNorm, or none."""
    if norm is None or norm == "none":
        return None
    if norm == "batch":
        return nn.BatchNorm2d
    if norm == "group":
        # 32 groups as in Wu & He (2018) where the width allows; always a divisor of c
        return lambda c: nn.GroupNorm(next(g for g in (32, 16, 8, 4, 2, 1) if c % g == 0), c)
    raise ValueError(f"'{arg}' must be 'batch', 'group' or None, got {norm!r}")


def svhn_dp_extractor(
    num_filters: int = 64,
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    side: int = 32,
    kernel_size: int = 5,
    norm: str | None = None,
    normalize: bool = True,
) -> FeatureClassifier:
    """Build the reference's DP feature extractor for SVHN (Guo et al. 2020).

    As in ``train_svhn.py``: two ``kernel_size`` convolutions (stride 1, no padding) with
    ``num_filters`` filters, each followed by ReLU and 2x2 max pooling:
    32 -> 28 -> 14 -> 10 -> 5, so ``5 * 5 * 64 = 1600`` features for SVHN, then a linear
    head (the reference's ``FastGradMLP([1600, 10])``). No BatchNorm, so Opacus accepts it.

    Args:
        num_filters: Filters of both convolutions (reference ``--num-filters`` 64).
        num_classes: Logits of the head.
        in_channels: Input channels (3 for SVHN/CIFAR, 1 for MNIST).
        side: Input height = width (28 for MNIST gives 4 * 4 * 64 = 1024 features).
        kernel_size: Convolution size (5 in the reference).
        norm: ``None`` (reference) or ``"group"`` (GroupNorm after each convolution).
        normalize: Scale the features to unit L2 norm, the reference's ``--normalize``
            flag, used in its README command for the published DP extractor.

    Returns:
        A :class:`FeatureClassifier` with ``feature_dim = num_filters * s * s``,
        ``s = ((side - k + 1) // 2 - k + 1) // 2``.

    Raises:
        ValueError: If a size is not positive, ``norm`` is ``"batch"`` or unknown, or
            ``side`` is too small for two convolutions and poolings.

    """
    for value, arg in (
        (num_filters, "num_filters"),
        (num_classes, "num_classes"),
        (in_channels, "in_channels"),
        (side, "side"),
        (kernel_size, "kernel_size"),
    ):
        _check_positive_int(value, arg)
    if norm == "batch":
        raise ValueError("'norm' must be None or 'group' for a DP extractor, got 'batch'")
    make_norm = _norm_factory(norm)
    spatial = side
    for _ in range(2):
        spatial = (spatial - kernel_size + 1) // 2
    if spatial < 1:
        raise ValueError(
            f"'side' {side} is too small for two {kernel_size}x{kernel_size} convolutions "
            f"each followed by 2x2 pooling"
        )
    layers: list[nn.Module] = []
    channels = in_channels
    for _ in range(2):
        layers.append(nn.Conv2d(channels, num_filters, kernel_size))
        if make_norm is not None:
            layers.append(make_norm(num_filters))
        layers += [nn.ReLU(), nn.MaxPool2d(2)]
        channels = num_filters
    layers.append(nn.Flatten())
    if normalize:
        layers.append(L2Normalize())
    return FeatureClassifier(nn.Sequential(*layers), num_filters * spatial * spatial, num_classes)


def resnet_cifar(
    depth: int = 18, num_classes: int = 10, *, in_channels: int = 3, norm: str = "batch"
) -> FeatureClassifier:
    """Build a torchvision ResNet-18/34 with the usual CIFAR stem, randomly initialised.

    ImageNet's stem (7x7 stride-2 convolution and max pooling) shrinks a 32x32 image to 8x8
    before the first block; for 32x32 inputs it is replaced by a 3x3 stride-1 convolution
    and no pooling. Features are the 512-d global-average-pooled output of the last stage.

    Args:
        depth: 18 or 34 (basic blocks; the adversarial extractor of the issue uses 34).
        num_classes: Logits of the head.
        in_channels: Input channels.
        norm: ``"batch"`` (torchvision's default) or ``"group"`` (GroupNorm, usable with
            DP-SGD).

    Returns:
        A :class:`FeatureClassifier` with ``feature_dim = 512``.

    Raises:
        ValueError: If ``depth`` is not 18 or 34 or ``norm`` is unknown.

    """
    import torchvision.models as tvm

    if depth not in (18, 34):
        raise ValueError(f"'depth' must be 18 or 34, got {depth!r}")
    _check_positive_int(num_classes, "num_classes")
    _check_positive_int(in_channels, "in_channels")
    make_norm = _norm_factory(norm)
    if make_norm is None:
        raise ValueError("'norm' must be 'batch' or 'group' for a ResNet, got None")
    builder = tvm.resnet18 if depth == 18 else tvm.resnet34
    net = builder(weights=None, norm_layer=make_norm)
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    # torchvision's initialisation of every other convolution
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.maxpool = nn.Identity()
    feature_dim = net.fc.in_features
    net.fc = nn.Identity()
    return FeatureClassifier(net, feature_dim, num_classes)


def small_cnn(
    in_channels: int = 1, num_classes: int = 10, side: int = 8, *, width: int = 16
) -> FeatureClassifier:
    """Build a two-block CNN for small digits (8x8 scikit-learn digits, 28x28 MNIST).

    ``conv3x3(width) -> ReLU -> maxpool2 -> conv3x3(2 width) -> ReLU -> maxpool2 ->
    flatten``: ``2 * width * (side // 4)**2`` features (128 for 8x8 digits). No BatchNorm,
    so it also trains under DP-SGD.

    Args:
        in_channels: Input channels.
        num_classes: Logits of the head.
        side: Input height = width, at least 4.
        width: Filters of the first convolution.

    Returns:
        A :class:`FeatureClassifier`.

    Raises:
        ValueError: If a size is not positive or ``side < 4``.

    """
    for value, arg in (
        (in_channels, "in_channels"),
        (num_classes, "num_classes"),
        (width, "width"),
    ):
        _check_positive_int(value, arg)
    _check_positive_int(side, "side")
    if side < 4:
        raise ValueError(f"'side' must be >= 4 (two 2x2 poolings), got {side}")
    backbone = nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
    )
    return FeatureClassifier(backbone, 2 * width * (side // 4) ** 2, num_classes)


def mlp(
    in_features: int = 64, num_classes: int = 10, hidden: Sequence[int] = (128,)
) -> FeatureClassifier:
    """Build a fully connected network: flatten, then ``Linear -> ReLU`` per hidden width.

    Args:
        in_features: Input size after flattening (64 for 8x8 digits).
        num_classes: Logits of the head.
        hidden: Hidden widths; the last is the feature dimension. Empty: the features are
            the flattened inputs (the model is then multinomial logistic regression).

    Returns:
        A :class:`FeatureClassifier`.

    Raises:
        ValueError: If a size is not positive.

    """
    _check_positive_int(in_features, "in_features")
    _check_positive_int(num_classes, "num_classes")
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for h in hidden:
        _check_positive_int(h, "hidden")
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    return FeatureClassifier(nn.Sequential(*layers), width, num_classes)


#: Registry used by :func:`build_model` (and the CLI's ``--model``).
MODELS: dict[str, Callable[..., FeatureClassifier]] = {
    "svhn_dp": svhn_dp_extractor,
    "resnet18": lambda **kw: resnet_cifar(depth=18, **kw),
    "resnet34": lambda **kw: resnet_cifar(depth=34, **kw),
    "small_cnn": small_cnn,
    "mlp": mlp,
}


def build_model(name: str, **kwargs: Any) -> FeatureClassifier:
    """Build a model of the zoo by name.

    Args:
        name: One of :data:`MODELS`: ``"svhn_dp"``, ``"resnet18"``, ``"resnet34"``,
            ``"small_cnn"``, ``"mlp"``.
        **kwargs: Keyword arguments of the builder (e.g. ``num_classes=10``).

    Returns:
        A freshly initialised :class:`FeatureClassifier` (use ``torch.manual_seed`` first
        for reproducible weights).

    Raises:
        ValueError: If ``name`` is unknown, or from the builder.
        TypeError: If a keyword is not accepted by the builder.

    """
    if name not in MODELS:
        raise ValueError(f"'name' must be one of {sorted(MODELS)}, got {name!r}")
    return MODELS[name](**kwargs)
