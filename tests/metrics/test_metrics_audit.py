"""Audit of fastunlearn.metrics: inputs users really pass (tensors that require grad, numpy
scalars, big-endian .npy files, strided views) and strict JSON from ``fastunlearn evaluate``.

Every expected value is computed independently (numpy / scikit-learn / by hand).
"""

import argparse
import json
import math

import numpy as np
import pytest
import torch

from fastunlearn.metrics import (
    accuracy,
    competition_epsilons,
    competition_score,
    epsilon_hat,
    final_score,
    forget_score,
    hinge_logit,
    lira_epsilons,
    load_logits_dir,
    logit_scaled_confidence,
    pack_slots,
    per_class_accuracy,
    per_model_accuracy,
    score_bins,
    svc_mia_efficacy,
    time_ratio,
    true_class_confidence,
    write_logits_dir,
)
from fastunlearn.metrics import cli as metrics_cli
from fastunlearn.metrics.fixtures import LogitsDir, read_metrics_csv


def _conf_logits(conf, labels, C=5):
    """Logits whose softmax puts ``conf[i]`` on ``labels[i]`` and spreads the rest evenly."""
    conf, labels = np.asarray(conf, dtype=np.float64), np.asarray(labels)
    p = np.repeat(((1 - conf) / (C - 1))[:, None], C, 1)
    p[np.arange(len(conf)), labels] = conf
    return np.log(p)


def test_svc_mia_efficacy_accepts_logits_that_require_grad():
    # model outputs straight from a forward pass carry a graph; the metric must not crash
    from sklearn.svm import SVC

    rng = np.random.default_rng(0)
    confs = {"retain": rng.uniform(0.85, 0.99, 60), "test": rng.uniform(0.3, 0.7, 40),
             "forget": np.r_[rng.uniform(0.35, 0.6, 15), rng.uniform(0.9, 0.98, 5)]}
    sets = {}
    for name, c in confs.items():
        y = rng.integers(0, 5, len(c))
        z = torch.tensor(_conf_logits(c, y), dtype=torch.float32, requires_grad=True)
        sets[name] = (z, torch.from_numpy(y))
    got = svc_mia_efficacy(sets["retain"], sets["test"], sets["forget"])
    # OPTML's SVC_MIA by hand: balanced members, RBF SVC (C = 3, gamma "auto") on the
    # float64 softmax confidence of the label
    feat = {k: torch.softmax(z.detach().double(), -1).gather(1, y[:, None]).squeeze(1).numpy()
            for k, (z, y) in sets.items()}
    x = np.r_[feat["retain"][:40], feat["test"]][:, None]
    clf = SVC(C=3.0, gamma="auto", kernel="rbf").fit(x, np.r_[np.ones(40), np.zeros(40)])
    assert got == float(1.0 - clf.predict(feat["forget"][:, None]).mean())
    assert 0.0 < got < 1.0


def test_pack_and_write_logits_accept_tensors_that_require_grad(tmp_path):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(4, 3, 5, generator=g, requires_grad=True)
    y = torch.tensor([0, 4, 2, 2])
    packed = pack_slots(z, y)
    expected = np.concatenate([np.eye(5, dtype=np.float32)[y.numpy()][:, None],
                               z.detach().numpy()], 1)
    np.testing.assert_array_equal(packed, expected)
    write_logits_dir(tmp_path / "d", z, y, {"m": z * 2})
    d = load_logits_dir(tmp_path / "d")
    np.testing.assert_array_equal(d.retrain.numpy(), z.detach().numpy())
    np.testing.assert_array_equal(d.methods["m"].numpy(), 2 * z.detach().numpy())
    assert d.labels.tolist() == y.tolist()


