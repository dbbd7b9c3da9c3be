"""Model zoo: parameter counts against hand computations, shapes, forward/backward, errors."""

import math

import pytest
import torch
from torch import nn

from fastunlearn.models import (
    MODELS,
    FeatureClassifier,
    allcnn,
    build_model,
    cifar_cnn,
    mobilenet_v2,
    resnet9,
)


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def conv_params(c_in, c_out, k, bias=True):
    return c_in * c_out * k * k + (c_out if bias else 0)


def bn_params(c):
    return 2 * c  # weight and bias; running statistics are buffers


# ------------------------------------------------------------------ parameter counts


def test_cifar_cnn_matches_reference_count():
    # influence reference, section 4: 1,798,282 trainable parameters (Keras summary)
    assert n_params(cifar_cnn()) == 1_798_282
    # the same number from the layer list
    convs = conv_params(3, 128, 3) + 5 * conv_params(128, 128, 3)
    bns = 6 * bn_params(128) + bn_params(512)
    dense = (4 * 4 * 128) * 512 + 512 + 512 * 10 + 10
    assert convs + bns + dense == 1_798_282


def test_allcnn_without_norm_is_the_paper_model():
    w1, w2 = 96, 192
    expected = (
        conv_params(3, w1, 3)
        + 2 * conv_params(w1, w1, 3)
        + conv_params(w1, w2, 3)
        + 3 * conv_params(w2, w2, 3)
        + conv_params(w2, w2, 1)
        + conv_params(w2, 10, 1)  # the paper's class layer = our linear head
    )
    assert expected == 1_369_738
    assert n_params(allcnn(norm=None)) == expected


def test_allcnn_head_equals_paper_class_convolution():
    torch.manual_seed(1)
    model = allcnn(norm=None, width=8).eval()
    x = torch.randn(3, 3, 32, 32)
    trunk = model.backbone[:-2]  # up to the last 1x1 convolution + ReLU
    maps = trunk(x)
    assert maps.shape == (3, 16, 6, 6)  # 32 -> 16 -> 8 -> 6 (unpadded 3x3)
    conv = nn.Conv2d(16, 10, 1)
    conv.weight.data = model.head.weight.data.view(10, 16, 1, 1)
    conv.bias.data = model.head.bias.data
    paper = conv(maps).mean(dim=(2, 3))
    torch.testing.assert_close(model(x), paper, rtol=1e-5, atol=1e-6)


def test_resnet9_count():
    w = 64
    conv = lambda a, b: conv_params(a, b, 3, bias=False) + bn_params(b)  # noqa: E731
    expected = (
        conv(3, w)
        + conv(w, 2 * w)
        + 2 * conv(2 * w, 2 * w)
        + conv(2 * w, 4 * w)
        + conv(4 * w, 8 * w)
        + 2 * conv(8 * w, 8 * w)
        + 8 * w * 10
        + 10
    )
    assert n_params(resnet9()) == expected == 6_573_130


def test_resnet_cifar_counts():
    # the widely quoted counts of CIFAR ResNet-18/34 (3x3 stem, 10 classes)
    assert n_params(build_model("resnet18")) == 11_173_962
    assert n_params(build_model("resnet34")) == 21_282_122


def test_mobilenet_v2_backbone_is_torchvisions():
    import torchvision.models as tvm

    reference = tvm.mobilenet_v2(weights=None)
    model = mobilenet_v2(num_classes=10)
    # strides change, shapes of the weights do not
    assert n_params(model.backbone) == n_params(reference.features)
    assert n_params(model.head) == 1280 * 10 + 10


# ------------------------------------------------------------------ shapes, forward/backward

CASES = [
    ("resnet9", {"width": 8}, 64),
    ("allcnn", {"width": 8}, 16),
    ("cifar_cnn", {"filters": 8}, 512),
    ("mobilenet_v2", {"width_mult": 0.25}, 1280),
    ("resnet18", {}, 512),
]


@pytest.mark.parametrize(("name", "kwargs", "feature_dim"), CASES)
def test_forward_backward(name, kwargs, feature_dim):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7, **kwargs)
    assert isinstance(model, FeatureClassifier)
    assert model.feature_dim == feature_dim
    x = torch.randn(4, 3, 32, 32)
    y = torch.tensor([0, 3, 6, 1])
    logits = model(x)
    assert logits.shape == (4, 7)
    assert model.extract(x).shape == (4, feature_dim)
    nn.functional.cross_entropy(logits, y).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    assert any(p.grad.abs().sum() > 0 for p in model.backbone.parameters())


