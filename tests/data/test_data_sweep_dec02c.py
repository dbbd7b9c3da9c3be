"""Data sweep (2 Dec, c): feature-file round trips, format versions, file origins, BOM files.

Found by probing as a user: ``save_features("f.pt", ...)`` wrote safetensors that
``load_features`` then read as a torch pickle and refused; a feature file of another format
version, or whose ``meta`` header is not a JSON object, loaded silently; a feature file
renamed to another extractor's or data set's name was used as that one; an index file with a
UTF-8 byte-order mark was refused on its first index.
"""

import json

import pytest
import torch
from safetensors.torch import save_file

from fastunlearn.data import (
    extracted_features_path,
    load_digits_dataset,
    load_features,
    load_features_or_pixels,
    load_forget_indices,
    parse_forget_spec,
    save_features,
)


def _data():
    X = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    return X, torch.tensor([0, 1, 0, 1])


@pytest.mark.parametrize("suffix", [".pt", ".pth"])
def test_save_features_refuses_the_torch_pickle_suffixes(tmp_path, suffix):
    X, y = _data()
    with pytest.raises(ValueError, match=r"'path' .* ends in .*\.safetensors"):
        save_features(tmp_path / f"f{suffix}", X, y)
    assert list(tmp_path.iterdir()) == []


def test_safetensors_round_trip_keeps_splits_dtype_and_meta(tmp_path):
    X, y = _data()
    path = save_features(
        tmp_path / "f.safetensors",
        {"train": X, "test": X[:2].double()},
        {"train": y, "test": y[:2].to(torch.int32)},
        {"name": "x", "k": [1]},
    )
    feats, labels, meta = load_features(path)
    assert feats["train"].dtype == torch.float32 and feats["test"].dtype == torch.float64
    assert torch.equal(feats["train"], X) and torch.equal(feats["test"], X[:2].double())
    assert labels["test"].dtype == torch.int64 and labels["test"].tolist() == [0, 1]
    assert meta == {"name": "x", "k": [1]}


def test_feature_file_of_another_format_version_is_refused(tmp_path):
    X, y = _data()
    path = tmp_path / "f.safetensors"
    save_file(
        {"X_train": X, "y_train": y},
        str(path),
        metadata={"format": "fastunlearn-features", "version": "2", "meta": "{}"},
    )
    with pytest.raises(ValueError, match="version '2'"):
        load_features(path)


def test_feature_file_whose_meta_is_not_an_object_is_refused(tmp_path):
    X, y = _data()
    path = tmp_path / "f.safetensors"
    save_file(
        {"X_train": X, "y_train": y},
        str(path),
        metadata={"format": "fastunlearn-features", "version": "1", "meta": "[1, 2]"},
    )
    with pytest.raises(ValueError, match="not an object"):
        load_features(path)


def test_plain_safetensors_without_our_header_still_load(tmp_path):
    X, y = _data()
    path = tmp_path / "f.safetensors"
    save_file({"X_train": X, "y_train": y}, str(path))
    feats, labels, meta = load_features(path)
    assert torch.equal(feats["train"], X) and labels["train"].tolist() == y.tolist()
    assert meta == {}


def _write_pair(path, meta):
    X, y = _data()
    save_features(path, {"train": X, "test": X}, {"train": y, "test": y}, meta)


def test_features_of_another_extractor_are_refused(tmp_path):
    _write_pair(
        extracted_features_path(tmp_path, "dp", "svhn"),
        {"name": "standard_resnet18", "dataset": "SVHN"},
    )
    with pytest.raises(ValueError, match="extractor 'standard_resnet18'"):
        load_features_or_pixels("svhn", tmp_path, extractor="dp")


def test_features_of_another_data_set_are_refused(tmp_path):
    _write_pair(
        extracted_features_path(tmp_path, "dp", "svhn"), {"name": "dp", "dataset": "CIFAR10"}
    )
    with pytest.raises(ValueError, match="data set 'CIFAR10'"):
        load_features_or_pixels("svhn", tmp_path, extractor="dp")


def test_matching_origin_in_any_spelling_loads(tmp_path):
    _write_pair(
        extracted_features_path(tmp_path, "dp", "svhn"),
        {"name": "dp", "dataset": "SVHN", "epsilon": 1.0},
    )
    split = load_features_or_pixels("SVHN", tmp_path, extractor="dp")
    assert split.meta["epsilon"] == 1.0 and split.X_train.shape == (4, 3)
    _write_pair(
        extracted_features_path(tmp_path, "e", "digits"), {"name": "e", "dataset": "digits"}
    )
    assert load_features_or_pixels("digits", tmp_path, extractor="e").n_features == 3


@pytest.mark.parametrize("name,text", [("ids.txt", "\ufeff1 3\n"), ("ids.json", "\ufeff[1, 3]")])
def test_index_file_with_a_byte_order_mark_is_read(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    assert load_forget_indices(path).tolist() == [1, 3]
    forget, retain = parse_forget_spec(f"file:{path}", [0, 1, 2, 3, 4])
    assert forget.tolist() == [1, 3] and retain.tolist() == [0, 2, 4]


def test_digits_documented_sizes_and_reproducibility():
    split = load_digits_dataset()
    assert split.X_train.shape == (1438, 64) and split.X_test.shape == (359, 64)
    assert split == load_digits_dataset(seed=0)
    assert split != load_digits_dataset(seed=1)
    half = load_digits_dataset(dtype=torch.float32)
    assert half.X_train.dtype == torch.float32
    torch.testing.assert_close(half.X_train.double(), split.X_train, atol=1e-7, rtol=0)
    json.dumps(split.classes)  # plain ints
