import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from fastunlearn.data import DigitsSplit, digits_images, load_digits_dataset

N_DIGITS = 1797
N_THREES, N_EIGHTS = 183, 174  # class sizes of the bundled digits


def test_all_classes_shapes_and_labels():
    split = load_digits_dataset()
    assert isinstance(split, DigitsSplit)
    assert split.classes == tuple(range(10))
    assert split.n_classes == 10 and split.n_features == 64
    assert split.X_train.shape[0] + split.X_test.shape[0] == N_DIGITS
    assert split.X_train.shape[1] == split.X_test.shape[1] == 64
    assert split.y_train.shape == (split.X_train.shape[0],)
    assert split.y_test.shape == (split.X_test.shape[0],)
    assert split.X_train.dtype == torch.float64 and split.y_train.dtype == torch.int64
    assert set(split.y_train.tolist()) == set(range(10))
    assert set(split.y_test.tolist()) == set(range(10))
    # 20 % of each class, rounded, so about 360 test rows
    assert 340 <= split.X_test.shape[0] <= 380


def test_binary_three_vs_eight():
    split = load_digits_dataset(binary=(3, 8))
    # the first digit is the positive class (label 1), as in the reference's MNIST 3 vs 8
    assert split.classes == (8, 3) and split.n_classes == 2
    y = torch.cat([split.y_train, split.y_test])
    assert set(y.tolist()) == {0, 1}
    assert int((y == 1).sum()) == N_THREES and int((y == 0).sum()) == N_EIGHTS
    # the label order follows the pair: (8, 3) swaps the labels of the same images
    swapped = load_digits_dataset(binary=(8, 3))
    assert torch.equal(swapped.X_train, split.X_train)
    assert torch.equal(swapped.y_train, 1 - split.y_train)


def test_binary_split_is_the_subset_of_the_ten_class_split():
    full = load_digits_dataset(normalize=False)
    split = load_digits_dataset(binary=(3, 8), normalize=False)
    for X, y, Xb, yb in [
        (full.X_train, full.y_train, split.X_train, split.y_train),
        (full.X_test, full.y_test, split.X_test, split.y_test),
    ]:
        keep = (y == 3) | (y == 8)
        assert torch.equal(X[keep], Xb)
        assert torch.equal((y[keep] == 3).long(), yb)


def test_normalize_unit_rows_and_raw_range():
    split = load_digits_dataset(binary=(3, 8))
    norms = torch.linalg.vector_norm(torch.cat([split.X_train, split.X_test]), dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    raw = load_digits_dataset(normalize=False)
    X = torch.cat([raw.X_train, raw.X_test])
    assert X.min() == 0 and X.max() == 16
    assert torch.equal(X, X.round())


def test_stratified_split_keeps_class_balance():
    split = load_digits_dataset(test_fraction=0.3)
    train_counts = torch.bincount(split.y_train, minlength=10).double()
    test_counts = torch.bincount(split.y_test, minlength=10).double()
    frac = test_counts / (train_counts + test_counts)
    assert torch.all((frac - 0.3).abs() < 0.01)


def test_deterministic_and_seed_dependent():
    a = load_digits_dataset(seed=1)
    b = load_digits_dataset(seed=1)
    c = load_digits_dataset(seed=2)
    assert torch.equal(a.X_train, b.X_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.y_train, c.y_train) or not torch.equal(a.X_train, c.X_train)
    # train and test are disjoint and together cover every image exactly once: as multisets
    # of rows they equal scikit-learn's raw digits (rows scaled to unit L2 norm, as documented)
    raw = load_digits().data.astype(np.float64)
    scaled = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    for split in (a, c):
        both = torch.cat([split.X_train, split.X_test]).numpy()
        np.testing.assert_allclose(sorted_rows(both), sorted_rows(scaled), rtol=0, atol=1e-15)
        unscaled = load_digits_dataset(seed=1 if split is a else 2, normalize=False)
        both = torch.cat([unscaled.X_train, unscaled.X_test]).numpy()
        np.testing.assert_array_equal(sorted_rows(both), sorted_rows(raw))


def sorted_rows(X):
    """Rows of X in lexicographic order (duplicates kept)."""
    return X[np.lexsort(X.T[::-1])]


def test_returned_tensors_are_independent_copies():
    a = load_digits_dataset()
    a.X_train.zero_()
    b = load_digits_dataset()
    assert b.X_train.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype(dtype):
    split = load_digits_dataset(dtype=dtype)
    assert split.X_train.dtype == dtype and split.X_test.dtype == dtype
    images, labels = digits_images(dtype=dtype)
    assert images.dtype == dtype


def test_digits_images():
    images, labels = digits_images()
    assert images.shape == (N_DIGITS, 1, 8, 8) and images.dtype == torch.float32
    assert labels.shape == (N_DIGITS,) and labels.dtype == torch.int64
    assert set(labels.tolist()) == set(range(10))
    assert images.min() == 0 and images.max() == 1
    raw = load_digits_dataset(normalize=False, test_fraction=0.5)
    flat = images.reshape(N_DIGITS, 64).double() * 16
    # the same pixels as the flat features, in row-major image order
    assert (flat == raw.X_train[0]).all(dim=1).any()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"binary": (3, 3)}, "binary"),
        ({"binary": (3, 10)}, "binary"),
        ({"binary": (-1, 2)}, "binary"),
        ({"binary": (3,)}, "binary"),
        ({"test_fraction": 0.0}, "test_fraction"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"test_fraction": -0.5}, "test_fraction"),
        ({"seed": -1}, "seed"),
        ({"dtype": torch.int64}, "dtype"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=f"'{name}'"):
        load_digits_dataset(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"dtype": "float32"}, "dtype"), ({"seed": 1.5}, "seed"),
     # wrong types (were ValueError): a string or float digit, a string fraction
     ({"binary": "38"}, "binary"), ({"binary": (3.0, 8)}, "binary"),
     ({"test_fraction": "0.2"}, "test_fraction")],
)
def test_wrong_types_raise_type_error_naming_them(kwargs, name):
    with pytest.raises(TypeError, match=f"'{name}'"):
        load_digits_dataset(**kwargs)


def test_digits_images_bad_dtype():
    with pytest.raises(ValueError, match="'dtype'"):
        digits_images(dtype=torch.int32)