@pytest.mark.parametrize("name", ["resnet9", "allcnn", "cifar_cnn", "mobilenet_v2"])
def test_grayscale_inputs(name):
    extra = {"side": 28} if name == "cifar_cnn" else {}
    if name == "mobilenet_v2":
        extra["width_mult"] = 0.25
    model = build_model(name, in_channels=1, **extra).eval()
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_cifar_cnn_feature_shape_and_init():
    model = cifar_cnn(side=32)
    flat = model.backbone[: model.backbone.__len__() - 3](torch.randn(2, 3, 32, 32))
    assert flat.shape == (2, 4 * 4 * 128)
    # He-uniform: |w| <= sqrt(6 / fan_in) and the range is nearly used
    first = model.backbone[0]
    bound = math.sqrt(6.0 / (3 * 9))
    assert first.weight.abs().max() <= bound
    assert first.weight.abs().max() > 0.95 * bound
    assert (first.bias == 0).all()
    # Keras BatchNorm defaults
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(bns) == 7
    assert all(m.eps == 1e-3 and m.momentum == 0.01 for m in bns)
    glorot = math.sqrt(6.0 / (512 + 10))
    assert model.head.weight.abs().max() <= glorot


def test_mobilenet_cifar_stem_keeps_resolution():
    x = torch.randn(1, 3, 32, 32)
    cifar = mobilenet_v2(width_mult=0.25).eval()
    imagenet = mobilenet_v2(width_mult=0.25, cifar_stem=False).eval()
    assert cifar.backbone[0](x).shape[-2:] == (4, 4)
    assert imagenet.backbone[0](x).shape[-2:] == (1, 1)


@pytest.mark.parametrize("name", ["resnet9", "allcnn", "mobilenet_v2", "resnet18"])
def test_group_norm_variants_have_no_batchnorm(name):
    extra = {"width_mult": 0.25} if name == "mobilenet_v2" else {}
    from opacus.validators import ModuleValidator

    model = build_model(name, norm="group", **extra)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())
    assert ModuleValidator.validate(model, strict=False) == []  # DP-trainable
    assert ModuleValidator.validate(build_model(name, **extra), strict=False)  # BatchNorm


@pytest.mark.parametrize("name", sorted(MODELS))
def test_registry_entries_show_their_keyword_arguments(name):
    # the harness reads these signatures to pass in_channels / side / in_features
    import inspect

    params = inspect.signature(MODELS[name]).parameters
    assert "num_classes" in params
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if name != "mlp":
        assert "in_channels" in params


@pytest.mark.parametrize("name", ["resnet18", "resnet34"])
def test_resnets_take_one_channel_images(name):
    model = build_model(name, num_classes=10, in_channels=1).eval()
    assert model.backbone.conv1.in_channels == 1
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_registry_names():
    for name in (
        "resnet9",
        "allcnn",
        "resnet18",
        "resnet34",
        "mobilenet_v2",
        "cifar_cnn",
        "small_cnn",
        "mlp",
    ):
        assert name in MODELS


# ------------------------------------------------------------------ errors


def test_errors():
    with pytest.raises(ValueError, match="name"):
        build_model("vgg99")
    with pytest.raises(ValueError, match="side"):
        cifar_cnn(side=4)
    with pytest.raises(ValueError, match="width"):
        resnet9(width=0)
    with pytest.raises(TypeError, match="num_classes"):
        allcnn(num_classes=2.5)
    with pytest.raises(ValueError, match="norm"):
        allcnn(norm="layer")
    with pytest.raises(TypeError, match="dropout"):
        allcnn(dropout=0.5)
    with pytest.raises(ValueError, match="width_mult"):
        mobilenet_v2(width_mult=0)
    with pytest.raises(TypeError, match="cifar_stem"):
        mobilenet_v2(cifar_stem="yes")
    with pytest.raises(TypeError):
        build_model("resnet9", depth=3)


# ------------------------------------------------------------------ residual blocks


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_resnet_blocks_compute_torchvisions_function_out_of_place(norm):
    """The zoo's ResNet blocks add their shortcut out of place; torchvision's own forward
    (the block's class swapped back) gives the same output bit for bit, same state dict."""
    from torchvision.models.resnet import BasicBlock

    torch.manual_seed(0)
    model = build_model("resnet18", norm=norm).double().eval()
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 8 and all(type(b) is not BasicBlock for b in blocks)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    keys = list(model.state_dict())
    with torch.no_grad():
        ours = model(x)
        for block in blocks:
            block.__class__ = BasicBlock
        theirs = model(x)
    assert torch.equal(ours, theirs)
    assert list(model.state_dict()) == keys


def test_resnet_trains_under_full_backward_hooks_on_every_layer():
    """What DP-SGD (opacus) does: a full backward hook on each convolution and norm layer.
    Autograd forbids changing a hooked layer's output in place; the zoo's blocks do not."""
    torch.manual_seed(0)
    model = build_model("resnet18", norm="group")
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False   # opacus' callers turn these off (certified.extractors)
    seen = []
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.GroupNorm, nn.Linear)):
            module.register_full_backward_hook(lambda m, gi, go: seen.append(m))
    loss = nn.functional.cross_entropy(model(torch.randn(2, 3, 16, 16)), torch.tensor([1, 2]))
    loss.backward()
    hooked = sum(isinstance(m, (nn.Conv2d, nn.GroupNorm, nn.Linear)) for m in model.modules())
    assert len(seen) == hooked
    assert all(p.grad is not None for p in model.parameters())
