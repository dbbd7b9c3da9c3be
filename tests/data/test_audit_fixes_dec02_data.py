"""Regression tests of the December 2 audit of ``fastunlearn.data``.

- label arrays shaped as a grid (``[2, 2]`` for 4 rows) were flattened into labels and
  loaded silently, from feature files and from SVHN ``.mat`` files;
- forget-set labels given as an empty list were refused as "float32", a list of strings
  raised torch's bare ``too many dimensions 'str'``;
- ``save_forget_indices`` raised a TypeError, not its documented ValueError, for a Python
  int beyond the int64 range;
- an age-folder pattern whose ``age`` group captured a non-number raised int()'s unnamed
  ValueError; an optional ``subject`` group hid every subject when the first name had
  none, or broke the subject split with a bare TypeError ('<' between str and None).
"""

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from fastunlearn.data import (
    AgeImageFolder,
    load_features,
    parse_forget_spec,
    save_forget_indices,
    subject_forget_split,
    vision_tensors,
)


def _features_file(path, y_train):
    X = torch.arange(12, dtype=torch.float64).reshape(4, 3)
    save_file({"X_train": X, "y_train": y_train, "X_test": X.clone(),
               "y_test": torch.tensor([0, 1, 1, 0])}, str(path))
    return path


def test_feature_labels_shaped_as_a_grid_are_refused(tmp_path):
    path = _features_file(tmp_path / "f.safetensors", torch.tensor([[0, 1], [1, 0]]))
    with pytest.raises(ValueError, match=r"'y_train' has shape \(2, 2\).*one label per row"):
        load_features(path)


@pytest.mark.parametrize("y", [torch.tensor([[0], [1], [1], [0]]), torch.tensor([[0, 1, 1, 0]])])
def test_feature_labels_as_a_column_or_a_row_still_load(tmp_path, y):
    _, labels, _ = load_features(_features_file(tmp_path / "f.safetensors", y))
    assert labels["train"].tolist() == [0, 1, 1, 0]


def test_svhn_labels_shaped_as_a_grid_are_refused(tmp_path):
    from scipy.io import savemat

    X = np.random.default_rng(0).integers(0, 256, (32, 32, 3, 4), dtype=np.uint8)
    savemat(tmp_path / "test_32x32.mat", {"X": X, "y": np.array([[1, 2], [3, 4]])})
    with pytest.raises(ValueError, match=r"test_32x32.mat.*'y' has shape \[2, 2\]"):
        vision_tensors("svhn", tmp_path, train=False)


def test_forget_labels_empty_list_or_strings_are_named():
    with pytest.raises(ValueError, match="'labels' is empty"):
        parse_forget_spec("class:0", [])
    with pytest.raises(TypeError, match="'labels' must be a 1-D sequence of integer labels"):
        parse_forget_spec("class:0", ["cat", "dog"])


def test_save_forget_indices_beyond_int64_is_a_value_error(tmp_path):
    path = tmp_path / "forget.txt"
    with pytest.raises(ValueError, match=f"holds {2**70}, beyond the int64 range"):
        save_forget_indices(path, [1, 2**70])
    assert not path.exists()


def _images(folder, names):
    image = Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8))
    for name in names:
        image.save(folder / name)


def test_age_pattern_capturing_no_number_names_the_file(tmp_path):
    _images(tmp_path, ["anna_34.png", "bob_21.png"])
    with pytest.raises(ValueError, match=r"'anna_34.png' gives no whole-number age"):
        AgeImageFolder(tmp_path, pattern=r"(?P<age>\w+)\.png")
    # skipped, not refused, when asked
    _images(tmp_path, ["45.png"])
    folder = AgeImageFolder(tmp_path, pattern=r"(?P<age>\w+)\.png", skip_unmatched=True)
    assert folder.ages.tolist() == [45]
    assert [p.name for p in folder.skipped] == ["anna_34.png", "bob_21.png"]


def test_optional_subject_group_keeps_every_subject_and_split_names_the_gap(tmp_path):
    # sorted: 'a_34.png' (no subject) comes first and used to hide 'bob' and 'eve'
    _images(tmp_path, ["a_34.png", "bob_x_21.png", "eve_y_70.png"])
    pattern = r"^(?:(?P<subject>[a-z]{3})_)?\w+_(?P<age>\d+)\.png$"
    folder = AgeImageFolder(tmp_path, pattern=pattern)
    assert folder.subjects == [None, "bob", "eve"]
    assert folder.ages.tolist() == [34, 21, 70]
    with pytest.raises(ValueError, match=r"'subjects'\[0\] is None"):
        folder.subject_forget_split(0.3)
    with pytest.raises(ValueError, match=r"'subjects'\[1\] is None"):
        subject_forget_split(["bob", None, "eve"], 0.3)
