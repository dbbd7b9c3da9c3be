"""Audit of the model zoo: sizes, layouts and initialisations against hand computations."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastunlearn.models import (
    L2Normalize,
    build_model,
    cifar_cnn,
    mlp,
    mobilenet_v2,
    resnet9,
    resnet_cifar,
    small_cnn,
    svhn_dp_extractor,
)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _conv_pool_side(side: int, kernel: int) -> int:
    """Side after two (unpadded conv k, 2x2 max pool) stages; 0 if a stage has no output."""
    for _ in range(2):
        side = side - kernel + 1
        if side < 1:
            return 0
        side //= 2
        if side < 1:
            return 0
    return side


# ------------------------------------------------------------------ svhn_dp


def test_svhn_dp_is_the_reference_network_computed_by_hand():
    torch.manual_seed(0)
    model = svhn_dp_extractor().eval()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 2
    assert all(c.kernel_size == (5, 5) and c.stride == (1, 1) and c.padding == (0, 0)
               for c in convs)  # fmt: skip
    assert [c.out_channels for c in convs] == [64, 64]
    assert n_params(model) == (3 * 64 * 25 + 64) + (64 * 64 * 25 + 64) + 1600 * 10 + 10
    x = torch.rand(3, 3, 32, 32)
    h = F.max_pool2d(F.relu(F.conv2d(x, convs[0].weight, convs[0].bias)), 2)
    h = F.max_pool2d(F.relu(F.conv2d(h, convs[1].weight, convs[1].bias)), 2)
    assert h.shape == (3, 64, 5, 5)
    flat = h.reshape(3, -1)
    feats = model.extract(x)
    torch.testing.assert_close(feats, flat / flat.norm(dim=1, keepdim=True))
    logits = model(x)
    torch.testing.assert_close(logits, feats @ model.head.weight.T + model.head.bias)
    raw = svhn_dp_extractor(normalize=False)
    raw.load_state_dict(model.state_dict())
    torch.testing.assert_close(raw.extract(x), flat)


@pytest.mark.parametrize("kernel", [3, 5])
def test_svhn_dp_feature_dim_and_size_check_by_brute_force(kernel):
    for side in range(1, 24):
        s = _conv_pool_side(side, kernel)
        if s == 0:
            with pytest.raises(ValueError, match="'side'"):
                svhn_dp_extractor(4, in_channels=1, side=side, kernel_size=kernel)
            continue
        model = svhn_dp_extractor(4, in_channels=1, side=side, kernel_size=kernel)
        assert model.feature_dim == 4 * s * s
        assert model.extract(torch.rand(2, 1, side, side)).shape == (2, 4 * s * s)


def test_svhn_dp_group_norm_variant():
    from opacus.validators import ModuleValidator

    model = svhn_dp_extractor(48, norm="group")
    groups = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert [(g.num_groups, g.num_channels) for g in groups] == [(16, 48), (16, 48)]
    assert ModuleValidator.validate(model, strict=False) == []
    for kwargs, error, arg in [
        ({"num_filters": 0}, ValueError, "num_filters"),
        ({"kernel_size": 2.5}, TypeError, "kernel_size"),
        ({"norm": "layer"}, ValueError, "norm"),
        ({"in_channels": True}, TypeError, "in_channels"),
    ]:
        with pytest.raises(error, match=f"'{arg}'"):
            svhn_dp_extractor(**kwargs)


# ------------------------------------------------------------------ small models


def test_small_cnn_feature_dim_by_brute_force():
    for side in range(4, 20):
        model = small_cnn(2, 3, side, width=3)
        assert model.feature_dim == 2 * 3 * (side // 2 // 2) ** 2
        assert model.extract(torch.rand(2, 2, side, side)).shape == (2, model.feature_dim)
    with pytest.raises(ValueError, match="'side'"):
        small_cnn(side=3)


def test_mlp_without_hidden_layers_is_softmax_regression():
    torch.manual_seed(0)
    model = mlp(12, 4, hidden=())
    x = torch.rand(5, 3, 2, 2)
    torch.testing.assert_close(model(x), x.reshape(5, 12) @ model.head.weight.T + model.head.bias)
    deep = mlp(12, 4, hidden=[8, 6])
    linears = [m for m in deep.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(12, 8), (8, 6), (6, 4)]
    h = F.relu(F.relu(x.reshape(5, 12) @ linears[0].weight.T + linears[0].bias)
               @ linears[1].weight.T + linears[1].bias)  # fmt: skip
    torch.testing.assert_close(deep.extract(x), h)
    assert deep.feature_dim == 6


@pytest.mark.parametrize(
    ("hidden", "error"), [(5, TypeError), ((4, 0), ValueError), ((4, 2.0), TypeError)]
)
def test_mlp_bad_hidden_names_the_argument(hidden, error):
    with pytest.raises(error, match="'hidden'"):
        mlp(8, 2, hidden=hidden)


def test_l2_normalize_rows_and_zero_rows():
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0], [-1e-3, 0.0]])
    torch.testing.assert_close(
        L2Normalize()(x), torch.tensor([[0.6, 0.8], [0.0, 0.0], [-1.0, 0.0]])
    )


def test_cifar_cnn_count_for_other_sides_and_widths():
    for side, filters in [(28, 8), (16, 4), (33, 5)]:
        f, flat = filters, filters * (side // 8) ** 2
        expected = (
            (3 * f * 9 + f) + 5 * (f * f * 9 + f) + 6 * 2 * f  # convs and their BatchNorms
            + flat * 512 + 512 + 2 * 512                         # dense and BatchNorm1d
            + 512 * 7 + 7                                        # head
        )  # fmt: skip
        model = cifar_cnn(7, side=side, filters=filters).eval()
        assert n_params(model) == expected
        assert model.extract(torch.rand(2, 3, side, side)).shape == (2, 512)


# ------------------------------------------------------------------ residual networks


def test_resnet9_pools_globally_by_max_and_takes_any_side_from_8():
    torch.manual_seed(0)
    model = resnet9(num_classes=3, width=4, norm="group").eval()
    trunk = model.backbone[:-2]
    for side in (8, 11, 32):
        x = torch.rand(2, 3, side, side)
        maps = trunk(x)
        assert maps.shape[1] == 32
        torch.testing.assert_close(model.extract(x), maps.amax(dim=(2, 3)))
    # the residual units add their input: zeroing a unit's body leaves the identity
    residuals = [m for m in model.modules() if type(m).__name__ == "_Residual"]
    assert len(residuals) == 2
    z = torch.randn(1, 8, 4, 4)
    with torch.no_grad():
        for p in residuals[0].body.parameters():
            p.zero_()
        # body = conv -> GroupNorm -> ReLU twice; zero weights give ReLU(0) = 0
        torch.testing.assert_close(residuals[0](z), z)


def _largest_pow2_group(c: int) -> int:
    return math.gcd(c, 32)  # largest power of two <= 32 dividing c


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("resnet18", {}),
        ("resnet9", {"width": 12}),
        ("allcnn", {"width": 20}),
        ("mobilenet_v2", {"width_mult": 0.35}),
        ("svhn_dp", {"num_filters": 24}),
    ],
)
def test_group_norm_uses_the_largest_power_of_two_up_to_32(name, kwargs):
    model = build_model(name, norm="group", **kwargs)
    groups = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert groups
    for g in groups:
        assert g.num_groups == _largest_pow2_group(g.num_channels)
        assert torch.all(g.weight == 1) and torch.all(g.bias == 0)


def test_resnet_cifar_stem_and_blocks():
    from fastunlearn.models._resnet_blocks import OutOfPlaceBasicBlock

    torch.manual_seed(0)
    for depth, blocks in ((18, 8), (34, 16)):
        model = resnet_cifar(depth, 5, in_channels=2, norm="group")
        found = [m for m in model.modules() if isinstance(m, OutOfPlaceBasicBlock)]
        assert len(found) == blocks
        conv1 = model.backbone.conv1
        assert (conv1.in_channels, conv1.kernel_size, conv1.stride, conv1.padding) == (
            2, (3, 3), (1, 1), (1, 1)
        )  # fmt: skip
        assert conv1.bias is None and isinstance(model.backbone.maxpool, nn.Identity)
        # Kaiming normal, fan_out = 64 * 9, gain sqrt(2)
        std = float(conv1.weight.detach().std())
        assert std == pytest.approx(math.sqrt(2.0 / (64 * 9)), rel=0.1)
    with pytest.raises(ValueError, match="'norm'"):
        resnet_cifar(norm=None)
    with pytest.raises(TypeError, match="'depth'"):  # a wrong type (was ValueError)
        resnet_cifar(depth="18")


def test_out_of_place_block_computes_the_block_by_hand():
    from fastunlearn.models._resnet_blocks import OutOfPlaceBasicBlock

    torch.manual_seed(0)
    model = resnet_cifar(18, norm="group").eval()
    block = [m for m in model.modules() if isinstance(m, OutOfPlaceBasicBlock)][2]
    assert block.downsample is not None  # first block of layer2: stride 2, 64 -> 128
    x = torch.randn(2, 64, 8, 8)
    x_before = x.clone()
    hidden = F.relu(block.bn1(block.conv1(x)))
    expected = F.relu(block.bn2(block.conv2(hidden)) + block.downsample(x))
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected)
    assert torch.equal(x, x_before)


# ------------------------------------------------------------------ mobilenet_v2


def test_mobilenet_v2_without_norm_and_wider():
    model = mobilenet_v2(3, width_mult=0.25, norm=None).eval()
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) for m in model.modules())
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 3)
    # last channel: round 1280 * 1.4 to a multiple of 8 (torchvision's _make_divisible)
    wide = mobilenet_v2(width_mult=1.4).eval()
    assert wide.feature_dim == 1792
    with torch.no_grad():
        assert wide.extract(torch.rand(1, 3, 32, 32)).shape == (1, 1792)


def test_mobilenet_v2_stems():
    torch.manual_seed(0)
    gray = mobilenet_v2(width_mult=0.5, in_channels=1, cifar_stem=False).eval()
    stem = gray.backbone[0][0][0]
    assert (stem.in_channels, stem.stride, stem.out_channels) == (1, (2, 2), 16)
    # torchvision's stride-2 stages on top of the stride-2 stem: 64 -> 2
    assert gray.backbone[0](torch.rand(1, 1, 64, 64)).shape[-2:] == (2, 2)
    cifar = mobilenet_v2(width_mult=1.0)
    stem = cifar.backbone[0][0][0]
    assert stem.stride == (1, 1) and stem.in_channels == 3 and stem.out_channels == 32
    strides = [m.stride for m in cifar.backbone[0][1:].modules()
               if isinstance(m, nn.Conv2d) and m.groups > 1]  # fmt: skip
    assert strides.count((2, 2)) == 3  # stages of 32, 64 and 160 channels only
    std = float(stem.weight.detach().std())
    assert std == pytest.approx(math.sqrt(2.0 / (32 * 9)), rel=0.15)
    for bad, error in [(float("nan"), ValueError), (-1.0, ValueError), ("1", TypeError)]:
        with pytest.raises(error, match="'width_mult'"):
            mobilenet_v2(width_mult=bad)


# ------------------------------------------------------------------ registry


def test_build_model_forwards_keywords_and_seeds_reproduce_weights():
    torch.manual_seed(3)
    a = build_model("small_cnn", in_channels=3, num_classes=4, side=12, width=2)
    torch.manual_seed(3)
    b = small_cnn(3, 4, 12, width=2)
    assert a.feature_dim == 2 * 2 * 3 * 3
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    with pytest.raises(TypeError):
        build_model("mlp", in_channels=3)
    with pytest.raises(ValueError, match="'name'"):
        build_model("ResNet18")
