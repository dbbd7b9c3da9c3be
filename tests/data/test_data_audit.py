"""Audit of the data package: defective files, unsafe pickles, forget-set edge cases.

Every file is written here in its real on-disk format (IDX, Python pickles, MATLAB v5
``.mat``, safetensors) and then damaged in one way; each damage must raise a ValueError
that names the file instead of an obscure error or silently wrong data.
"""

import gzip
import os
import pickle
import struct
import warnings

import numpy as np
import pytest
import torch

from fastunlearn.data import (
    load_digits_dataset,
    load_features,
    load_features_or_pixels,
    load_forget_indices,
    load_vision_dataset,
    parse_forget_spec,
    save_features,
    save_forget_indices,
    subject_forget_split,
    vision_tensors,
)

# ------------------------------------------------------------------------------- MNIST


def _idx_bytes(array, magic=None):
    """IDX bytes: big-endian magic ``00 00 08 ndim``, the sizes as uint32, then the bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = (0x08 << 8) | array.ndim if magic is None else magic
    return (
        struct.pack(">I", magic)
        + struct.pack(f">{array.ndim}I", *array.shape)
        + array.tobytes()
    )


def _write_mnist(root, images, labels, folder="MNIST"):
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix in ("train", "t10k"):
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(_idx_bytes(images))
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx_bytes(labels))
    return raw


def _mnist_arrays(n=4, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    return images, (np.arange(n) % 10).astype(np.uint8)


def _raise_names(exc_info, path):
    assert str(path) in str(exc_info.value), str(exc_info.value)


def test_mnist_label_count_must_match_image_count(tmp_path):
    """torchvision loaded 4 images with 3 labels (vision_tensors returned mismatched rows)."""
    images, labels = _mnist_arrays(4)
    raw = _write_mnist(tmp_path, images, labels[:3])
    with pytest.raises(ValueError, match="holds 3 labels but .* holds 4 images") as info:
        vision_tensors("mnist", tmp_path)
    _raise_names(info, raw / "train-labels-idx1-ubyte")


def test_mnist_label_above_nine_is_refused(tmp_path):
    images, labels = _mnist_arrays(4)
    labels[2] = 200  # a corrupt byte; 10-class models would index out of range later
    raw = _write_mnist(tmp_path, images, labels)
    with pytest.raises(ValueError, match="label 200 outside 0..9") as info:
        load_vision_dataset("mnist", tmp_path, train=False)
    _raise_names(info, raw / "t10k-labels-idx1-ubyte")


def _damage(kind, good):
    if kind == "first magic byte":
        return b"\x12" + good[1:]
    if kind == "labels file as images":
        return _idx_bytes(np.zeros(3136, dtype=np.uint8))  # 1-D, magic 0x00000801
    if kind == "int32 type byte":
        return good[:2] + b"\x0c" + good[3:]
    if kind == "truncated payload":
        return good[:-10]
    if kind == "trailing bytes":
        return good + b"\x00" * 7
    if kind == "truncated header":
        return good[:9]
    if kind == "empty":
        return b""
    if kind == "still gzipped":
        return gzip.compress(good)
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("first magic byte", r"magic number 0x12000803, expected 0x00000803"),
        ("labels file as images", r"magic number 0x00000801, expected 0x00000803"),
        ("int32 type byte", r"magic number 0x00000c03"),
        ("truncated payload", r"holds 3126 data bytes, its header \[4, 28, 28\] declares 3136 "
                              r"\(truncated\)"),
        ("trailing bytes", r"holds 3143 data bytes.*\(trailing bytes\)"),
        ("truncated header", r"truncated: its header needs 16 bytes, the file has 9"),
        ("empty", r"magic number 0x\(empty\)"),
        ("still gzipped", r"gzip"),
    ],
)
def test_mnist_damaged_image_file_is_named(tmp_path, kind, match):
    """torchvision raised a bare AssertionError or a RuntimeError about a view's shape."""
    images, labels = _mnist_arrays(4)
    raw = _write_mnist(tmp_path, images, labels)
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(_damage(kind, path.read_bytes()))
    with pytest.raises(ValueError, match=match) as info:
        vision_tensors("mnist", tmp_path)
    _raise_names(info, path)
    # the test split is intact and still loads, exactly
    X, y = vision_tensors("mnist", tmp_path, train=False)
    assert torch.equal(X[:, 0], torch.from_numpy(images)) and y.tolist() == labels.tolist()


