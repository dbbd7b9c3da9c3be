"""Model-zoo arguments: flags, types and width multipliers are checked up front."""

from __future__ import annotations

import pytest
from torch import nn

from fastunlearn.models import mobilenet_v2, resnet_cifar, svhn_dp_extractor
from fastunlearn.models.zoo import MAX_WIDTH_MULT, FeatureClassifier, L2Normalize


@pytest.mark.parametrize("value", ["no", 1, None])
def test_svhn_dp_extractor_normalize_must_be_a_bool(value):
    with pytest.raises(TypeError, match="'normalize' must be a bool"):
        svhn_dp_extractor(normalize=value)


def test_svhn_dp_extractor_normalize_false_adds_no_normalisation():
    model = svhn_dp_extractor(num_filters=4, normalize=False)
    assert not any(isinstance(m, L2Normalize) for m in model.modules())


@pytest.mark.parametrize("value", [float("inf"), 1e300, 10**400, MAX_WIDTH_MULT * 1.01,
                                   float("nan"), 0.0])
def test_mobilenet_width_mult_must_be_finite_and_bounded(value):
    with pytest.raises(ValueError, match=r"'width_mult' must be in \(0, 4\]"):
        mobilenet_v2(width_mult=value)


def test_mobilenet_cifar_stem_must_be_a_bool():
    with pytest.raises(TypeError, match="'cifar_stem' must be a bool"):
        mobilenet_v2(width_mult=0.25, cifar_stem="no")


@pytest.mark.parametrize("depth", [18.0, True, "34"])
def test_resnet_depth_of_the_wrong_type_is_a_type_error(depth):
    with pytest.raises(TypeError, match="'depth'"):
        resnet_cifar(depth=depth)


@pytest.mark.parametrize("backbone", [3, None, "resnet18", lambda x: x])
def test_feature_classifier_backbone_must_be_a_module(backbone):
    with pytest.raises(TypeError, match="'backbone' must be an nn.Module"):
        FeatureClassifier(backbone, 4, 2)
    assert FeatureClassifier(nn.Flatten(), 4, 2).feature_dim == 4
