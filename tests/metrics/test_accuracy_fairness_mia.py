import math

import numpy as np
import pytest
import torch

from fastunlearn.metrics import (
    Stopwatch,
    accuracy,
    accuracy_report,
    class_fairness,
    per_class_accuracy,
    per_model_accuracy,
    svc_mia_efficacy,
    time_ratio,
)
from tests.helpers import DEVICES


def _onehot_logits(pred, C):
    return torch.nn.functional.one_hot(torch.tensor(pred), C).float()


def test_empty_sets_are_refused():
    with pytest.raises(ValueError, match="'logits' has no examples"):
        accuracy(torch.randn(0, 3), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="'logits' has no examples"):
        per_model_accuracy(torch.randn(0, 4, 3), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="'logits' has no examples"):
        accuracy_report(forget=(torch.randn(0, 3), torch.zeros(0, dtype=torch.long)))


@pytest.mark.parametrize("device", DEVICES)
def test_accuracy_hand_case(device):
    z = _onehot_logits([0, 1, 2, 2], 3).to(device)
    y = torch.tensor([0, 1, 1, 2], device=device)
    assert accuracy(z, y) == 0.75
    rep = accuracy_report(forget=(z, y), test=(z[:2], y[:2]))
    assert rep == {"forget_accuracy": 0.75, "test_accuracy": 1.0, "unlearning_accuracy": 0.25}


def test_per_model_accuracy():
    # 3 examples x 2 models: model 0 right on all, model 1 right on the first only
    z = torch.stack([_onehot_logits([0, 1, 2], 3), _onehot_logits([0, 0, 0], 3)], 1)
    y = torch.tensor([0, 1, 2])
    assert per_model_accuracy(z, y).tolist() == [1.0, pytest.approx(1 / 3)]


@pytest.mark.parametrize("device", DEVICES)
def test_per_class_accuracy_and_gap(device):
    pred = [0, 0, 1, 1, 1, 2, 0]
    y = [0, 1, 1, 1, 1, 2, 2]
    z = _onehot_logits(pred, 4).to(device)
    acc = per_class_accuracy(z, torch.tensor(y, device=device))
    assert acc[:3].tolist() == [1.0, 0.75, 0.5] and math.isnan(acc[3])
    f = class_fairness(z, torch.tensor(y, device=device))
    assert (f["worst_class"], f["best_class"]) == (2, 0)
    assert f["largest_gap"] == 0.5
    assert f["mean_class_accuracy"] == pytest.approx(0.75)


def test_per_class_accuracy_pools_models():
    z = torch.stack([_onehot_logits([0, 1], 2), _onehot_logits([1, 1], 2)], 1)  # [2, 2, 2]
    acc = per_class_accuracy(z, torch.tensor([0, 1]))
    assert acc.tolist() == [0.5, 1.0]