def test_mnist_damaged_label_file_is_named(tmp_path):
    images, labels = _mnist_arrays(4)
    raw = _write_mnist(tmp_path, images, labels, folder="FashionMNIST")
    path = raw / "t10k-labels-idx1-ubyte"
    path.write_bytes(_idx_bytes(labels.reshape(2, 2)))  # 2-D: magic 0x00000802
    with pytest.raises(ValueError, match="not an IDX file of 1-D") as info:
        vision_tensors("fashion-mnist", tmp_path, train=False)
    _raise_names(info, path)


def test_mnist_images_must_be_28_by_28(tmp_path):
    """A 32x32 file loaded as [n, 1, 32, 32], then 1024 'pixels' per row instead of 784."""
    rng = np.random.default_rng(1)
    raw = _write_mnist(tmp_path, rng.integers(0, 256, (3, 32, 32)), np.array([1, 2, 3]))
    with pytest.raises(ValueError, match=r"shape \[3, 32, 32\], expected \[n, 28, 28\]") as info:
        vision_tensors("mnist", tmp_path)
    _raise_names(info, raw / "train-images-idx3-ubyte")


def test_mnist_legacy_processed_files_are_checked(tmp_path):
    images, labels = _mnist_arrays(5, seed=3)
    processed = tmp_path / "MNIST" / "processed"
    processed.mkdir(parents=True)
    data, targets = torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))
    torch.save((data, targets), processed / "training.pt")
    torch.save((data[:2], targets[:2]), processed / "test.pt")
    X, y = vision_tensors("mnist", tmp_path)  # no raw files needed
    assert torch.equal(X[:, 0], data) and torch.equal(y, targets)

    torch.save((data, targets[:4]), processed / "training.pt")
    with pytest.raises(ValueError, match="holds 4 labels but .* holds 5 images") as info:
        vision_tensors("mnist", tmp_path)
    _raise_names(info, processed / "training.pt")
    torch.save({"data": data}, processed / "training.pt")
    with pytest.raises(ValueError, match=r"pair \(images, labels\)"):
        vision_tensors("mnist", tmp_path)
    (processed / "test.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a readable torch file") as info:
        vision_tensors("mnist", tmp_path, train=False)
    _raise_names(info, processed / "test.pt")


# ------------------------------------------------------------------------------- CIFAR


def _dump(path, obj, protocol=2):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def _write_cifar10(root, protocol=2):
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(5)
    rows = rng.integers(0, 256, size=(12, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, size=12)]
    for b in range(5):
        batch = {"data": rows[2 * b: 2 * b + 2], "labels": labels[2 * b: 2 * b + 2]}
        _dump(folder / f"data_batch_{b + 1}", batch, protocol)
    _dump(folder / "test_batch", {"data": rows[10:], "labels": labels[10:]}, protocol)
    _dump(folder / "batches.meta", {"label_names": [f"n{i}" for i in range(10)]}, protocol)
    return folder, rows, labels


@pytest.mark.parametrize("protocol", [0, 4, 5])
def test_cifar_batches_pickled_at_any_protocol_load_exactly(tmp_path, protocol):
    """Protocol 5 (``pickle.dump``'s default) was refused: numpy writes ``_frombuffer``."""
    _, rows, labels = _write_cifar10(tmp_path, protocol)
    X, y = vision_tensors("cifar10", tmp_path)
    assert X.dtype == torch.uint8 and torch.equal(X.reshape(10, -1), torch.from_numpy(rows[:10]))
    assert y.tolist() == labels[:10]
    ds = load_vision_dataset("cifar10", tmp_path, train=False)
    assert ds.classes == [f"n{i}" for i in range(10)] and ds[1][1] == labels[11]


def test_cifar_int64_pixels_in_range_are_kept(tmp_path):
    folder, rows, _ = _write_cifar10(tmp_path)
    wide = rows[10:].astype(np.int64)
    _dump(folder / "test_batch", {"data": wide.tolist(), "labels": [1, 2]})
    X, y = vision_tensors("cifar10", tmp_path, train=False)
    assert torch.equal(X.reshape(2, -1), torch.from_numpy(rows[10:])) and y.tolist() == [1, 2]


