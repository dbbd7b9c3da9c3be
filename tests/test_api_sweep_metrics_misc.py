"""Bad-argument sweep of metrics, exposure, data, models: refused cleanly, naming the argument.

Every case here failed before its fix (an OverflowError, AttributeError, a RuntimeError from
torch, a hang, a silently wrong result or an error naming no argument).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastunlearn import metrics as M
from fastunlearn.data import age_bins
from fastunlearn.exposure import CharLM, CharVocab, insert_canary, train_char_lm
from fastunlearn.models import build_model

G = torch.Generator().manual_seed(0)
R = torch.randn(4, 3, 3, generator=G)
U = torch.randn(4, 3, 3, generator=G)
Y = torch.tensor([0, 1, 2, 0])
Z2 = torch.randn(6, 3, generator=G)
Y2 = torch.tensor([0, 1, 2, 0, 1, 2])
NO_CUDA = not torch.cuda.is_available()


# ---- metrics: numbers ------------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "exc", "arg"), [
    ({"C": float("inf")}, ValueError, "'C'"),  # libsvm never returned
    ({"C": float("nan")}, ValueError, "'C'"),
    ({"C": 0.0}, ValueError, "'C'"),
    ({"C": -1}, ValueError, "'C'"),
    ({"C": True}, TypeError, "'C'"),  # was accepted as C = 1
    ({"C": "3"}, TypeError, "'C'"),
])
def test_svc_mia_refuses_bad_c(kwargs, exc, arg):
    pair = (Z2, Y2)
    with pytest.raises(exc, match=arg):
        M.svc_mia_efficacy(pair, pair, pair, **kwargs)


def test_svc_mia_valid_c_still_works():
    pair = (Z2, Y2)
    assert 0.0 <= M.svc_mia_efficacy(pair, pair, pair, C=3) <= 1.0


@pytest.mark.parametrize(("args", "arg"), [
    ((10**400, 1.0), "'seconds'"),  # OverflowError before
    ((1.0, 10**400), "'retrain_seconds'"),
])
def test_time_ratio_refuses_huge_ints(args, arg):
    with pytest.raises(ValueError, match=arg):
        M.time_ratio(*args)


@pytest.mark.parametrize(("value", "exc"), [
    ("no", TypeError),  # a truthy string used to mean "synchronise"
    (1, TypeError),
    pytest.param(True, ValueError, marks=pytest.mark.skipif(
        not NO_CUDA, reason="True is valid with a GPU")),  # RuntimeError at __enter__ before
])
def test_stopwatch_refuses_bad_cuda_sync(value, exc):
    with pytest.raises(exc, match="'cuda_sync'"):
        M.Stopwatch(cuda_sync=value)


def test_stopwatch_valid_values_still_work():
    with M.Stopwatch(cuda_sync=False) as sw:
        pass
    assert sw.seconds >= 0
    M.Stopwatch(cuda_sync=None)
    M.Stopwatch(cuda_sync=np.bool_(False))


@pytest.mark.parametrize("pos", range(5))
def test_final_score_refuses_huge_ints(pos):
    args = [0.5, 0.9, 0.9, 0.8, 0.8]
    args[pos] = 10**400
    name = ["forget", "ra_u", "ra_r", "ta_u", "ta_r"][pos]
    with pytest.raises(ValueError, match=f"'{name}'"):
        M.final_score(*args)


@pytest.mark.parametrize(("eps", "exc"), [
    ("abc", TypeError),  # torch's own message before
    (None, TypeError),  # RuntimeError before
    (torch.tensor([1 + 1j]), TypeError),  # silently 0 before
    (torch.tensor([True, False]), TypeError),  # read as 1.0 / 0.0 before
])
def test_forget_score_refuses_bad_epsilons(eps, exc):
    with pytest.raises(exc, match="'epsilons'"):
        M.forget_score(eps, 3)


def test_forget_score_valid_inputs_still_work():
    assert M.forget_score([0.1, 50.0, float("nan")], 3) == pytest.approx(1 / 3)
    assert M.forget_score(np.array([0.1, 0.2]), 3) == 1.0


@pytest.mark.parametrize(("acc", "exc"), [
    (["ra_u", "ra_r", "ta_u", "ta_r"], TypeError),  # 'list indices must be integers' before
    (5, TypeError),  # "'int' object is not iterable" before
])
def test_competition_score_refuses_bad_accuracies(acc, exc):
    with pytest.raises(exc, match="'accuracies'"):
        M.competition_score(R, U, Y, accuracies=acc)


def test_per_class_accuracy_refuses_num_classes_beyond_int64():
    with pytest.raises(ValueError, match="'num_classes'"):  # "Overflow when unpacking" before
        M.per_class_accuracy(Z2, Y2, 2**63)


# ---- metrics: evaluate_logits(_dir) ----------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "exc", "arg"), [
    # one model each: epsilon-hat and the competition score are skipped, so the bad
    # settings used to be accepted silently
    ({"delta": 5.0}, ValueError, "'delta'"),
    ({"competition_delta": -1.0}, ValueError, "'competition_delta'"),
    ({"competition_delta": "x"}, TypeError, "'competition_delta'"),
    ({"accuracies": 5}, TypeError, "'accuracies'"),
    ({"accuracies": {"ra_u": 1.0}}, ValueError, "'accuracies'"),
])
def test_evaluate_logits_checks_settings_even_when_scores_are_skipped(kwargs, exc, arg):
    with pytest.raises(exc, match=arg):
        M.evaluate_logits(R[:, :1], U[:, :1], Y, **kwargs)


def test_evaluate_logits_names_competition_delta():
    # the error named 'delta' (Seed A's) before
    with pytest.raises(ValueError, match="'competition_delta'"):
        M.evaluate_logits(R, U, Y, competition_delta=5.0)


@pytest.fixture
def logits_dir(tmp_path):
    return M.write_logits_dir(tmp_path / "logits", R, Y, {"m": U})


@pytest.mark.parametrize(("kwargs", "exc", "arg"), [
    ({"delta": 5.0}, ValueError, "'delta'"),  # became every method's 'error' before
    ({"competition_delta": "x"}, TypeError, "'competition_delta'"),
    ({"device": "bogus"}, ValueError, "'device'"),  # RuntimeError from torch before
    pytest.param({"device": "cuda"}, ValueError, "'device'",
                 marks=pytest.mark.skipif(not NO_CUDA, reason="valid with a GPU")),
])
def test_evaluate_logits_dir_refuses_bad_settings(logits_dir, kwargs, exc, arg):
    with pytest.raises(exc, match=arg):
        M.evaluate_logits_dir(logits_dir, baseline=False, **kwargs)


# ---- metrics: fixtures ------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "methods", "exc", "arg"), [
    ("", None, ValueError, "'path'"),  # read the current directory before
    (None, None, TypeError, "'path'"),
    (5, None, TypeError, "'path'"),
    (None, "m", TypeError, "'methods'"),  # a str was read as the list of its characters
    (None, [None], ValueError, "'methods'"),  # TypeError from pathlib before
    (None, [".."], ValueError, "'methods'"),  # read the parent folder's logits
])
def test_load_logits_dir_refuses_bad_arguments(logits_dir, path, methods, exc, arg):
    target = logits_dir if methods is not None else path
    with pytest.raises(exc, match=arg):
        M.load_logits_dir(target, methods)


def test_load_logits_dir_valid_methods_still_work(logits_dir):
    assert list(M.load_logits_dir(logits_dir, ["m"]).methods) == ["m"]
    assert list(M.load_logits_dir(str(logits_dir), ("m",)).methods) == ["m"]


@pytest.mark.parametrize(("kwargs", "exc", "arg"), [
    ({"methods": None}, TypeError, "'methods'"),  # AttributeError before
    ({"methods": [U]}, TypeError, "'methods'"),
    # classes differ: written before, then unreadable by load_logits_dir
    ({"methods": {"m": torch.randn(4, 3, 4)}}, ValueError, r"methods\['m'\]"),
    # examples differ: the error named 'labels' before
    ({"methods": {"m": U[:3]}}, ValueError, r"methods\['m'\]"),
    ({"metrics": 5}, TypeError, "'metrics'"),  # AttributeError before
    ({"metrics": {"m": 5}}, TypeError, r"metrics\['m'\]"),
    ({"metrics": {"m": {"acc": "xyz"}}}, TypeError, r"metrics\['m'\]"),  # wrote 'x','y','z'
    ({"forget_set": ["a"]}, TypeError, "'forget_set'"),
    ({"forget_set": [1.7]}, TypeError, "'forget_set'"),  # written as 1 before
    ({"forget_set": [-1]}, ValueError, "'forget_set'"),  # written before
    ({"forget_set": 5}, TypeError, "'forget_set'"),
    ({"forget_set": torch.tensor([0.5])}, TypeError, "'forget_set'"),
])
def test_write_logits_dir_refuses_bad_arguments(tmp_path, kwargs, exc, arg):
    args = {"methods": {"m": U}, **kwargs}
    methods = args.pop("methods")
    with pytest.raises(exc, match=arg):
        M.write_logits_dir(tmp_path / "out", R, Y, methods, **args)
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary folder left


def test_write_logits_dir_refuses_empty_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an empty cwd would have been replaced before
    with pytest.raises(ValueError, match="'path'"):
        M.write_logits_dir("", R, Y, {"m": U})
    assert list(tmp_path.iterdir()) == []


def test_write_logits_dir_valid_forget_sets_still_work(tmp_path):
    for i, fs in enumerate(([3, 1], torch.tensor([0, 2]), np.array([1], dtype=np.int32), [])):
        path = M.write_logits_dir(tmp_path / str(i), R, Y, {"m": U}, forget_set=fs)
        assert M.load_logits_dir(path).forget_set == [int(v) for v in fs]


# ---- exposure ---------------------------------------------------------------------------------

@pytest.fixture
def lm():
    torch.manual_seed(0)
    return CharLM(5, embed_dim=4, hidden=4)


@pytest.mark.parametrize(("kwargs", "exc", "arg"), [
    ({"lr": float("inf")}, ValueError, "'lr'"),  # every weight became NaN before
    ({"lr": float("nan")}, ValueError, "'lr'"),
    ({"lr": 0.0}, ValueError, "'lr'"),
    ({"lr": "0.1"}, TypeError, "'lr'"),
    ({"lr": True}, TypeError, "'lr'"),
    ({"weight_decay": float("inf")}, ValueError, "'weight_decay'"),  # NaN weights before
    ({"weight_decay": -1.0}, ValueError, "'weight_decay'"),
    ({"seed": "x"}, TypeError, "'seed'"),
    ({"seed": 2**64}, ValueError, "'seed'"),  # RuntimeError from torch before
    ({"seed": 1.5}, TypeError, "'seed'"),
])
def test_train_char_lm_refuses_bad_settings(lm, kwargs, exc, arg):
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    lm.eval()
    ids = torch.randint(5, (40,), generator=torch.Generator().manual_seed(1))
    with pytest.raises(exc, match=arg):
        train_char_lm(lm, ids, steps=2, seq_len=8, batch_size=2, **kwargs)
    assert not lm.training
    assert all(torch.equal(before[k], v) for k, v in lm.state_dict().items())


def test_train_char_lm_refuses_a_non_module():
    with pytest.raises(TypeError, match="'model'"):  # AttributeError before
        train_char_lm(None, torch.zeros(20, dtype=torch.int64), steps=1, seq_len=4)


@pytest.mark.parametrize("text", [None, 5, b"ab", ["ab", 5]])
def test_char_vocab_encode_refuses_non_str(text):
    with pytest.raises(TypeError, match="'text'"):
        CharVocab("ab").encode(text)


def test_char_vocab_encode_valid_inputs_still_work():
    v = CharVocab("ab")
    assert v.encode("ab").tolist() == [0, 1]
    assert v.encode(("ab", "ba")).tolist() == [[0, 1], [1, 0]]


@pytest.mark.parametrize("text", [None, ["A. B."]])
def test_insert_canary_refuses_non_str_text(text):
    with pytest.raises(TypeError, match="'text'"):
        insert_canary(text, "secret", 1)


# ---- data, models -----------------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "arg"), [
    ({"bin_width": 2**63}, "'bin_width'"),  # silently gave bin -1 before
    ({"num_bins": 2**70}, "'num_bins'"),  # OverflowError before
])
def test_age_bins_refuses_ints_beyond_int64(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        age_bins(torch.tensor([5, 30]), **kwargs)


def test_age_bins_largest_int64_still_works():
    assert age_bins(torch.tensor([5, 95]), num_bins=2**63 - 1).tolist() == [0, 9]


@pytest.mark.parametrize("name", [["mlp"], {"mlp": 1}])
def test_build_model_refuses_unhashable_name(name):
    with pytest.raises(ValueError, match="'name'"):  # "unhashable type" TypeError before
        build_model(name)
