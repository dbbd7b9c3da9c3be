"""copy / deepcopy / pickle / repr / to_dict sweep of the public configs and results."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from fastunlearn.certified import CertifiedLogisticRegression
from fastunlearn.data import DigitsSplit, FeatureSplit
from fastunlearn.forget import AntiSamples, ScrubConfig
from fastunlearn.harness import HarnessConfig, HarnessData
from fastunlearn.influence import LinearUpdateResult, LissaSettings, UpdateResult
from fastunlearn.linalg import CGResult, LissaResult
from fastunlearn.metrics import CompetitionResult, EpsilonResult, LogitsDir


def _roundtrip(obj):
    return pickle.loads(pickle.dumps(obj))


def test_certified_shallow_copy_leaves_original_untouched():
    # old: copy.copy shared the tensors and host arrays that remove() updates in place, so
    # removing rows from the copy marked them removed in the original (whose n_removed_
    # stayed 0) and original.remove([0]) then raised "already removed index 0"
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 4))
    y = (X[:, 0] > 0).astype(int)
    model = CertifiedLogisticRegression(lam=1e-2, sigma=1.0).fit(X, y)
    coef, used = model.coef_.copy(), model.budget_used_
    clone = copy.copy(model)
    clone.remove([0, 1])
    assert clone.n_removed_ == 2
    assert model.n_removed_ == 0 and model.budget_used_ == used
    np.testing.assert_array_equal(model.coef_, coef)
    assert not model._removed.any() and not model._h_removed.any()
    assert model.remove([0]).records[0].indices == (0,)  # the original still owns row 0
    assert len(json.loads(json.dumps(model.report().to_dict()))["records"]) == 1


def _results():
    v = torch.arange(6, dtype=torch.float64)
    return [
        CGResult(v, torch.tensor([3, 4]), v[:2], torch.tensor([True, True]), 7,
                 torch.tensor([False, False])),
        LissaResult(v, 10, v.reshape(2, 3), torch.tensor([1, 2, 3])),
        UpdateResult(order=2, solver="cg", step=v, param_names=["w"], num_params=6,
                     num_affected=1, timings={"total": 0.5}),
        LinearUpdateResult(v, 2, 0.1, 0.2, None, 1.0, None, None, 1, 2, 0.01),
        CompetitionResult(0.5, v, 4, 1e-5, None),
        EpsilonResult(1.0, v, 0.05, 0, 0, 1.0),
        LogitsDir(Path("x"), torch.zeros(2, 3, 4), torch.tensor([0, 1]),
                  {"m": torch.ones(2, 3, 4)}, {"m": {"acc": [0.5, 0.25]}}, [0, 1]),
        HarnessData(v.reshape(3, 2).float(), torch.tensor([0, 1, 0]), v[:2].reshape(1, 2).float(),
                    torch.tensor([1]), 2),
        DigitsSplit(v.reshape(3, 2), torch.tensor([0, 1, 0]), v[:2].reshape(1, 2),
                    torch.tensor([1]), (3, 8)),
        FeatureSplit(v.reshape(3, 2), torch.tensor([0, 1, 0]), v[:2].reshape(1, 2),
                     torch.tensor([1]), (3, 8)),
        AntiSamples(v.reshape(3, 2), v.reshape(3, 2) + 1, torch.tensor([0, 1, 1]),
                    torch.tensor([[0], [1], [2]]), v[:3, None], None, None,
                    torch.tensor([0, 1, 2])),
    ]


@pytest.mark.parametrize("result", _results(), ids=lambda r: type(r).__name__)
def test_tensor_results_compare_by_value(result):
    # old: the generated __eq__ compared field tuples, so a deepcopy or pickle round trip
    # raised "Boolean value of Tensor with more than one value is ambiguous"
    for copied in (copy.deepcopy(result), _roundtrip(result), copy.copy(result)):
        assert copied == result and not copied != result
    tensor_field = next(k for k, v in vars(result).items() if isinstance(v, torch.Tensor))
    changed = copy.deepcopy(result)
    getattr(changed, tensor_field).view(-1)[0] += 1
    assert changed != result
    assert result != object() and len(repr(result)) < 2000
    if hasattr(result, "to_dict"):
        json.dumps(result.to_dict(), allow_nan=False)


def test_configs_pickle_and_copy_independently():
    # guard: configs travel between processes (multiprocessing pickles them)
    for cfg in (LissaSettings(depth=3), ScrubConfig(lr_decay_epochs=(1, 2)),
                HarnessConfig(methods=("scrub",), overrides={"scrub": {"lr": 0.1}})):
        assert _roundtrip(cfg) == cfg and copy.deepcopy(cfg) == cfg
    cfg = HarnessConfig(methods=("scrub",), overrides={"scrub": {"lr": 0.1}})
    deep = copy.deepcopy(cfg)
    deep.overrides["scrub"]["lr"] = 1.0
    assert cfg.overrides["scrub"]["lr"] == 0.1


def test_large_tensor_result_repr_stays_small():
    big = torch.zeros(60000, 784)
    result = EpsilonResult(1.0, big, 0.05, 0, 0, 1.0)
    assert len(repr(result)) < 2000
