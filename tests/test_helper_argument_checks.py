"""The public helpers of the experiment modules check their arguments and name them.

Found by listing every function in a module's ``__all__`` that no package re-exports (the
earlier API sweeps went through the packages' exports). Each ``# old:`` says what bad
input did before: a silent wrong answer or an error from deep inside.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from fastunlearn.forget.fisher import fisher_diagonal
from fastunlearn.forget.influence_method import weighted_loss
from fastunlearn.forget.pruning import movement_masks
from fastunlearn.forget.retrain import reinitialize
from fastunlearn.forget.scrub import tempered_kl
from fastunlearn.forget.unsir import UnsirConfig, unsir_noise_set
from fastunlearn.influence.canary import AUTO_DAMPING_BASE, auto_damping, canary_windows
from fastunlearn.influence.experiment import train_classifier
from fastunlearn.influence.feature_experiment import load_feature_data
from fastunlearn.metrics.competition import epsilon_table


def _classifier_data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(20, 3, generator=g), torch.arange(20) % 10


# old: epochs=-1 trained nothing and returned a time, batch_size=0 raised "range() arg 3
# must not be zero", lr=nan Adam's own error, float labels a cross-entropy error
@pytest.mark.parametrize(("change", "error", "match"), [
    ({"epochs": -1}, ValueError, "'epochs' must be >= 0, got -1"),
    ({"batch_size": 0}, ValueError, "'batch_size' must be >= 1, got 0"),
    ({"lr": math.nan}, ValueError, "'lr' must be finite and > 0, got nan"),
    ({"lr": 0.0}, ValueError, "'lr' must be finite and > 0, got 0.0"),
    ({"seed": -1}, ValueError, r"'seed' must be an int in \[0, 2\*\*64 - 1\], got -1"),
    ({"epochs": 1.5}, TypeError, "'epochs' must be an int, got float"),
    ({"y": "float"}, TypeError, "'y' must hold integer class labels, got torch.float32"),
    ({"y": "short"}, ValueError, "'X' and 'y' must have the same length, got 20 and 5"),
    ({"X": "numpy"}, TypeError, "'X' must be a torch.Tensor, got ndarray"),
    ({"model": "none"}, TypeError, "'model' must be an nn.Module, got NoneType"),
])
def test_train_classifier_refuses_bad_arguments(change, error, match):
    X, y = _classifier_data()
    model = nn.Linear(3, 10)
    before = [p.clone() for p in model.parameters()]
    X = X.numpy() if change.pop("X", None) == "numpy" else X
    y = {"float": y.float(), "short": y[:5]}.get(change.pop("y", None), y)
    target = None if change.pop("model", None) == "none" else model
    settings = {"epochs": 1, "lr": 0.1, "batch_size": 4, "seed": 0, **change}
    with pytest.raises(error, match=match):
        train_classifier(target, X, y, **settings)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_train_classifier_with_zero_epochs_leaves_the_model():
    X, y = _classifier_data()
    model = nn.Linear(3, 10)
    before = [p.clone() for p in model.parameters()]
    train_classifier(model, X, y, epochs=0, lr=0.1, batch_size=4, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_auto_damping_checks_the_window_count():
    assert auto_damping(224) == pytest.approx(AUTO_DAMPING_BASE)
    assert auto_damping(np.int64(448)) == pytest.approx(4 * AUTO_DAMPING_BASE)
    # old: 0 gave a damping of 0 and -3 a positive one
    with pytest.raises(ValueError, match="'num_affected' must be >= 1, got 0"):
        auto_damping(0)
    with pytest.raises(TypeError, match="'num_affected' must be an int, got float"):
        auto_damping(2.5)


def test_canary_windows_are_the_windows_touching_the_span():
    starts = canary_windows(torch.arange(50), [(10, 15)], 8)
    # a window starting at s holds characters s .. s + 8: it touches [10, 15) for s in 2..14
    assert starts.tolist() == list(range(2, 15))
    assert canary_windows(torch.arange(50), [(10, 15)], 8, stride=5).tolist() == [2, 7, 12, 14]


# old: a span past the text and seq_len=0 returned windows, a 2-D ids was read flat
@pytest.mark.parametrize(("ids", "spans", "seq_len", "error", "match"), [
    (torch.arange(50), [(45, 60)], 8, ValueError, r"'spans' holds \(45, 60\), not 0 <= a"),
    (torch.arange(50), [(5, 5)], 8, ValueError, r"'spans' holds \(5, 5\)"),
    (torch.arange(50), [(1.0, 3)], 8, TypeError, "'spans' must hold \\(a, b\\) pairs of ints"),
    (torch.arange(50), "ab", 8, TypeError, "'spans' must be a sequence of \\(a, b\\) pairs"),
    (torch.arange(50), [(10, 15)], 0, ValueError, "'seq_len' must be >= 1, got 0"),
    (torch.arange(50).reshape(5, 10), [(1, 2)], 8, TypeError, "'ids' must be a 1-D tensor"),
])
def test_canary_windows_refuse_bad_arguments(ids, spans, seq_len, error, match):
    with pytest.raises(error, match=match):
        canary_windows(ids, spans, seq_len)


def test_epsilon_table_checks_counts_and_delta():
    table = epsilon_table(5, 6)
    assert table.shape == (7, 6)
    assert table[0, 0] == math.inf  # FP = FN = 0
    # old: n_pos=-1 returned an empty table, delta=2 a table of logs of negative numbers
    with pytest.raises(ValueError, match="'n_pos' must be >= 1, got -1"):
        epsilon_table(-1, 5)
    with pytest.raises(ValueError, match="'n_neg' must be >= 1, got 0"):
        epsilon_table(5, 0)
    with pytest.raises(TypeError, match="'n_neg' must be an int, got float"):
        epsilon_table(5, 2.0)
    with pytest.raises(ValueError, match=r"'delta' must be in \[0, 1\), got 2.0"):
        epsilon_table(5, 5, delta=2.0)


def test_tempered_kl_checks_logits_and_temperature():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    assert tempered_kl(s, s, 2.0) == pytest.approx(0.0, abs=1e-6)
    assert tempered_kl(s, t, 2.0) > 0
    # old: temperature 0 gave nan and logits of different shapes a broadcasting error
    with pytest.raises(ValueError, match="'temperature' must be finite and > 0, got 0.0"):
        tempered_kl(s, t, 0.0)
    with pytest.raises(ValueError, match=r"'student_logits' \(3, 4\) and 'teacher_logits' "
                                         r"\(3, 5\) differ in shape"):
        tempered_kl(s, torch.randn(3, 5), 1.0)
    with pytest.raises(ValueError, match=r"'teacher_logits' must be \[batch, classes\]"):
        tempered_kl(s, torch.randn(12), 1.0)


def test_movement_masks_check_quantile_and_architecture():
    torch.manual_seed(0)
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    masks = movement_masks(a, b, 0.5)
    assert set(masks) == {"weight"} and masks["weight"].dtype == torch.bool
    # old: quantile=2 raised torch's quantile error, another architecture a size mismatch
    with pytest.raises(ValueError, match=r"'quantile' must be in \[0, 1\], got 2.0"):
        movement_masks(a, b, 2.0)
    with pytest.raises(ValueError, match=r"'moved' must have the architecture of "
                                         r"'original': its 'weight' is \(2, 4\), not \(2, 3\)"):
        movement_masks(a, nn.Linear(4, 2), 0.5)
    with pytest.raises(TypeError, match="'moved' must be an nn.Module, got dict"):
        movement_masks(a, {}, 0.5)


def test_load_feature_data_checks_the_split():
    data = load_feature_data("wine", test_fraction=0.3, seed=3)
    assert data.X_train.shape[0] + data.X_test.shape[0] == 178
    assert bool(torch.isfinite(data.X_train).all())
    # old: test_fraction=1.5 returned an empty training set and NaN test features
    for fraction in (1.5, 0.0, 1.0):
        with pytest.raises(ValueError, match=r"'test_fraction' must be in \(0, 1\)"):
            load_feature_data("wine", test_fraction=fraction)
    with pytest.raises(TypeError, match="'test_fraction' must be a real number, got str"):
        load_feature_data("digits", test_fraction="0.2")
    with pytest.raises(ValueError, match=r"'seed' must be an int in \[0, 2\*\*64 - 1\], got -2"):
        load_feature_data("wine", seed=-2)


def test_unsir_noise_set_and_reinitialize_name_bad_arguments():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    # old: torch.cat's "expected a non-empty list of Tensors"
    with pytest.raises(ValueError, match=r"'classes' must name at least one forget class, "
                                         r"got \[\]"):
        unsir_noise_set(model, [], (1, 2, 2), UnsirConfig())
    # old: AttributeError "'str' object has no attribute 'modules'"
    with pytest.raises(TypeError, match="'model' must be an nn.Module, got str"):
        reinitialize("model")


def test_fisher_diagonal_checks_labels_against_the_model():
    model = nn.Linear(4, 3)
    x = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    fisher = fisher_diagonal(model, TensorDataset(x, torch.arange(10) % 3))
    assert sorted(fisher) == ["bias", "weight"]
    # old: without num_classes an IndexError "Target 3 is out of bounds" from the loss
    with pytest.raises(ValueError, match="dataset: label 9 is out of range for a model with "
                                         "3 outputs"):
        fisher_diagonal(model, TensorDataset(x, torch.arange(10)))


def test_weighted_loss_needs_label_and_weight_columns():
    outputs = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([[0.0, 1.0], [1.0, 0.5], [2.0, 2.0]])
    expected = sum(w * torch.nn.functional.cross_entropy(outputs[i:i + 1], torch.tensor([c]))
                   for i, (c, w) in enumerate([(0, 1.0), (1, 0.5), (2, 2.0)]))
    assert weighted_loss(outputs, targets) == pytest.approx(float(expected))
    # old: IndexError "too many indices for tensor of dimension 1"
    with pytest.raises(ValueError, match=r"'targets' must be \[N, 2\] \(label, weight\) for "
                                         r"the 3 rows of 'outputs', got shape \(3,\)"):
        weighted_loss(outputs, torch.tensor([0, 1, 2]))
