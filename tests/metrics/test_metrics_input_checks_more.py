"""Bad arguments of the competition and MIA metrics: refused by name, never scored.

Each case failed before its fix: negative epsilons earned full points, a 2-D input was
flattened, a float model count was a ValueError, ``balance="no"`` balanced, logits with
different class counts were mixed, and an unknown accuracy key was ignored.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fastunlearn.metrics import competition_score, forget_score, score_bins, svc_mia_efficacy

# ---- forget_score ----------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [
    [-5.0, -math.inf],  # 1.0 (full points) before
    [0.1, -1e-12],
    np.array([-math.inf]),
])
def test_forget_score_refuses_negative_epsilons(eps):
    with pytest.raises(ValueError, match="'epsilons'.*>= 0"):
        forget_score(torch.as_tensor(eps, dtype=torch.float64), 10)


@pytest.mark.parametrize("eps", [torch.full((2, 3), 0.1), torch.tensor(0.1), [[0.1], [0.2]]])
def test_forget_score_refuses_input_that_is_not_1d(eps):
    with pytest.raises(ValueError, match="'epsilons' must be 1-D"):  # flattened before
        forget_score(eps, 10)


def test_forget_score_keeps_nan_and_inf_epsilons():
    # nan (no usable threshold) and +inf (no privacy) are valid epsilons: 0 points each
    assert forget_score([0.1, math.nan, math.inf, 0.0], 10) == pytest.approx(0.5)


@pytest.mark.parametrize("num_models", [10.0, np.float64(10.0), True, "10"])
def test_forget_score_refuses_a_non_integer_model_count(num_models):
    with pytest.raises(TypeError, match="'num_models'"):  # ValueError before
        forget_score([0.1], num_models)
    with pytest.raises(TypeError, match="'num_models'"):
        score_bins(num_models)


def test_forget_score_model_count_out_of_range_stays_a_value_error():
    with pytest.raises(ValueError, match="'num_models'"):
        forget_score([0.1], 2)


# ---- svc_mia_efficacy ------------------------------------------------------------------------


def _sets(classes=(4, 4, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n, c in zip((40, 20, 10), classes, strict=True):
        out.append((torch.randn(n, c, generator=g), torch.randint(0, c, (n,), generator=g)))
    return out


@pytest.mark.parametrize("balance", ["no", 0, 1, None, np.int64(1)])
def test_svc_mia_efficacy_refuses_a_non_bool_balance(balance):
    with pytest.raises(TypeError, match="'balance' must be a bool"):  # "no" balanced before
        svc_mia_efficacy(*_sets(), balance=balance)


def test_svc_mia_efficacy_takes_numpy_bools():
    sets = _sets()
    assert svc_mia_efficacy(*sets, balance=np.bool_(False)) == svc_mia_efficacy(
        *sets, balance=False)


@pytest.mark.parametrize(("classes", "name"), [((4, 7, 4), "test"), ((4, 4, 7), "forget"),
                                               ((7, 4, 4), "test")])
def test_svc_mia_efficacy_refuses_sets_with_different_class_counts(classes, name):
    with pytest.raises(ValueError, match=f"'{name}' logits have .* classes"):  # mixed before
        svc_mia_efficacy(*_sets(classes))


# ---- competition_score -----------------------------------------------------------------------


def test_competition_score_refuses_an_unknown_accuracy_key():
    g = torch.Generator().manual_seed(0)
    r, u = torch.randn(4, 3, 5, generator=g), torch.randn(4, 3, 5, generator=g)
    labels = torch.tensor([0, 1, 2, 3])
    accs = {"ra_u": 0.9, "ra_r": 0.9, "ta_u": 0.8, "ta_r": 0.8}
    with pytest.raises(ValueError, match=r"'accuracies' has unknown key.*'typo'.*'ra_u'"):
        competition_score(r, u, labels, accuracies={**accs, "typo": 1})  # ignored before
    assert competition_score(r, u, labels, accuracies=accs).final_score is not None