_ZEROS = np.zeros((2, 3072), dtype=np.uint8)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        # pixels scaled to [0, 1] were cast to 0; values above 255 wrapped around
        ({"data": np.full((2, 3072), 0.7), "labels": [1, 2]}, "'data' has dtype float64"),
        ({"data": np.full((2, 3072), 300), "labels": [1, 2]}, r"outside 0..255 \(min 300"),
        ({"data": [[300] * 3072] * 2, "labels": [1, 2]}, "outside 0..255"),
        ({"data": np.full((2, 3072), -1), "labels": [1, 2]}, "outside 0..255"),
        # labels outside 0..9, fractional, or a string were accepted
        ({"data": _ZEROS, "labels": [1, 10]}, "label 10 outside 0..9"),
        ({"data": _ZEROS, "labels": [-1, 2]}, "label -1 outside 0..9"),
        ({"data": _ZEROS, "labels": [1, 2.7]}, "not whole numbers"),
        ({"data": _ZEROS, "labels": "12"}, "'labels' has shape"),
        ({"data": _ZEROS, "labels": [True, False]}, "'labels' has dtype bool"),
        # a CIFAR-100 batch in the CIFAR-10 folder was read through its fine labels
        ({"data": _ZEROS, "fine_labels": [1, 5]}, "a dict with 'data' and 'labels'"),
    ],
)
def test_cifar_batch_with_wrong_values_is_named(tmp_path, content, match):
    folder, _, _ = _write_cifar10(tmp_path)
    _dump(folder / "test_batch", content)
    with pytest.raises(ValueError, match=match) as info:
        vision_tensors("cifar10", tmp_path, train=False)
    _raise_names(info, folder / "test_batch")


def test_cifar100_needs_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    _dump(folder / "train", {"data": _ZEROS, "labels": [1, 2]})  # a CIFAR-10 batch
    _dump(folder / "test", {"data": _ZEROS, "fine_labels": [1, 100]})
    _dump(folder / "meta", {"fine_label_names": [f"c{i}" for i in range(100)]})
    with pytest.raises(ValueError, match="'data' and 'fine_labels'") as info:
        vision_tensors("cifar100", tmp_path)
    _raise_names(info, folder / "train")
    with pytest.raises(ValueError, match="label 100 outside 0..99") as info:
        vision_tensors("cifar100", tmp_path, train=False)
    _raise_names(info, folder / "test")


@pytest.mark.parametrize(
    "damage",
    [
        lambda good: b"",
        lambda good: good[: len(good) // 2],
        lambda good: b"hello, this is not a pickle at all",
    ],
    ids=["empty", "truncated", "garbage"],
)
def test_cifar_unreadable_pickle_is_named(tmp_path, damage):
    """EOFError / UnpicklingError('pickle data was truncated') did not say which file."""
    folder, _, _ = _write_cifar10(tmp_path)
    path = folder / "data_batch_3"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ValueError, match="not a readable pickle") as info:
        vision_tensors("cifar10", tmp_path)
    _raise_names(info, path)


class _RunsCode:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


@pytest.mark.parametrize("protocol", [2, 5])
@pytest.mark.parametrize("file_name", ["data_batch_1", "batches.meta"])
def test_cifar_pickle_running_code_is_refused_everywhere(tmp_path, protocol, file_name):
    folder, _, _ = _write_cifar10(tmp_path)
    target = tmp_path / "created_by_pickle"
    payload = _RunsCode(str(target))
    content = (
        {"label_names": payload} if file_name == "batches.meta"
        else {"data": payload, "labels": [1, 2]}
    )
    _dump(folder / file_name, content, protocol)
    with pytest.raises(ValueError, match=r"refusing to load (posix|nt)\.mkdir") as info:
        load_vision_dataset("cifar10", tmp_path)
    assert isinstance(info.value, pickle.UnpicklingError)  # both kinds, for either handler
    _raise_names(info, folder / file_name)
    assert not target.exists()


def test_cifar_protocol5_object_array_is_refused(tmp_path):
    """``_frombuffer`` is allowed for protocol 5, but never for object arrays."""
    import numpy._core.numeric as numeric

    class ObjectBuffer:
        def __reduce__(self):
            return (numeric._frombuffer, (b"\0" * 8, np.dtype("O"), (1,), "C"))

    folder, _, _ = _write_cifar10(tmp_path)
    _dump(folder / "test_batch", {"data": ObjectBuffer(), "labels": [1]}, protocol=5)
    with pytest.raises(pickle.UnpicklingError, match="dtype") as info:
        vision_tensors("cifar10", tmp_path, train=False)
    _raise_names(info, folder / "test_batch")