def test_big_endian_arrays_are_read_not_refused(tmp_path):
    # '>f4' / '>i8' arrays (an .npy written on a big-endian machine) are valid input
    rng = np.random.default_rng(2)
    z = rng.normal(size=(30, 4)).astype(np.float32)
    y = rng.integers(0, 4, 30)
    expected = float(np.mean(np.argmax(z, 1) == y))
    assert accuracy(z.astype(">f4"), y.astype(">i8")) == expected
    # a whole logits folder stored big-endian scores like the native one
    r = rng.normal(size=(6, 4, 3)).astype(np.float32)
    u = (r + rng.normal(scale=0.5, size=r.shape)).astype(np.float32)
    lab = rng.integers(0, 3, 6)
    native = write_logits_dir(tmp_path / "native", r, lab, {"m": u})
    big = tmp_path / "big"
    big.mkdir()
    (big / "m").mkdir()
    for name in ("logits_retain.npy", "m/logits_unlearn.npy"):
        np.save(big / name, np.load(native / name).astype(">f4"))
    d = load_logits_dir(big)
    np.testing.assert_array_equal(d.retrain.numpy(), r)
    np.testing.assert_array_equal(d.methods["m"].numpy(), u)
    assert d.labels.tolist() == lab.tolist()


def test_object_arrays_raise_type_error_naming_the_argument():
    z = np.array([[1.0, 2.0], [3.0, "x"]], dtype=object)
    with pytest.raises(TypeError, match="'logits'"):
        accuracy(z, [0, 1])
    with pytest.raises(TypeError, match="'labels'"):
        accuracy(np.zeros((2, 2)), np.array([0, None], dtype=object))


def test_numpy_integers_are_valid_model_counts():
    # e.g. num_models=logits.shape[1] of a numpy array, or np.int64 from a config
    for n in (np.int64(80), np.int32(80)):
        assert score_bins(n) == score_bins(80)
    # ceil(ln 79) = 5 -> bins of width 0.5 up to 5, points 1, 1/2, ...; 5.0 earns nothing
    eps = [0.1, 0.6, 4.7, 5.0]
    assert forget_score(eps, np.int64(80)) == pytest.approx((1 + 0.5 + 2.0 ** -9) / 4)
    with pytest.raises(ValueError, match="'num_models'"):
        score_bins(np.int64(2))
    with pytest.raises(TypeError, match="'num_models'"):  # a float is no model count
        score_bins(80.0)


def test_numpy_deltas_are_accepted():
    g = torch.Generator().manual_seed(3)
    r = torch.randn(5, 12, generator=g, dtype=torch.float64)
    u = torch.randn(5, 12, generator=g, dtype=torch.float64) + 0.7
    a = lira_epsilons(r, u, delta=np.float32(0.25))  # exactly 0.25
    b = lira_epsilons(r, u, delta=0.25)
    assert torch.equal(a.nan_to_num(-1.0), b.nan_to_num(-1.0))
    c = competition_epsilons(r, u, delta=np.float64(1e-5))
    d = competition_epsilons(r, u, delta=1e-5)
    assert torch.equal(c.nan_to_num(-1.0), d.nan_to_num(-1.0))
    with pytest.raises(TypeError, match="'delta'"):
        lira_epsilons(r, u, delta=np.bool_(True))
    with pytest.raises(ValueError, match="'delta'"):
        competition_epsilons(r, u, delta=np.float64(1.0))


def test_time_ratio_accepts_numpy_scalars_and_refuses_non_numbers():
    assert time_ratio(np.float32(3.0), np.float64(12.0)) == 0.25
    assert time_ratio(np.int64(30), 600) == 0.05
    for bad in (True, "3", None):
        with pytest.raises(TypeError, match="'seconds'"):
            time_ratio(bad, 10.0)
    with pytest.raises(ValueError, match="'retrain_seconds'"):
        time_ratio(1.0, np.float64(np.inf))


