"""Model zoo: feature extractors with a linear head, built from torchvision where it has them.

Every model is a :class:`FeatureClassifier`: a ``backbone`` mapping an input batch to flat
features ``[B, feature_dim]`` and a linear ``head`` giving logits. Feature extraction for
certified removal (:func:`fastunlearn.certified.extractors.extract_features`) runs only the
backbone. No weights are ever downloaded (``weights=None``).

Models meant for DP-SGD (``svhn_dp``, ``small_cnn``, ``mlp``, and ``resnet*``, ``resnet9``,
``allcnn``, ``mobilenet_v2`` with ``norm="group"`` or ``None``) contain no BatchNorm, which
mixes examples of a batch and so has no per-example gradient; Opacus rejects it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence, Set
from typing import TYPE_CHECKING, Any, cast

import torch.nn.functional as F
from torch import Tensor, nn

from .._numbers import as_float, as_int, check_flag, check_int, is_finite, is_integer, is_real

if TYPE_CHECKING:
    import numpy as np

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

    Raises:
        ValueError: If ``feature_dim`` or ``num_classes`` is not positive.
        TypeError: If ``backbone`` is not an ``nn.Module``, or ``feature_dim`` or
            ``num_classes`` is not an int (a bool is not one).

    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int | np.integer,
        num_classes: int | np.integer,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):  # a plain function would not be trained
            raise TypeError(f"'backbone' must be an nn.Module, got {type(backbone).__name__}")
        feature_dim = check_int("feature_dim", feature_dim, 1)
        num_classes = check_int("num_classes", num_classes, 1)
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, num_classes)
        self.feature_dim = int(feature_dim)

    def forward(self, x: Tensor) -> Tensor:
        """Return logits ``[B, num_classes]``."""
        return self.head(self.backbone(x))

    def extract(self, x: Tensor) -> Tensor:
        """Return features ``[B, feature_dim]`` (the backbone's output)."""
        return self.backbone(x)


def _group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm for ``channels``: 32 groups as in Wu & He (2018) where the width allows.

    The number of groups is always a divisor of ``channels``. A module-level function, not
    a lambda: torchvision's ResNet keeps its norm factory, and a model holding a lambda
    cannot be pickled (``torch.save(model)``, sending it to another process).
    """
    return nn.GroupNorm(next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0), channels)


def _norm_factory(norm: str | None, arg: str = "norm") -> Callable[[int], nn.Module] | None:
    """Normalisation layer for ``c`` channels: BatchNorm, GroupNorm, or none."""
    if norm is None or norm == "none":
        return None
    if norm == "batch":
        return nn.BatchNorm2d
    if norm == "group":
        return _group_norm
    raise ValueError(f"'{arg}' must be 'batch', 'group' or None, got {norm!r}")


def svhn_dp_extractor(
    num_filters: int | np.integer = 64,
    *,
    num_classes: int | np.integer = 10,
    in_channels: int | np.integer = 3,
    side: int | np.integer = 32,
    kernel_size: int | np.integer = 5,
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
        TypeError: If a size is not an int (a bool is not one) or ``normalize`` is not a
            bool.

    """
    normalize = check_flag("normalize", normalize)
    for value, arg in (
        (num_filters, "num_filters"),
        (num_classes, "num_classes"),
        (in_channels, "in_channels"),
        (side, "side"),
        (kernel_size, "kernel_size"),
    ):
        check_int(arg, value, 1)
    num_filters, num_classes, in_channels, side, kernel_size = (
        as_int(v) for v in (num_filters, num_classes, in_channels, side, kernel_size)
    )  # NumPy ints as ints
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
    depth: int | np.integer = 18,
    num_classes: int | np.integer = 10,
    *,
    in_channels: int | np.integer = 3,
    norm: str = "batch",
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
        ValueError: If ``depth`` is not 18 or 34, ``norm`` is unknown or None, or a size
            is not positive.
        TypeError: If ``depth``, ``num_classes`` or ``in_channels`` is not an int (a bool
            is not one).

    """
    import torchvision.models as tvm

    if not is_integer(depth):  # a bool, a float or a string is not a depth
        raise TypeError(f"'depth' must be the int 18 or 34, got {type(depth).__name__} {depth!r}")
    if depth not in (18, 34):
        raise ValueError(f"'depth' must be 18 or 34, got {depth!r}")
    depth = as_int(depth)
    num_classes = check_int("num_classes", num_classes, 1)
    in_channels = check_int("in_channels", in_channels, 1)
    make_norm = _norm_factory(norm)
    if make_norm is None:
        raise ValueError(f"'norm' must be 'batch' or 'group' for a ResNet, got {norm!r}")
    from ._resnet_blocks import use_out_of_place_blocks

    builder = tvm.resnet18 if depth == 18 else tvm.resnet34
    # blocks that add their shortcut out of place: DP-SGD's backward hooks forbid in-place
    net = use_out_of_place_blocks(builder(weights=None, norm_layer=make_norm))
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    # torchvision's initialisation of every other convolution
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.maxpool = nn.Identity()
    feature_dim = cast(nn.Linear, net.fc).in_features
    net.fc = nn.Identity()
    return FeatureClassifier(net, feature_dim, num_classes)


def resnet18(
    num_classes: int | np.integer = 10, *, in_channels: int | np.integer = 3, norm: str = "batch"
) -> FeatureClassifier:
    """ResNet-18 with the CIFAR stem: :func:`resnet_cifar` with ``depth=18``.

    A named function (not a lambda) so that its signature shows ``in_channels``: the
    harness passes the data's channels to every builder that declares them.

    Raises:
        ValueError: As :func:`resnet_cifar` (``norm`` unknown or None, a size not positive).
        TypeError: As :func:`resnet_cifar` (a size not an int).

    """
    return resnet_cifar(18, num_classes, in_channels=in_channels, norm=norm)


def resnet34(
    num_classes: int | np.integer = 10, *, in_channels: int | np.integer = 3, norm: str = "batch"
) -> FeatureClassifier:
    """ResNet-34 with the CIFAR stem: :func:`resnet_cifar` with ``depth=34``.

    A named function for the same reason as :func:`resnet18`.

    Raises:
        ValueError: As :func:`resnet_cifar` (``norm`` unknown or None, a size not positive).
        TypeError: As :func:`resnet_cifar` (a size not an int).

    """
    return resnet_cifar(34, num_classes, in_channels=in_channels, norm=norm)


def small_cnn(
    in_channels: int | np.integer = 1,
    num_classes: int | np.integer = 10,
    side: int | np.integer = 8,
    *,
    width: int | np.integer = 16,
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
        TypeError: If a size is not an int (a bool is not one).

    """
    for value, arg in (
        (in_channels, "in_channels"),
        (num_classes, "num_classes"),
        (width, "width"),
    ):
        check_int(arg, value, 1)
    in_channels, num_classes, width = (
        as_int(v) for v in (in_channels, num_classes, width)
    )  # NumPy ints as ints
    side = check_int("side", side, 1)
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
    in_features: int | np.integer = 64,
    num_classes: int | np.integer = 10,
    hidden: Sequence[int] = (128,),
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
        TypeError: If ``hidden`` is not a sequence (a set or a dict has no order of its
            own, a string is not one of ints), or a size is not an int (a bool is not one).
        ValueError: If a size is not positive.

    """
    in_features = check_int("in_features", in_features, 1)
    num_classes = check_int("num_classes", num_classes, 1)
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    try:
        if isinstance(hidden, (str, bytes, Set, Mapping)):  # {64, 9} iterates as 64, 9
            raise TypeError
        widths = tuple(hidden)
    except TypeError:
        raise TypeError(
            f"'hidden' must be a sequence of ints, got {type(hidden).__name__}"
        ) from None
    for h in widths:
        h = check_int("hidden", h, 1)
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    return FeatureClassifier(nn.Sequential(*layers), width, num_classes)


def _conv_block(
    c_in: int, c_out: int, make_norm: Callable[[int], nn.Module] | None, **conv: Any
) -> list[nn.Module]:
    """``Conv2d -> [norm] -> ReLU`` (no convolution bias when a norm layer follows)."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, bias=make_norm is None, **conv)]
    if make_norm is not None:
        layers.append(make_norm(c_out))
    layers.append(nn.ReLU(inplace=True))
    return layers


class _Residual(nn.Module):
    """``x + body(x)``."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: Tensor) -> Tensor:
        """Return ``x + body(x)``."""
        return x + self.body(x)


def resnet9(
    num_classes: int | np.integer = 10,
    *,
    in_channels: int | np.integer = 3,
    width: int | np.integer = 64,
    norm: str | None = "batch",
) -> FeatureClassifier:
    """Build ResNet-9, the small residual network of Page's fast CIFAR-10 training (2018).

    ``prep: conv(w)``; ``layer1: conv(2w) -> maxpool2 -> + res(2 x conv(2w))``;
    ``layer2: conv(4w) -> maxpool2``; ``layer3: conv(8w) -> maxpool2 -> + res(2 x conv(8w))``;
    then global max pooling. Every ``conv`` is a 3x3 convolution followed by the norm layer
    and ReLU. With ``w = 64``: 512 features and 6,573,130 parameters for 10 classes (the
    original's head has no bias and scales the logits by 1/8, a training-recipe detail left
    to the optimiser here).

    Args:
        num_classes: Logits of the head.
        in_channels: Input channels.
        width: Filters of the first convolution (64 in the original).
        norm: ``"batch"`` (original), ``"group"`` (DP-SGD) or ``None``.

    Returns:
        A :class:`FeatureClassifier` with ``feature_dim = 8 * width``. Global pooling makes it
        accept any input of side >= 8.

    Raises:
        ValueError: If a size is not positive or ``norm`` is unknown.
        TypeError: If a size is not an int (a bool is not one).

    """
    for value, arg in (
        (num_classes, "num_classes"),
        (in_channels, "in_channels"),
        (width, "width"),
    ):
        check_int(arg, value, 1)
    num_classes, in_channels, width = (
        as_int(v) for v in (num_classes, in_channels, width)
    )  # NumPy ints as ints
    make_norm = _norm_factory(norm)
    w = width

    def conv(c_in: int, c_out: int) -> list[nn.Module]:
        return _conv_block(c_in, c_out, make_norm, kernel_size=3, padding=1)

    backbone = nn.Sequential(
        *conv(in_channels, w),
        *conv(w, 2 * w),
        nn.MaxPool2d(2),
        _Residual(nn.Sequential(*conv(2 * w, 2 * w), *conv(2 * w, 2 * w))),
        *conv(2 * w, 4 * w),
        nn.MaxPool2d(2),
        *conv(4 * w, 8 * w),
        nn.MaxPool2d(2),
        _Residual(nn.Sequential(*conv(8 * w, 8 * w), *conv(8 * w, 8 * w))),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
    )
    return FeatureClassifier(backbone, 8 * w, num_classes)


def allcnn(
    num_classes: int | np.integer = 10,
    *,
    in_channels: int | np.integer = 3,
    width: int | np.integer = 96,
    norm: str | None = "batch",
    dropout: bool = False,
) -> FeatureClassifier:
    """Build All-CNN-C (Springenberg et al., ICLR 2015 workshop), used in unlearning papers.

    Three stages of 3x3 convolutions with ReLU, no pooling layers (strided convolutions
    downsample): ``conv(w), conv(w), conv(w, stride 2)``; ``conv(2w), conv(2w),
    conv(2w, stride 2)``; ``conv(2w, 3x3 unpadded), conv(2w, 1x1)``; then global average
    pooling. The paper's last layer, a 1x1 convolution to the classes followed by global
    averaging, equals global averaging followed by the linear head used here (both are
    linear), so with ``norm=None`` the model is the paper's (1,369,738 parameters for 10
    classes). ``norm="batch"`` adds BatchNorm after each convolution, the variant used by
    Golatkar et al. (2020) for forgetting experiments.

    Args:
        num_classes: Logits of the head.
        in_channels: Input channels.
        width: Filters of the first stage (96 in the paper); the later stages use ``2 w``.
        norm: ``"batch"``, ``"group"`` (DP-SGD) or ``None`` (the paper).
        dropout: The paper's dropout: 20 % on the input, 50 % after each strided stage.

    Returns:
        A :class:`FeatureClassifier` with ``feature_dim = 2 * width``; inputs of side >= 9
        (32 for CIFAR: 32 -> 16 -> 8 -> 6 -> global average; 9 -> 5 -> 3 -> 1).

    Raises:
        ValueError: If a size is not positive or ``norm`` is unknown.
        TypeError: If ``dropout`` is not a bool, or a size is not an int (a bool is not
            one).

    """
    for value, arg in (
        (num_classes, "num_classes"),
        (in_channels, "in_channels"),
        (width, "width"),
    ):
        check_int(arg, value, 1)
    num_classes, in_channels, width = (
        as_int(v) for v in (num_classes, in_channels, width)
    )  # NumPy ints as ints
    dropout = check_flag("dropout", dropout)
    make_norm = _norm_factory(norm)
    w1, w2 = width, 2 * width

    def conv(c_in: int, c_out: int, kernel_size: int = 3, **kw: Any) -> list[nn.Module]:
        return _conv_block(c_in, c_out, make_norm, kernel_size=kernel_size, **kw)

    layers: list[nn.Module] = [nn.Dropout(0.2)] if dropout else []
    layers += conv(in_channels, w1, padding=1) + conv(w1, w1, padding=1)
    layers += conv(w1, w1, stride=2, padding=1)
    layers += [nn.Dropout(0.5)] if dropout else []
    layers += conv(w1, w2, padding=1) + conv(w2, w2, padding=1)
    layers += conv(w2, w2, stride=2, padding=1)
    layers += [nn.Dropout(0.5)] if dropout else []
    layers += conv(w2, w2) + conv(w2, w2, kernel_size=1)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return FeatureClassifier(nn.Sequential(*layers), w2, num_classes)


def cifar_cnn(
    num_classes: int | np.integer = 10,
    *,
    in_channels: int | np.integer = 3,
    side: int | np.integer = 32,
    filters: int | np.integer = 128,
) -> FeatureClassifier:
    """Build the 1.8M-parameter CNN of the influence-unlearning reference (Warnecke et al.).

    The reference's ``VGG_CIFAR10`` (Keras) for CIFAR-10 label poisoning: three blocks of
    ``[conv3x3(128) -> ReLU -> BN -> conv3x3(128) -> ReLU -> BN -> maxpool2 -> dropout]``
    (dropout 0.1, 0.1, 0.2; "same" padding; He-uniform initialisation), flatten
    (``4 * 4 * 128 = 2048`` for 32x32), ``Linear(512) -> ReLU -> BN`` (He-uniform), and the
    linear head (Glorot-uniform, Keras's default). 1,798,282 trainable parameters for 10
    classes, the reference's count. BatchNorm uses Keras's settings (eps 1e-3, running
    averages updated with weight 0.01); biases start at zero as in Keras. Keras flattens in
    height-width-channel order, so weights converted from the reference need their
    flattened axis permuted.

    Args:
        num_classes: Logits of the head.
        in_channels: Input channels.
        side: Input height = width, at least 8 (three 2x2 poolings).
        filters: Filters of every convolution (128 in the reference).

    Returns:
        A :class:`FeatureClassifier` with ``feature_dim = 512``.

    Raises:
        ValueError: If a size is not positive or ``side < 8``.
        TypeError: If a size is not an int (a bool is not one).

    """
    for value, arg in (
        (num_classes, "num_classes"),
        (in_channels, "in_channels"),
        (side, "side"),
        (filters, "filters"),
    ):
        check_int(arg, value, 1)
    num_classes, in_channels, side, filters = (
        as_int(v) for v in (num_classes, in_channels, side, filters)
    )  # NumPy ints as ints
    if side < 8:
        raise ValueError(f"'side' must be >= 8 (three 2x2 poolings), got {side}")

    def bn(c: int, kind: type[nn.Module] = nn.BatchNorm2d) -> nn.Module:
        return kind(c, eps=1e-3, momentum=0.01)

    layers: list[nn.Module] = []
    channels = in_channels
    for p in (0.1, 0.1, 0.2):
        for _ in range(2):
            layers += [nn.Conv2d(channels, filters, 3, padding=1), nn.ReLU(inplace=True)]
            layers.append(bn(filters))
            channels = filters
        layers += [nn.MaxPool2d(2), nn.Dropout(p)]
    flat = filters * (side // 8) ** 2
    layers += [nn.Flatten(), nn.Linear(flat, 512), nn.ReLU(inplace=True), bn(512, nn.BatchNorm1d)]
    backbone = nn.Sequential(*layers)
    for module in backbone.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            # He-uniform: U(-b, b), b = sqrt(6 / fan_in)
            nn.init.kaiming_uniform_(module.weight, nonlinearity="relu")
            nn.init.zeros_(cast(Tensor, module.bias))  # built with bias=True
    model = FeatureClassifier(backbone, 512, num_classes)
    nn.init.xavier_uniform_(model.head.weight)
    nn.init.zeros_(model.head.bias)
    return model


#: MobileNetV2's stages (expansion t, channels c, blocks n, stride s), Sandler et al. Table 2.
_MOBILENET_V2_STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


#: Widest ``width_mult`` of :func:`mobilenet_v2`. The MobileNetV2 paper's widths go up to
#: 1.4; at 4 the network already has ~40M parameters (11x the default's 3.5M, ~5120
#: features), and the parameters grow with its square (8: ~147M). A larger value is a typo
#: (or needs another model), and an infinite or huge one would only fail inside torchvision.
MAX_WIDTH_MULT = 4.0


def mobilenet_v2(
    num_classes: int | np.integer = 10,
    *,
    in_channels: int | np.integer = 3,
    width_mult: float | np.floating = 1.0,
    cifar_stem: bool = True,
    norm: str | None = "batch",
) -> FeatureClassifier:
    """Build torchvision's MobileNetV2, randomly initialised, optionally for 32x32 inputs.

    ImageNet's network downsamples by 32; on a 32x32 image that leaves 1x1 before the last
    stages. With ``cifar_stem`` the first convolution and the second stage use stride 1
    (the usual CIFAR adaptation), so the last feature map of a 32x32 input is 4x4. Features
    are the globally averaged output of the last 1x1 convolution (1280 channels at
    ``width_mult <= 1``); torchvision's dropout + linear classifier is replaced by the head.

    Args:
        num_classes: Logits of the head.
        in_channels: Input channels.
        width_mult: torchvision's width multiplier, in ``(0, MAX_WIDTH_MULT]`` (4).
        cifar_stem: Stride 1 instead of 2 in the stem and the second stage.
        norm: ``"batch"`` (torchvision), ``"group"`` (DP-SGD) or ``None`` (no
            normalisation; torchvision's convolutions have no bias either way).

    Returns:
        A :class:`FeatureClassifier` with ``feature_dim = 1280`` for ``width_mult <= 1``.

    Raises:
        ValueError: If a size is not positive, ``width_mult`` is not in
            ``(0, MAX_WIDTH_MULT]`` (NaN and infinity are not), or ``norm`` is unknown.
        TypeError: If ``width_mult`` is not a number, ``cifar_stem`` not a bool, or
            ``num_classes`` or ``in_channels`` not an int (a bool is not one).

    """
    import torchvision.models as tvm

    num_classes = check_int("num_classes", num_classes, 1)
    in_channels = check_int("in_channels", in_channels, 1)
    if not is_real(width_mult):
        raise TypeError(f"'width_mult' must be a number, got {type(width_mult).__name__}")
    width_mult = as_float(width_mult)
    if not (is_finite(width_mult) and 0 < width_mult <= MAX_WIDTH_MULT):
        raise ValueError(f"'width_mult' must be in (0, {MAX_WIDTH_MULT:g}], got {width_mult}")
    cifar_stem = check_flag("cifar_stem", cifar_stem)
    make_norm = _norm_factory(norm)
    stages = [list(s) for s in _MOBILENET_V2_STAGES]
    if cifar_stem:
        stages[1][3] = 1
    net = tvm.mobilenet_v2(
        weights=None,
        width_mult=float(width_mult),
        inverted_residual_setting=stages,
        norm_layer=make_norm if make_norm is not None else nn.Identity,
    )
    stem = net.features[0][0]
    if cifar_stem or in_channels != 3:
        new = nn.Conv2d(
            in_channels,
            stem.out_channels,
            3,
            stride=1 if cifar_stem else 2,
            padding=1,
            bias=False,
        )
        # torchvision's initialisation of every other convolution
        nn.init.kaiming_normal_(new.weight, mode="fan_out")
        net.features[0][0] = new
    feature_dim = net.last_channel
    backbone = nn.Sequential(net.features, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return FeatureClassifier(backbone, feature_dim, num_classes)


#: Registry used by :func:`build_model` (and the CLI's ``--model``). Entries are named
#: functions whose signatures list their keyword arguments (``in_channels``, ``side``,
#: ``in_features``): the harness inspects them to fit a model to the data.
MODELS: dict[str, Callable[..., FeatureClassifier]] = {
    "svhn_dp": svhn_dp_extractor,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet9": resnet9,
    "allcnn": allcnn,
    "mobilenet_v2": mobilenet_v2,
    "cifar_cnn": cifar_cnn,
    "small_cnn": small_cnn,
    "mlp": mlp,
}


def build_model(name: str, **kwargs: Any) -> FeatureClassifier:
    """Build a model of the zoo by name.

    Args:
        name: One of :data:`MODELS`: ``"svhn_dp"``, ``"resnet18"``, ``"resnet34"``,
            ``"resnet9"``, ``"allcnn"``, ``"mobilenet_v2"``, ``"cifar_cnn"``, ``"small_cnn"``,
            ``"mlp"``.
        **kwargs: Keyword arguments of the builder (e.g. ``num_classes=10``).

    Returns:
        A freshly initialised :class:`FeatureClassifier` (use ``torch.manual_seed`` first
        for reproducible weights).

    Raises:
        ValueError: If ``name`` is unknown, or from the builder.
        TypeError: If a keyword is not accepted by the builder.

    """
    if not isinstance(name, str) or name not in MODELS:
        raise ValueError(f"'name' must be one of {sorted(MODELS)}, got {name!r}")
    return MODELS[name](**kwargs)