@pytest.mark.parametrize(
    "meta",
    [
        {"label_names": "abcdefghij"},  # became ten one-letter class names
        {"label_names": ["a", "b", "c"]},  # three names for ten classes
        ["label_names"],
    ],
)
def test_cifar_meta_must_name_every_class(tmp_path, meta):
    folder, _, _ = _write_cifar10(tmp_path)
    _dump(folder / "batches.meta", meta)
    with pytest.raises(ValueError, match="'label_names' lists 10 class names") as info:
        load_vision_dataset("cifar10", tmp_path, train=False)
    _raise_names(info, folder / "batches.meta")


# -------------------------------------------------------------------------------- SVHN


def _write_mat(folder, split, X, y):
    from scipy.io import savemat

    folder.mkdir(parents=True, exist_ok=True)
    savemat(folder / f"{split}_32x32.mat", {"X": X, "y": y})
    return folder / f"{split}_32x32.mat"


def _svhn_X(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (32, 32, 3, n), dtype=np.uint8)


def test_svhn_file_with_one_image(tmp_path):
    """squeeze() made the labels 0-D: vision_tensors raised a TypeError, items failed."""
    X = _svhn_X(1)
    _write_mat(tmp_path, "test", X, np.array([[10]], dtype=np.uint8))
    images, labels = vision_tensors("svhn", tmp_path, train=False)
    assert labels.shape == (1,) and labels.tolist() == [0]
    assert torch.equal(images[0], torch.from_numpy(X[..., 0].transpose(2, 0, 1).copy()))
    assert load_vision_dataset("svhn", tmp_path, train=False)[0][1] == 0


def test_svhn_double_labels_and_row_vector(tmp_path):
    """MATLAB stores whole-number doubles; a [1, n] label row is the same labels."""
    X = _svhn_X(3, seed=1)
    _write_mat(tmp_path, "train", X, np.array([[10.0], [1.0], [9.0]]))
    _write_mat(tmp_path, "test", X, np.array([[3, 10, 4]], dtype=np.uint8))
    assert vision_tensors("svhn", tmp_path)[1].tolist() == [0, 1, 9]
    _, y = vision_tensors("svhn", tmp_path, train=False)
    assert y.tolist() == [3, 0, 4] and y.dtype == torch.int64


@pytest.mark.parametrize(
    ("X", "y", "match"),
    [
        # silently loaded before: 3 images with 2 labels, labels 11, 2.5 -> 2
        (_svhn_X(3), np.array([[1], [2]]), "'y' holds 2 labels for 3 images"),
        (_svhn_X(3), np.array([[11], [2], [3]]), "label 11 outside 0..10"),
        (_svhn_X(3), np.array([[2.5], [2], [3]]), "not whole numbers"),
        # [n, 32, 32, 3] was transposed into [n, 3, 32, 32]-shaped garbage ([3, 32, 3, 32])
        (_svhn_X(3).transpose(3, 0, 1, 2).copy(), np.array([[1], [2], [3]]),
         r"'X' has shape \[3, 32, 32, 3\], expected \[32, 32, 3, n\]"),
        (_svhn_X(1)[..., 0], np.array([[1]]), r"'X' has shape \[32, 32, 3\]"),
        # floats stayed float64 in 'uint8' images and broke PIL
        (_svhn_X(3) / 255.0, np.array([[1], [2], [3]]), "'X' has dtype float64"),
    ],
)
def test_svhn_file_with_wrong_content_is_named(tmp_path, X, y, match):
    path = _write_mat(tmp_path, "test", X, y)
    with pytest.raises(ValueError, match=match) as info:
        vision_tensors("svhn", tmp_path, train=False)
    _raise_names(info, path)