def test_accuracy_bad_input():
    with pytest.raises(ValueError, match="'labels'.*outside"):
        accuracy(torch.zeros(3, 2), torch.tensor([0, 2, 1]))
    with pytest.raises(ValueError, match="'labels' must have shape"):
        accuracy(torch.zeros(3, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="'num_classes'"):
        per_class_accuracy(torch.zeros(3, 4), torch.tensor([0, 1, 2]), num_classes=3)
    with pytest.raises(TypeError, match="'forget'"):
        accuracy_report(forget=torch.zeros(3, 2))


def _logits_with_confidence(conf, C=10):
    """Logits whose softmax gives probability ``conf`` to class 0, the rest spread evenly."""
    conf = np.asarray(conf, dtype=np.float64)
    rest = (1 - conf) / (C - 1)
    z = np.log(np.c_[conf, np.repeat(rest[:, None], C - 1, 1)])
    return torch.from_numpy(z), torch.zeros(len(conf), dtype=torch.long)


def test_svc_mia_efficacy_behaviour():
    rng = np.random.default_rng(0)
    retain = _logits_with_confidence(rng.uniform(0.95, 0.999, 300))
    test = _logits_with_confidence(rng.uniform(0.3, 0.7, 100))
    like_test = _logits_with_confidence(rng.uniform(0.35, 0.65, 50))
    like_retain = _logits_with_confidence(rng.uniform(0.96, 0.99, 50))
    assert svc_mia_efficacy(retain, test, like_test) == 1.0
    assert svc_mia_efficacy(retain, test, like_retain) == 0.0
    half = (torch.cat([like_test[0][:25], like_retain[0][:25]]), torch.zeros(50).long())
    assert svc_mia_efficacy(retain, test, half) == 0.5
    assert svc_mia_efficacy(retain, test, half, balance=False) == 0.5


def _logits_with_confidence_on(conf, labels, C=10):
    """Logits whose softmax gives probability ``conf[i]`` to ``labels[i]``, the rest even."""
    conf, labels = np.asarray(conf, dtype=np.float64), np.asarray(labels)
    p = np.repeat(((1 - conf) / (C - 1))[:, None], C, 1)
    p[np.arange(len(conf)), labels] = conf
    return torch.from_numpy(np.log(p)), torch.from_numpy(labels).long()


def _svc_efficacy_by_hand(retain_conf, test_conf, forget_conf, balance):
    """OPTML's SVC_MIA as documented: one feature (true-class confidence), members (1) =
    the first len(test) retain examples when balanced, else all; non-members (0) = test;
    RBF SVC with C = 3, gamma = "auto"; efficacy = share of forget predicted non-member."""
    from sklearn.svm import SVC

    members = retain_conf[: len(test_conf)] if balance else retain_conf
    x = np.concatenate([members, test_conf])[:, None]
    y = np.concatenate([np.ones(len(members)), np.zeros(len(test_conf))])
    clf = SVC(C=3.0, gamma="auto", kernel="rbf").fit(x, y)
    return float(1.0 - clf.predict(np.asarray(forget_conf)[:, None]).mean())


def test_svc_mia_efficacy_balance_uses_the_first_retain_examples():
    # the first len(test) retain examples are confident (0.9-0.99); the 600 after them sit
    # inside the test range (0.45-0.6). Balanced, mid-confidence forget examples look like
    # non-members; with all 600 members they look like members: the answers differ.
    rng = np.random.default_rng(3)
    n_test = 80
    retain_conf = np.r_[rng.uniform(0.9, 0.99, n_test), rng.uniform(0.45, 0.6, 600)]
    test_conf = rng.uniform(0.3, 0.7, n_test)
    forget_conf = np.r_[rng.uniform(0.47, 0.58, 30), rng.uniform(0.92, 0.98, 10),
                        rng.uniform(0.3, 0.4, 10)]
    sets = [_logits_with_confidence_on(c, rng.integers(0, 10, len(c)))
            for c in (retain_conf, test_conf, forget_conf)]
    balanced = svc_mia_efficacy(*sets, balance=True)
    unbalanced = svc_mia_efficacy(*sets, balance=False)
    assert balanced == _svc_efficacy_by_hand(retain_conf, test_conf, forget_conf, True)
    assert unbalanced == _svc_efficacy_by_hand(retain_conf, test_conf, forget_conf, False)
    assert balanced != unbalanced
    assert svc_mia_efficacy(*sets) == balanced  # balance=True is the default (OPTML)


def test_svc_mia_bad_input():
    ok = _logits_with_confidence([0.5, 0.6])
    with pytest.raises(ValueError, match="'forget' is empty"):
        svc_mia_efficacy(ok, ok, (torch.zeros(0, 10), torch.zeros(0).long()))
    with pytest.raises(TypeError, match="'test'"):
        svc_mia_efficacy(ok, torch.zeros(2, 10), ok)
    with pytest.raises(ValueError, match="'labels'.*outside"):
        svc_mia_efficacy(ok, ok, (torch.zeros(2, 10), torch.tensor([0, 10])))


def test_timing():
    with Stopwatch(cuda_sync=False) as sw:
        sum(range(10000))
    assert sw.seconds >= 0 and sw.minutes == sw.seconds / 60
    assert time_ratio(30.0, 600.0) == 0.05
    with pytest.raises(ValueError, match="'retrain_seconds'"):
        time_ratio(1.0, 0.0)
    with pytest.raises(ValueError, match="'seconds'"):
        time_ratio(-1.0, 5.0)
