import math

import pytest
import torch

from fastunlearn.metrics import hinge_logit, logit_scaled_confidence, true_class_confidence
from tests.helpers import DEVICES


@pytest.mark.parametrize("device", DEVICES)
def test_hinge_logit_hand_case(device):
    z = torch.tensor([[3.0, 1.0, 2.5], [0.0, 4.0, -1.0]], device=device)
    y = torch.tensor([0, 2], device=device)
    # 3 - 2.5 and -1 - 4
    assert hinge_logit(z, y).tolist() == [0.5, -5.0]


def test_hinge_logit_stacked_models_share_labels():
    z = torch.randn(5, 3, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0])
    h = hinge_logit(z, y)
    assert h.shape == (5, 3)
    for s in range(5):
        for m in range(3):
            others = [z[s, m, j] for j in range(4) if j != y[s]]
            assert h[s, m] == z[s, m, y[s]] - max(others)


@pytest.mark.parametrize("device", DEVICES)
def test_logit_scaled_confidence_matches_formula(device):
    z = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]], dtype=torch.float64, device=device)
    y = torch.tensor([0, 1], device=device)
    p = torch.softmax(z, -1)
    expected = [math.log(p[0, 0] + 1e-45) - math.log(p[0, 1] + p[0, 2] + 1e-45),
                math.log(p[1, 1] + 1e-45) - math.log(p[1, 0] + p[1, 2] + 1e-45)]
    torch.testing.assert_close(logit_scaled_confidence(z, y).cpu(),
                               torch.tensor(expected, dtype=torch.float64))


def test_logit_scaled_confidence_saturates_at_the_1e45_floor():
    # the other logits are 200 below: p_wrong ~ 1e-87 (0 in float32) is under the 1e-45 floor
    for dtype in (torch.float32, torch.float64):
        z = torch.tensor([[200.0, 0.0, 0.0]], dtype=dtype)
        got = float(logit_scaled_confidence(z, torch.tensor([0])))
        assert got == pytest.approx(-math.log(1e-45), rel=1e-12)
        got = float(logit_scaled_confidence(z, torch.tensor([1])))
        assert got == pytest.approx(math.log(1e-45), rel=1e-12)


def test_true_class_confidence():
    z = torch.tensor([[0.0, math.log(3.0)]])
    assert float(true_class_confidence(z, torch.tensor([1]))) == pytest.approx(0.75)


@pytest.mark.parametrize("fn", [hinge_logit, logit_scaled_confidence, true_class_confidence])
def test_bad_labels_raise(fn):
    z = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="'labels'.*outside"):
        fn(z, torch.tensor([0, 1, 3, 0]))
    with pytest.raises(ValueError, match="'labels'.*outside"):
        fn(z, torch.tensor([0, -1, 2, 0]))
    with pytest.raises(ValueError, match="'labels' must have shape"):
        fn(z, torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="'labels'"):
        fn(z, torch.tensor([0.0, 1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match="'logits'"):
        fn(torch.zeros(4), torch.tensor([0, 1, 2, 0]))
    bad = z.clone()
    bad[1, 1] = float("nan")
    with pytest.raises(ValueError, match="'logits' has non-finite"):
        fn(bad, torch.tensor([0, 1, 2, 0]))