def test_svhn_unreadable_or_foreign_mat_is_named(tmp_path):
    from scipy.io import savemat

    path = tmp_path / "test_32x32.mat"
    savemat(path, {"images": _svhn_X(2), "y": np.array([[1], [2]])})  # KeyError: 'X'
    with pytest.raises(ValueError, match=r"needs variables 'X'.*found \['images', 'y'\]") as info:
        vision_tensors("svhn", tmp_path, train=False)
    _raise_names(info, path)
    good = _write_mat(tmp_path, "test", _svhn_X(2), np.array([[1], [2]])).read_bytes()
    for damaged in (b"", good[:100], b"garbage" * 40):
        path.write_bytes(damaged)
        with pytest.raises(ValueError, match="not a readable MATLAB .mat file") as info:
            load_vision_dataset("svhn", tmp_path, train=False)
        _raise_names(info, path)


# ------------------------------------------------------------------------ feature files


def test_unreadable_feature_files_are_named(tmp_path):
    X = torch.randn(4, 3, dtype=torch.float64)
    good = save_features(tmp_path / "good.safetensors", X, torch.arange(4))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-16])
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"garbage bytes, not a torch file")
    for path in (truncated, garbage):
        with pytest.raises(ValueError, match="not a readable feature file") as info:
            load_features(path)
        _raise_names(info, path)


def test_pth_holding_objects_is_refused_without_running_them(tmp_path):
    target = tmp_path / "created_by_pth"
    path = tmp_path / "evil.pth"
    torch.save({"X_train": torch.zeros(2, 2), "y_train": _RunsCode(str(target))}, path)
    with pytest.raises(ValueError, match="not a readable feature file") as info:
        load_features(path)
    _raise_names(info, path)
    assert not target.exists()


@pytest.mark.parametrize(
    ("X", "y", "match"),
    [
        (torch.zeros(3, 2), torch.tensor([0.0, 1.7, 2.0]), "'y_train' must hold whole-number"),
        (torch.zeros(3, 2), torch.tensor([0.0, float("nan"), 2.0]), "'y_train' must hold whole"),
        (torch.tensor([[0.0, float("inf")], [1, 2], [3, 4]]), torch.arange(3),
         "'X_train' must hold finite"),
    ],
)
def test_feature_file_values_are_checked(tmp_path, X, y, match):
    """Labels 1.7 -> 1 and NaN -> -2**63 were silently truncated; NaN features passed."""
    path = tmp_path / "features.pth"
    torch.save({"X_train": X, "y_train": y}, path)
    with pytest.raises(ValueError, match=match) as info:
        load_features(path)
    _raise_names(info, path)
    torch.save({"X_train": X.nan_to_num(posinf=5.0), "y_train": torch.tensor([0.0, 1.0, 2.0])},
               path)
    _, labels, _ = load_features(path)
    assert labels["train"].tolist() == [0, 1, 2] and labels["train"].dtype == torch.int64


# -------------------------------------------------------------------------- forget sets

LABELS = np.array([0, 1, 2, 3, 1, 2, 3, 3, 0, 2])


def test_seed_out_of_range_is_named():
    """2**64 raised 'Overflow when unpacking long long'; -1 silently equalled 2**64 - 1."""
    with pytest.raises(ValueError, match=r"'seed' must be an int in \[0, 2\*\*64 - 1\], got -1"):
        parse_forget_spec("random:0.3", LABELS, seed=-1)
    with pytest.raises(ValueError, match="'seed'"):
        parse_forget_spec("random:0.3", LABELS, seed=2**64)
    top = parse_forget_spec("random:0.3", LABELS, seed=2**64 - 1)[0]
    expected = torch.randperm(10, generator=torch.Generator().manual_seed(2**64 - 1))[:3]
    assert top.tolist() == sorted(expected.tolist())


def test_numpy_integer_seed_is_the_same_seed():
    forget, retain = parse_forget_spec("random:0.4", LABELS, seed=np.int64(7))
    expected = torch.randperm(10, generator=torch.Generator().manual_seed(7))[:4]
    assert forget.tolist() == sorted(expected.tolist())
    assert torch.equal(forget, parse_forget_spec("random:0.4", LABELS, seed=7)[0])
    assert sorted(forget.tolist() + retain.tolist()) == list(range(10))


def test_read_only_numpy_labels_give_no_warning_and_stay_untouched():
    labels = LABELS.astype(np.uint8)
    labels.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warned: non-writable array
        forget, _ = parse_forget_spec("class:3", labels)
    assert forget.tolist() == [3, 6, 7]
    assert labels.tolist() == LABELS.tolist()
    with pytest.raises(TypeError, match="'labels' must hold integers, got dtype object"):
        parse_forget_spec("class:3", np.array([1, 3, "a"], dtype=object))