def test_final_score_validates_every_argument():
    # negative / infinite inputs used to give a negative or infinite "score"
    with pytest.raises(ValueError, match="'forget'"):
        final_score(-0.5, 0.9, 1.0, 0.9, 1.0)
    with pytest.raises(ValueError, match="'ta_u'"):
        final_score(0.5, 0.9, 1.0, math.inf, 1.0)
    with pytest.raises(TypeError, match="'ra_u'"):
        final_score(0.5, "0.9", 1.0, 0.9, 1.0)
    with pytest.raises(ValueError, match="'ta_r'"):
        final_score(0.5, 0.9, 1.0, 0.9, 0)
    assert math.isnan(final_score(0.5, math.nan, 1.0, 0.9, 1.0))  # unmeasured stays nan
    # numpy scalars and 0-d tensors (e.g. acc.mean()) are numbers
    expected = 0.5 * (0.9 / 0.95) * (0.8 / 0.85)
    assert final_score(np.float32(0.5), torch.tensor(0.9, dtype=torch.float64), 0.95,
                       np.float64(0.8), torch.tensor(0.85, dtype=torch.float64)) == \
        pytest.approx(expected, rel=1e-7)


@pytest.mark.parametrize("pos", range(5))
def test_final_score_refuses_values_above_one(pos):
    # old: accepted; a forget score or accuracy in percent scaled the score by 100
    args = [0.5, 0.9, 0.9, 0.8, 0.8]
    args[pos] = 85.0
    name = ["forget", "ra_u", "ra_r", "ta_u", "ta_r"][pos]
    with pytest.raises(ValueError, match=rf"'{name}' must be a fraction in \[0, 1\], got 85.0 "
                                         r"\(a percentage\?\)"):
        final_score(*args)
    args[pos] = 1.0  # the boundary is valid
    assert final_score(*args) > 0


def test_competition_score_refuses_percent_accuracies():
    from fastunlearn.metrics import competition_score

    gen = torch.Generator().manual_seed(0)
    retrain = torch.randn(4, 3, 5, generator=gen)
    unlearn = torch.randn(4, 3, 5, generator=gen)
    labels = torch.tensor([0, 1, 2, 3])
    accuracies = {"ra_u": 90.0, "ra_r": 0.9, "ta_u": 0.8, "ta_r": 0.8}
    with pytest.raises(ValueError, match="'ra_u'"):
        competition_score(retrain, unlearn, labels, accuracies=accuracies)


def test_per_class_accuracy_refuses_a_fractional_num_classes():
    z = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 2]), 3).float()
    y = torch.tensor([0, 1, 2, 2])
    with pytest.raises(TypeError, match="'num_classes'"):
        per_class_accuracy(z, y, num_classes=4.7)  # used to become 4 silently
    acc = per_class_accuracy(z, y, num_classes=np.int64(4))
    # by hand: class 0 1/1, class 1 1/1, class 2 1/2, class 3 absent
    assert acc[:3].tolist() == [1.0, 1.0, 0.5] and math.isnan(acc[3])


