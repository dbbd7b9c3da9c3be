"""Bad-argument sweep, part 2: grad, report, data and exposure leftovers.

Every case here failed before its fix; the comment on each says what happened then (a raw
TypeError/AttributeError/RuntimeError/OverflowError naming no argument, a silent wrong
result, or a file written before the error).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fastunlearn.data import (
    AgeImageFolder,
    extracted_features_path,
    load_features,
    load_features_or_pixels,
    load_vision_dataset,
    save_features,
    save_forget_indices,
)
from fastunlearn.exposure import CanaryConfig, CharLM, CharVocab, generate_corpus, insert_canary
from fastunlearn.grad import LAYER_RULES, LinearRule, PerSampleGradients, find_rule, register_rule
from fastunlearn.report import (
    format_value,
    plot_accuracy,
    plot_bounds,
    plot_times,
    render_markdown,
    write_markdown,
)

CE_SUM = nn.CrossEntropyLoss(reduction="sum")
HUGE = 10**400


def _net() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).train()
    return model, torch.randn(5, 3), torch.tensor([0, 1, 0, 1, 1])


def _state(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


# ---- grad: PerSampleGradients ------------------------------------------------------------

def test_params_not_iterable_names_params():
    model, _, _ = _net()
    with pytest.raises(TypeError, match="params"):  # was: "'int' object is not iterable"
        PerSampleGradients(model, params=5)


@pytest.mark.parametrize("loss_fn", [None, "ce", 3])
def test_loss_fn_not_callable_refused_before_the_forward(loss_fn):
    model, x, y = _net()
    engine = PerSampleGradients(model, params=["0.weight", "2.weight"])
    before = _state(model)
    # was: "'NoneType' object is not callable" after the forward had updated BN statistics
    with pytest.raises(TypeError, match="loss_fn"):
        engine.sq_norms(x, y, loss_fn)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert model.training and all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("loss_fn", [
    lambda o, t: (o.sum() * 1j),  # was: RuntimeError "cannot be converted to type double"
    lambda o, t: t,  # an int64 [B] "loss": was silently all-zero norms
])
def test_loss_fn_returning_non_real_float_refused(loss_fn):
    model, x, y = _net()
    model.eval()
    with pytest.raises(ValueError, match="loss_fn"):
        PerSampleGradients(model).sq_norms(x, y, loss_fn)
    assert all(p.grad is None for p in model.parameters())


def test_max_norm_huge_int_and_numpy_scalars():
    model, x, y = _net()
    model.eval()
    engine = PerSampleGradients(model)
    with pytest.raises(ValueError, match="max_norm"):  # was: OverflowError
        engine.clipped_sum(x, y, CE_SUM, HUGE)
    # np.float32 was refused as "not a finite number > 0"; np.float64 always worked
    a = engine.clipped_sum(x, y, CE_SUM, np.float32(1.0))
    b = engine.clipped_sum(x, y, CE_SUM, 1.0)
    for n in a:
        torch.testing.assert_close(a[n], b[n])


def test_dots_complex_vector_refused():
    model, x, y = _net()
    model.eval()
    engine = PerSampleGradients(model)
    total = sum(p.numel() for p in model.parameters())
    # was: accepted, the imaginary part dropped with only a ComplexWarning
    with pytest.raises(ValueError, match="vector"):
        engine.dots(x, y, CE_SUM, torch.ones(total, dtype=torch.complex64))


@pytest.mark.parametrize(("types", "rule", "exc", "arg"), [
    (("x",), LinearRule, TypeError, "module_types"),  # was: registered 'x' silently
    ((int,), LinearRule, TypeError, "module_types"),
    ((), LinearRule, ValueError, "module_types"),  # was: a silent no-op
    ((nn.Tanh,), int, TypeError, "rule_cls"),  # was: registered 0 as Tanh's rule
    ((nn.Tanh,), LinearRule(), TypeError, "rule_cls"),  # was: "object is not callable"
])
def test_register_rule_refuses_bad_arguments(types, rule, exc, arg):
    before = dict(LAYER_RULES)
    with pytest.raises(exc, match=arg):
        register_rule(*types)(rule)
    assert before == LAYER_RULES


@pytest.mark.parametrize("module", [None, "x", nn.Linear])
def test_find_rule_refuses_non_modules(module):
    with pytest.raises(TypeError, match="module"):  # was: returned None
        find_rule(module)


# ---- report --------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "want"), [
    (np.float32("nan"), "-"),  # was "nan" (a Python float NaN gives "-")
    (np.bool_(True), "yes"),  # was "True"
    (np.float32(1 / 3), "0.3333"),  # was str(): "0.33333334", ignoring spec
])
def test_format_value_numpy_scalars(value, want):
    assert format_value(value) == want


@pytest.mark.parametrize(("spec", "exc"), [(None, TypeError), (3, TypeError), ("zz", ValueError)])
def test_format_value_bad_spec(spec, exc):
    with pytest.raises(exc, match="spec"):  # was: format()'s error naming no argument
        format_value(1.5, spec)


@pytest.mark.parametrize(("result", "kwargs", "arg"), [
    (None, {}, "result"),  # all: AttributeError "... has no attribute 'get'" before
    ([], {}, "result"),
    ({"config": []}, {}, r"result\['config'\]"),
    ({"privacy": "x"}, {}, r"result\['privacy'\]"),
    ({"privacy": {"extractor": "x"}}, {}, "extractor"),
    ({"fairness": {"before": [1]}}, {}, "before"),
    ({"fairness": {"after": {"per_class": [0.5]}}}, {}, "per_class"),
    ({"timings": [1]}, {}, "timings"),
    ({"records": [None]}, {}, r"records'\]\[0\]"),
    ({"records": "abc"}, {}, "records"),
    ({}, {"plots": ["x"]}, "plots"),
    ({}, {"plots": {"bounds_plot": 3}}, "plots"),  # TypeError from Path, no name
    ({}, {"base_dir": 3}, "base_dir"),
])
def test_render_markdown_refuses_malformed_results(result, kwargs, arg):
    with pytest.raises(TypeError, match=arg):
        render_markdown(result, **kwargs)


def test_render_markdown_none_sections_are_missing():
    text = render_markdown({"config": None, "data": None, "files": None, "records": None})
    assert "No removal was made." in text


@pytest.mark.parametrize(("path", "exc"), [
    ("", ValueError),  # was: "PosixPath('.') has an empty name"
    (None, TypeError),
    (3, TypeError),
    ("DIR", ValueError),  # was: IsADirectoryError from the rename, naming a temp file
])
@pytest.mark.parametrize("writer", ["markdown", "bounds", "accuracy", "times"])
def test_report_writers_refuse_bad_paths(tmp_path, path, exc, writer):
    path = tmp_path if path == "DIR" else path
    calls = {
        "markdown": lambda: write_markdown({}, path),
        "bounds": lambda: plot_bounds([], 1.0, path),
        "accuracy": lambda: plot_accuracy([], path),
        "times": lambda: plot_times([], None, path),
    }
    with pytest.raises(exc, match="'path'"):
        calls[writer]()
    assert list(tmp_path.iterdir()) == []


def test_write_markdown_bad_result_creates_no_folder(tmp_path):
    # was: the folder was created, then AttributeError
    with pytest.raises(TypeError, match="result"):
        write_markdown(None, tmp_path / "sub" / "r.md")
    assert not (tmp_path / "sub").exists()


@pytest.mark.parametrize(("call", "arg"), [
    (lambda p: plot_bounds(None, 1.0, p), "records"),  # "'NoneType' object is not iterable"
    (lambda p: plot_bounds("ab", 1.0, p), "records"),  # was plotted as 2 empty records
    (lambda p: plot_bounds([None], 1.0, p), r"records\[0\]"),  # was plotted silently
    (lambda p: plot_bounds([{"bound": "x"}], 1.0, p), "records"),  # could not convert str
    (lambda p: plot_bounds([{"n_removed": "a"}], 1.0, p), "records"),
    (lambda p: plot_bounds([], 1.0, p, worst_case="x"), "worst_case"),  # must be real number
    (lambda p: plot_bounds([{"worst_case": 1.0}], 1.0, p, worst_case=True), "worst_case"),
    (lambda p: plot_accuracy(None, p), "evaluations"),
    (lambda p: plot_accuracy([{"test_accuracy": "x"}], p), "evaluations"),
    (lambda p: plot_accuracy([], p, retrains=None), "retrains"),
    (lambda p: plot_accuracy([], p, retrains=3), "retrains"),
    (lambda p: plot_times([None], 1.0, p), r"records\[0\]"),
    (lambda p: plot_times([], "1", p), "retrain_seconds"),  # must be real number, not str
    (lambda p: plot_times([], True, p), "retrain_seconds"),  # was drawn as 1 s
    (lambda p: plot_times([{"seconds": torch.ones(2)}], None, p), "records"),
])
def test_plots_refuse_bad_records_and_numbers(tmp_path, call, arg):
    out = tmp_path / "plot.png"
    with pytest.raises(TypeError, match=arg):
        call(out)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("call", [
    lambda p: plot_bounds([{"n_removed": HUGE, "cumulative": HUGE}], 1.0, p),  # OverflowError
    lambda p: plot_bounds([{"cumulative": 1.0}], 1.0, p, worst_case=HUGE),
    lambda p: plot_times([{"seconds": 0.1}], HUGE, p),
])
def test_plots_huge_ints_do_not_overflow(tmp_path, call):
    assert call(tmp_path / "plot.png").is_file()


def test_plot_bounds_huge_budget_named(tmp_path):
    with pytest.raises(ValueError, match="budget"):  # was: OverflowError
        plot_bounds([], HUGE, tmp_path / "b.png")


# ---- data ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "arg"), [
    ({"train": "no"}, "train"),  # a truthy string loaded the training split
    ({"train": None}, "train"),
    ({"svhn_extra": "no"}, "svhn_extra"),
    ({"verify": "no"}, "verify"),
    ({"transform": 3}, "transform"),
])
def test_load_vision_dataset_checks_flags_first(tmp_path, kwargs, arg):
    # was: FileNotFoundError for the empty folder (and a wrong split with the files there)
    with pytest.raises(TypeError, match=arg):
        load_vision_dataset("mnist", tmp_path, **kwargs)


@pytest.mark.parametrize("data_dir", [None, 3])
def test_extracted_features_path_data_dir_type(data_dir):
    with pytest.raises(TypeError, match="data_dir"):  # was: Path's TypeError, no name
        extracted_features_path(data_dir, "e", "mnist")


@pytest.mark.parametrize(("path", "exc"), [
    ("", ValueError), (None, TypeError), ("DIR", ValueError)])
def test_save_features_bad_path(tmp_path, monkeypatch, path, exc):
    monkeypatch.chdir(tmp_path)  # '' used to write a temp file into the working folder
    path = tmp_path if path == "DIR" else path
    with pytest.raises(exc, match="'path'"):  # was: OSError "Device or resource busy"
        save_features(path, torch.randn(2, 3), torch.tensor([0, 1]))
    assert list(tmp_path.iterdir()) == []


def test_save_features_same_tensor_for_two_splits(tmp_path):
    X, y = torch.randn(3, 2), torch.tensor([0, 1, 0])
    # was: RuntimeError from safetensors, "Some tensors share memory"
    path = save_features(tmp_path / "f.safetensors", {"train": X, "test": X},
                         {"train": y, "test": y})
    feats, labs, _ = load_features(path)
    assert torch.equal(feats["test"], X) and torch.equal(labs["train"], y)


@pytest.mark.parametrize("path", [None, 3])
def test_load_features_path_type(path):
    with pytest.raises(TypeError, match="'path'"):  # was: Path's TypeError, no name
        load_features(path)


def test_load_features_refuses_float_labels_beyond_int64(tmp_path):
    torch.save({"X_train": torch.randn(2, 3), "y_train": torch.tensor([1e30, 2.0])},
               tmp_path / "f.pt")
    with pytest.raises(ValueError, match="y_train"):  # was: silently wrapped to int64 min
        load_features(tmp_path / "f.pt")


def test_load_features_or_pixels_huge_binary_class(tmp_path):
    X, y = torch.randn(4, 2), torch.tensor([0, 1, 0, 1])
    save_features(tmp_path / "e_mnist_extracted.safetensors", {"train": X, "test": X},
                  {"train": y, "test": y})
    with pytest.raises(ValueError, match="binary"):  # was: OverflowError / RuntimeError
        load_features_or_pixels("mnist", tmp_path, extractor="e", binary=(HUGE, 1))


@pytest.mark.parametrize(("path", "exc"), [
    ("", ValueError), (None, TypeError), (3, TypeError), ("DIR", ValueError)])
def test_save_forget_indices_bad_path(tmp_path, path, exc):
    path = tmp_path if path == "DIR" else path
    with pytest.raises(exc, match="'path'"):  # was: Path errors / IsADirectoryError
        save_forget_indices(path, [1, 2])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("indices", "exc"), [
    (None, TypeError),  # RuntimeError "Could not infer dtype of NoneType"
    ("12", TypeError),  # new(): invalid data type 'str'
    ({1, 2}, TypeError),  # RuntimeError
    ([2**70], ValueError),  # torch: "Overflow when unpacking long long", no name
    (np.array([2**63], dtype=np.uint64), ValueError),  # NotImplementedError "min_all"
])
def test_save_forget_indices_bad_indices(tmp_path, indices, exc):
    with pytest.raises(exc, match="indices"):
        save_forget_indices(tmp_path / "i.txt", indices)
    assert list(tmp_path.iterdir()) == []


def test_save_forget_indices_empty_list_like_empty_tensor(tmp_path):
    # [] was refused as "must hold integers, got dtype float32"; an empty int tensor was not
    assert save_forget_indices(tmp_path / "a.txt", []).read_text() == ""
    assert save_forget_indices(tmp_path / "b.txt", np.array([3], dtype=np.uint64)).read_text() \
        == "3\n"


@pytest.fixture
def age_folder(tmp_path):
    for age in (23, 35, 47):
        (tmp_path / str(age)).mkdir()
        Image.new("RGB", (4, 4)).save(tmp_path / str(age) / "x.png")
    return AgeImageFolder(tmp_path)


@pytest.mark.parametrize("index", [True, "a", None, 1.0, slice(0, 2)])
def test_age_folder_getitem_refuses_non_int_index(age_folder, index):
    # True returned a [1, 3] label tensor; the others raised raw TypeErrors
    with pytest.raises(TypeError, match="index"):
        age_folder[index]


def test_age_folder_getitem_integer_like_indices_still_work(age_folder):
    assert int(age_folder[np.int64(1)][1]) == int(age_folder[torch.tensor(1)][1]) == 3


# ---- exposure leftovers --------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "exc", "arg"), [
    ({"lr": True}, TypeError, "'lr'"),  # was accepted as lr = 1
    ({"lr": "x"}, TypeError, "'lr'"),  # raw "'>' not supported"
    ({"weight_decay": "x"}, TypeError, "'weight_decay'"),
    ({"lr": HUGE}, ValueError, "'lr'"),  # OverflowError
    ({"seed": 2**64}, ValueError, "'seed'"),  # accepted until training
    ({"seed": -1}, ValueError, "'seed'"),
])
def test_canary_config_bad_numbers(kwargs, exc, arg):
    with pytest.raises(exc, match=arg):
        CanaryConfig(**kwargs)


def test_canary_config_numpy_lr_still_works():
    assert CanaryConfig(lr=np.float32(0.01), seed=2**64 - 1).seed == 2**64 - 1


@pytest.mark.parametrize("seed", [None, "1", 1.0, True])
def test_text_generators_check_seed(seed):
    # None seeded from the clock, strings and floats were accepted
    with pytest.raises(TypeError, match="'seed'"):
        generate_corpus(3, seed=seed)
    with pytest.raises(TypeError, match="'seed'"):
        insert_canary("A b. C d.", "x", 1, seed=seed)


def test_vocab_decode_numpy_and_bad_types():
    vocab = CharVocab.from_texts("ab ")
    ids = vocab.encode("ab a")
    # an int numpy array was refused as "outside the vocabulary"
    assert vocab.decode(ids.numpy()) == "ab a"
    assert vocab.decode([np.int64(i) for i in ids.tolist()]) == "ab a"
    with pytest.raises(ValueError, match="'ids'"):
        vocab.decode(ids.numpy()[None])
    for bad in (None, 3, "ab"):  # raw "object is not iterable" / str ids
        with pytest.raises(TypeError, match="'ids'"):
            vocab.decode(bad)
    with pytest.raises(TypeError, match="'texts'"):  # "sequence item 0: expected str"
        CharVocab.from_texts(None)


@pytest.mark.parametrize(("tokens", "exc"), [
    (torch.zeros(1, 3), TypeError),  # RuntimeError from the embedding
    ([[1, 2]], TypeError),
    (torch.tensor([[0, 99]]), ValueError),  # IndexError "index out of range in self"
    (torch.tensor([[-1, 0]]), ValueError),
    (torch.tensor([1, 2]), ValueError),  # 1-D: silently unbatched [T, V] logits
    (torch.zeros(1, 2, 3, dtype=torch.long), ValueError),  # RuntimeError from the LSTM
])
def test_char_lm_forward_bad_tokens(tokens, exc):
    model = CharLM(5, embed_dim=4, hidden=8)
    with pytest.raises(exc, match="'tokens'"):
        model(tokens)


def test_char_lm_forward_valid_tokens_still_work():
    logits, _ = CharLM(5, embed_dim=4, hidden=8)(torch.tensor([[0, 4, 2]], dtype=torch.int32))
    assert logits.shape == (1, 3, 5)