def test_random_fraction_rounding_to_every_example_is_refused():
    assert parse_forget_spec("random:0.94", LABELS)[0].numel() == 9  # round(9.4)
    with pytest.raises(ValueError, match="retain set would be empty"):
        parse_forget_spec("random:0.96", LABELS)  # round(9.6) = 10 = n


def test_npy_index_beyond_int64_is_named(tmp_path):
    """It wrapped to -9223372036854775807 and was reported as that index."""
    path = tmp_path / "forget.npy"
    np.save(path, np.array([1, 2**63 + 1], dtype=np.uint64))
    with pytest.raises(ValueError, match="holds index 9223372036854775809, beyond the int64"):
        load_forget_indices(path)
    np.save(path, np.array([9, 1], dtype=np.uint64))
    assert parse_forget_spec(f"file:{path}", LABELS)[0].tolist() == [1, 9]


@pytest.mark.parametrize(
    ("indices", "match"),
    [([3, -1], "0-based row indices, got -1"), ([4, 2, 4], "holds 4 more than once")],
)
def test_save_refuses_indices_that_file_spec_would_refuse(tmp_path, indices, match):
    path = tmp_path / "forget.txt"
    with pytest.raises(ValueError, match=match):
        save_forget_indices(path, indices)
    assert not path.exists()


# -------------------------------------------------------------- subjects, digits seeds


def test_subject_split_rejects_empty_and_string_subjects():
    """[] said 'takes every subject'; 'aab' was split into subjects 'a' and 'b'."""
    with pytest.raises(ValueError, match="'subjects' is empty"):
        subject_forget_split([], 0.5)
    with pytest.raises(TypeError, match="'subjects' must be a sequence"):
        subject_forget_split("aab", 0.3)
    with pytest.raises(ValueError, match="'seed'"):
        subject_forget_split(["a", "b", "c"], 0.3, seed=2**64)
    with pytest.raises(ValueError, match="'seed'"):
        subject_forget_split(["a", "b", "c"], 0.3, seed=-1)


def test_digits_seed_at_the_generator_limit():
    """seed * 16 + class overflowed torch.Generator: a RuntimeError not naming 'seed'."""
    with pytest.raises(ValueError, match=r"'seed' must be an int in \[0, 2\*\*60 - 1\]"):
        load_digits_dataset(seed=2**60)
    split = load_digits_dataset(seed=2**60 - 1, binary=(3, 8))
    assert split.X_train.shape[0] + split.X_test.shape[0] == 357  # 183 threes + 174 eights


@pytest.mark.parametrize("y_test, match", [
    (torch.tensor([0, -1, 2]), "holds label -1"),
    (torch.zeros(0, dtype=torch.int64), "'test' split holds no rows"),
])
def test_feature_split_with_negative_labels_or_no_rows_is_refused(tmp_path, y_test, match):
    # a negative label made the class count max + 1 wrong; an empty split crashed in max()
    X_train, y_train = torch.randn(6, 3, dtype=torch.float64), torch.arange(6) % 3
    X_test = torch.randn(len(y_test), 3, dtype=torch.float64)
    path = tmp_path / "ext_toy_extracted.safetensors"
    # written directly: save_features itself refuses negative labels (a file from elsewhere)
    from safetensors.torch import save_file

    save_file({"X_train": X_train, "y_train": y_train, "X_test": X_test, "y_test": y_test},
              str(path))
    with pytest.raises(ValueError, match=match):
        load_features_or_pixels("toy", tmp_path, extractor="ext")


def test_file_spec_expands_a_leading_tilde(tmp_path, monkeypatch):
    # `--forget file:~/ids.txt` reaches the parser unexpanded (the shell expands `~` only at
    # the start of a word)
    monkeypatch.setenv("HOME", str(tmp_path))
    save_forget_indices(tmp_path / "ids.txt", [4, 1])
    labels = torch.arange(6) % 3
    forget, retain = parse_forget_spec("file:~/ids.txt", labels)
    assert sorted(forget.tolist()) == [1, 4]
    assert sorted(forget.tolist() + retain.tolist()) == list(range(6))