def test_strided_inputs_match_numpy(tmp_path):
    g = torch.Generator().manual_seed(4)
    zc = torch.randn(6, 7, 4, generator=g, dtype=torch.float64)
    z = zc.permute(2, 0, 1).contiguous().permute(1, 2, 0)  # same values, class dim strided
    assert not z.is_contiguous() and torch.equal(z, zc)
    y = torch.tensor([0, 3, 1, 2, 2, 0])
    zn, yn = zc.numpy(), y.numpy()
    rows = np.arange(6)[:, None]
    at = zn[rows, np.arange(7)[None], yn[:, None]]
    masked = zn.copy()
    masked[rows, np.arange(7)[None], yn[:, None]] = -np.inf
    np.testing.assert_allclose(hinge_logit(z, y).numpy(), at - masked.max(-1), rtol=0, atol=0)
    p = np.exp(zn - zn.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    py = p[rows, np.arange(7)[None], yn[:, None]]
    np.testing.assert_allclose(true_class_confidence(z, y).numpy(), py, rtol=1e-13)
    np.testing.assert_allclose(logit_scaled_confidence(z, y).numpy(),
                               np.log(py + 1e-45) - np.log(1 - py + 1e-45), rtol=1e-9)
    np.testing.assert_allclose(per_model_accuracy(z, y).numpy(),
                               (zn.argmax(-1) == yn[:, None]).mean(0), rtol=0)
    # strided [S, N] statistics give the contiguous results
    r = torch.randn(8, 20, generator=g, dtype=torch.float64)
    u = torch.randn(8, 20, generator=g, dtype=torch.float64) * 1.4 + 0.6
    rs, us = r.t().contiguous().t(), u.t().contiguous().t()
    for fn in (competition_epsilons, lira_epsilons):
        assert torch.equal(fn(rs, us).nan_to_num(-1.0), fn(r, u).nan_to_num(-1.0))


def test_metrics_leave_their_inputs_unchanged():
    g = torch.Generator().manual_seed(5)
    R = torch.randn(6, 5, 4, generator=g)
    U = torch.randn(6, 5, 4, generator=g) + 0.3
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    Rn, Un, yn = R.numpy().copy(), U.numpy().copy(), y.clone()
    epsilon_hat(R, U, y)
    competition_score(R, U, y)
    per_class_accuracy(U, y)
    hr, hu = hinge_logit(R, y), hinge_logit(U, y)
    hr0, hu0 = hr.clone(), hu.clone()
    lira_epsilons(hr, hu)
    competition_epsilons(hr, hu)
    np.testing.assert_array_equal(R.numpy(), Rn)
    np.testing.assert_array_equal(U.numpy(), Un)
    assert torch.equal(y, yn) and torch.equal(hr, hr0) and torch.equal(hu, hu0)


def _strict_json(text):
    def refuse(token):
        raise ValueError(f"non-JSON token {token}")
    return json.loads(text, parse_constant=refuse)


def test_cli_writes_strict_json_with_infinite_epsilons(tmp_path):
    # unlearned models far from the retrained ones: Seed A's per-example epsilon is inf
    rng = np.random.default_rng(6)
    S, N, C = 5, 6, 3
    lab = rng.integers(0, C, S)
    r = rng.normal(size=(S, N, C)).astype(np.float32)
    u = r.copy()
    u[np.arange(S), :, lab] += 30.0 + rng.normal(size=(S, N)).astype(np.float32)
    path = write_logits_dir(tmp_path / "logits", r, lab, {"far": u})
    parser = argparse.ArgumentParser()
    metrics_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["evaluate", str(path), "--out", str(tmp_path / "out"),
                              "--no-plot"])
    assert args.func(args) == 0
    res = _strict_json((tmp_path / "out" / "evaluation.json").read_text())
    eps = [float(v) for v in res["methods"]["far"]["per_example"]["epsilon"]]
    assert len(eps) == S and all(math.isinf(e) and e > 0 for e in eps)
    assert math.isinf(float(res["methods"]["far"]["epsilon_hat"]))


def test_metrics_csv_with_a_missing_cell_keeps_its_column(tmp_path):
    # one model's value not recorded: the column used to vanish from the evaluation
    path = tmp_path / "metrics.csv"
    path.write_text("model,forget_accuracy,retain_accuracy,method\n"
                    "0,0.25,0.9,ft\n1,,0.8,ft\n2,0.75,0.7,ft\n")
    columns = read_metrics_csv(path)
    assert set(columns) == {"model", "forget_accuracy", "retain_accuracy"}  # text left out
    forget = columns["forget_accuracy"]
    assert forget[0] == 0.25 and math.isnan(forget[1]) and forget[2] == 0.75
    d = LogitsDir(path=tmp_path, retrain=torch.zeros(1, 1, 2), labels=torch.zeros(1),
                  metrics={"ft": columns}, retrain_metrics=columns)
    assert d.mean_metric("ft", "forget_accuracy") == pytest.approx(0.5)  # recorded values
    assert d.retrain_mean_metric("retain_accuracy") == pytest.approx(0.8)
    assert math.isnan(d.mean_metric("ft", "absent"))
    (tmp_path / "empty.csv").write_text("model,score\n0,\n")
    assert read_metrics_csv(tmp_path / "empty.csv") == {"model": [0.0]}  # nothing recorded
