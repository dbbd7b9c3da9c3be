"""Unusual dtypes through the forgetting methods, the harness, exposure and the data helpers.

Each test is one defect the dtype sweep found; ``# old:`` says what happened before. A
refusal must be a TypeError / ValueError naming the argument, with the caller's model left
unchanged; a supported dtype must give the right answer in the model's own dtype.
"""

import numpy as np
import pytest
import torch
from helpers import used_settings
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from fastunlearn.data import parse_forget_spec
from fastunlearn.exposure import (
    CharLM,
    CharVocab,
    fit_skew_normal,
    rank_exposure,
    skew_normal_exposure,
    train_char_lm,
)
from fastunlearn.forget import run_method
from fastunlearn.forget.checks import check_unique
from fastunlearn.harness import TrainSettings, collect_logits, train_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _mlp(dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).to(dtype)


def _data(dtype=torch.float32):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(24, 4, generator=gen).to(dtype)
    y = torch.arange(24) % 3
    return x, y


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model, before):
    after = model.state_dict()
    return all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype
               for k in before)


class _Items(Dataset):
    """A map-style data set that does not expose its labels (no ``targets``)."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


# old: TypeError "Got unsupported ScalarType BFloat16" from numpy in the duplicate check of
# every method (bf16 inputs could not be hashed)
@pytest.mark.parametrize("method", ["finetune", "neggrad", "scrub"])
def test_bf16_model_and_inputs_run_and_keep_dtype(method):
    model = _mlp(torch.bfloat16)
    before = _state(model)
    x, y = _data(torch.bfloat16)
    new = run_method(method, model, (x[:6], y[:6]), (x[6:], y[6:]), epochs=1, batch_size=8)
    assert {p.dtype for p in new.parameters()} == {torch.bfloat16}
    assert all(bool(torch.isfinite(p.float()).all()) for p in new.parameters())
    assert _unchanged(model, before)


# old: the bf16 duplicate check raised numpy's TypeError instead of finding the duplicate
def test_bf16_duplicate_forget_rows_are_found():
    x, y = _data(torch.bfloat16)
    ds = TensorDataset(torch.cat([x[:3], x[:1]]), torch.cat([y[:3], y[:1]]))
    with pytest.raises(ValueError, match="forget: rows 0 and 3 are the same example"):
        check_unique(ds, "forget")


# old: RuntimeError "mat1 and mat2 must have the same dtype, but got Float and BFloat16"
# (the anti-samples were generated and trained on in float32)
def test_antisamples_bf16_model_trains_in_bf16():
    model = _mlp(torch.bfloat16)
    before = _state(model)
    x, y = _data(torch.bfloat16)
    new = run_method("antisamples_multiclass", model, (x[:6], y[:6]), (x[6:], y[6:]),
                     epochs=1, batch_size=8)
    assert {p.dtype for p in new.parameters()} == {torch.bfloat16}
    assert all(bool(torch.isfinite(p.float()).all()) for p in new.parameters())
    assert _unchanged(model, before)


# old: bad_teacher returned a model of inf/NaN weights (Adam's state underflows in float16);
# antisamples_multiclass raised torch's RuntimeError; unsir trained to NaN or failed deep
@pytest.mark.parametrize("method", ["bad_teacher", "antisamples_multiclass", "unsir"])
def test_adam_methods_refuse_float16_model(method):
    model = _mlp(torch.float16)
    before = _state(model)
    x, y = _data(torch.float16)
    forget = y == 0
    rng = torch.get_rng_state()
    with pytest.raises(TypeError, match=rf"{method}: 'model' must not have float16"):
        run_method(method, model, (x[forget], y[forget]), (x[~forget], y[~forget]),
                   **used_settings(method, epochs=1, batch_size=8))
    assert _unchanged(model, before)
    assert torch.equal(rng, torch.get_rng_state())


# old: TypeError "'B' must be float32 or float64, got torch.bfloat16" from the solver,
# naming an argument the caller never passed
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_influence_refuses_half_model_naming_it(dtype):
    model = _mlp(dtype)
    before = _state(model)
    x, y = _data(dtype)
    with pytest.raises(TypeError, match=r"influence: 'model' must have float32 or float64"):
        run_method("influence", model, (x[:6], y[:6]), (x[6:], y[6:]))
    assert _unchanged(model, before)


# old: RuntimeError "expected target dtype to be Long or Byte, but got Int" (int32 labels
# of a TensorDataset reached cross_entropy unconverted)
@pytest.mark.parametrize("method", ["scrub", "salun", "neggrad_plus"])
@pytest.mark.parametrize("label_dtype", [torch.int32, torch.int16])
def test_int32_labels_in_a_tensor_dataset_match_int64(method, label_dtype):
    x, y = _data()
    ref = run_method(method, _mlp(), TensorDataset(x[:6], y[:6]),
                     TensorDataset(x[6:], y[6:]), epochs=1, batch_size=8)
    new = run_method(method, _mlp(), TensorDataset(x[:6], y[:6].to(label_dtype)),
                     TensorDataset(x[6:], y[6:].to(label_dtype)), epochs=1, batch_size=8)
    for a, b in zip(ref.parameters(), new.parameters(), strict=True):
        assert torch.equal(a, b)


# old: a data set hiding its labels with float labels 0.5 / 1.5 was accepted: truncated to
# 0 / 1 by int() or .long() (random_labels, influence, fisher) or never looked at
@pytest.mark.parametrize("method", ["finetune", "random_labels", "influence", "fisher",
                                    "retrain", "bad_teacher"])
@pytest.mark.parametrize("kind", ["float", "bool"])
def test_float_or_bool_labels_of_a_custom_dataset_are_refused(method, kind):
    model = _mlp()
    before = _state(model)
    x, y = _data()
    labels = y.float() + 0.5 if kind == "float" else y > 0
    with pytest.raises(TypeError, match=r"forget: labels must be integers"):
        run_method(method, model, _Items(x[:6], labels[:6]), (x[6:], y[6:]),
                   **used_settings(method, epochs=1, batch_size=8))
    assert _unchanged(model, before)


# old: bool tensors were scored as 0/1 (rank exposure 0.0) while numpy bools were refused
@pytest.mark.parametrize("call, arg", [
    (lambda b: rank_exposure(1.0, b), "candidates"),
    (lambda b: skew_normal_exposure(1.0, b), "candidates"),
    (lambda b: fit_skew_normal(b), "candidates"),
    (lambda b: rank_exposure(torch.tensor(True), [1.0, 2.0]), "canary"),
])
def test_exposure_refuses_bool_tensors(call, arg):
    values = torch.arange(20) % 3 == 0
    with pytest.raises(TypeError, match=f"'{arg}' must"):
        call(values)


# old: Adam turned a float16 model's weights into NaN without an error (loss nan)
def test_train_char_lm_refuses_float16_model():
    vocab = CharVocab.from_texts("my number is 0123456789")
    ids = vocab.encode("my number is 0123456789 " * 4)
    torch.manual_seed(0)
    model = CharLM(vocab.size, embed_dim=4, hidden=8).half()
    before = _state(model)
    with pytest.raises(TypeError, match=r"'model' must not have float16 parameters"):
        train_char_lm(model, ids, steps=2, seq_len=8, batch_size=4)
    assert _unchanged(model, before)


# old: a float64 model's logits were rounded to float32
def test_collect_logits_keeps_float64():
    model = _mlp(torch.float64)
    x, _ = _data(torch.float64)
    out = collect_logits(model, x, batch_size=7)
    assert out.dtype == torch.float64
    with torch.no_grad():
        torch.testing.assert_close(out, model.eval()(x), rtol=0, atol=0)


# old: RuntimeError "mat1 and mat2 must have the same dtype" from inside the model
@pytest.mark.parametrize("model_dtype, x_dtype", [
    (torch.float32, torch.float64), (torch.float64, torch.float32),
    (torch.float32, torch.float16), (torch.float32, torch.uint8),
])
def test_collect_logits_mismatched_dtype_names_x(model_dtype, x_dtype):
    model = _mlp(model_dtype).train()
    x, _ = _data()
    with pytest.raises(TypeError, match=rf"'x' is {x_dtype} but the model's parameters"):
        collect_logits(model, x.to(x_dtype))
    assert model.training


# old: TypeError "model cannot run on the inputs ..." without naming the argument
def test_train_model_mismatched_dtype_names_x():
    model = _mlp()
    before = _state(model)
    x, y = _data(torch.float64)
    with pytest.raises(TypeError, match=r"^'x': model cannot run on the inputs \(dtype "
                                        r"torch.float64.*parameters torch.float32"):
        train_model(model, x, y, TrainSettings(epochs=1, batch_size=8), seed=0)
    assert _unchanged(model, before)



# old: TypeError "Got unsupported ScalarType BFloat16" from numpy, in the data digest that
# every run_harness computes; now the run gets as far as the model, and the error names
# the argument and its field ('data': x_train; it named the inner helper's 'x' until
# 2026-12-02)
def test_run_harness_with_bf16_data_names_the_data():
    from fastunlearn.harness import HarnessConfig, HarnessData, run_harness

    images = torch.rand(24, 1, 4, 4, generator=torch.Generator().manual_seed(1)).bfloat16()
    data = HarnessData(images, torch.arange(24) % 3, images[:6], torch.arange(6) % 3,
                       num_classes=3)
    config = HarnessConfig(methods=("finetune",), forget="class:1", seeds=1, oracles=1,
                           mia=False, train=TrainSettings(epochs=1, batch_size=8),
                           cache_dir=None)
    with pytest.raises(TypeError, match=r"^'data': x_train: model cannot run on the inputs \(dtype "
                                        r"torch.bfloat16"):
        run_harness(config, data)

# old: a negative label was accepted ("class:1" split around a label -1)
@pytest.mark.parametrize("labels", [torch.tensor([-1, 1, 2, 1]),
                                    np.array([0, 1, -3, 1], dtype=np.int32)])
def test_parse_forget_spec_refuses_negative_labels(labels):
    with pytest.raises(ValueError, match=r"'labels' must be class numbers >= 0"):
        parse_forget_spec("class:1", labels)
