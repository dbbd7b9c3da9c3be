"""Loaders for local torchvision data sets, on tiny files written in the real on-disk formats."""

import os
import pickle
import struct

import numpy as np
import pytest
import torch

from fastunlearn.data import (
    FeatureSplit,
    canonical_dataset_name,
    extracted_features_path,
    load_features,
    load_features_or_pixels,
    load_vision_dataset,
    save_features,
    vision_tensors,
)

MNIST_TRAIN_LABELS = [3, 8, 1, 3, 8, 0]
MNIST_TEST_LABELS = [8, 3, 5, 3]


# ------------------------------------------------------------------ writers (real formats)


def _write_idx(path, array):
    """IDX file as on yann.lecun.com: big-endian magic (0, 0, type 0x08, ndim), dims, bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    with open(path, "wb") as f:
        f.write(struct.pack(">I", (0x08 << 8) | array.ndim))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.tobytes())


def _mnist_images(labels, seed):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(len(labels), 28, 28), dtype=np.uint8)
    images[:, 0, 0] = np.arange(len(labels))  # a per-image marker
    return images


def _write_mnist(root, folder="MNIST"):
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    images = {}
    for prefix, labels, seed in (
        ("train", MNIST_TRAIN_LABELS, 1),
        ("t10k", MNIST_TEST_LABELS, 2),
    ):
        images[prefix] = _mnist_images(labels, seed)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images[prefix])
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.array(labels, dtype=np.uint8))
    return images


def _cifar_rows(n, seed):
    """Rows of 3072 bytes: 1024 red, 1024 green, 1024 blue, each row-major 32x32."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def _dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _write_cifar10(root):
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rows, labels = [], []
    for b in range(1, 6):
        r, y = _cifar_rows(2, b), [(2 * b) % 10, (2 * b + 1) % 10]
        rows.append(r)
        labels += y
        _dump(
            folder / f"data_batch_{b}",
            {
                "batch_label": f"training batch {b} of 5",
                "labels": y,
                "data": r,
                "filenames": [f"img_{b}_{i}.png" for i in range(2)],
            },
        )
    test_rows, test_labels = _cifar_rows(3, 9), [3, 8, 3]
    _dump(folder / "test_batch", {"labels": test_labels, "data": test_rows})
    names = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    _dump(folder / "batches.meta", {"label_names": names, "num_cases_per_batch": 2})
    return np.concatenate(rows), labels, test_rows, test_labels


def _write_cifar100(root):
    folder = root / "cifar-100-python"
    folder.mkdir()
    train_rows, test_rows = _cifar_rows(4, 11), _cifar_rows(2, 12)
    _dump(
        folder / "train",
        {"data": train_rows, "fine_labels": [0, 42, 99, 7], "coarse_labels": [0, 1, 2, 3]},
    )
    _dump(folder / "test", {"data": test_rows, "fine_labels": [5, 50], "coarse_labels": [4, 5]})
    _dump(
        folder / "meta",
        {
            "fine_label_names": [f"c{i}" for i in range(100)],
            "coarse_label_names": [f"s{i}" for i in range(20)],
        },
    )
    return train_rows, test_rows


def _write_svhn(folder, split, labels, seed):
    """A .mat like ufldl's: X is [32, 32, 3, n] uint8, y is [n, 1] with 10 for digit 0."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    X = rng.integers(0, 256, size=(32, 32, 3, len(labels)), dtype=np.uint8)
    y = np.array(labels, dtype=np.uint8).reshape(-1, 1)
    folder.mkdir(parents=True, exist_ok=True)
    savemat(folder / f"{split}_32x32.mat", {"X": X, "y": y})
    return X


# ------------------------------------------------------------------------------- MNIST


def test_mnist_dataset_reads_idx_files(tmp_path):
    images = _write_mnist(tmp_path)
    ds = load_vision_dataset("mnist", tmp_path)
    assert len(ds) == len(MNIST_TRAIN_LABELS)
    img, label = ds[1]
    assert img.size == (28, 28) and label == 8
    test = load_vision_dataset("MNIST", tmp_path, train=False, transform=np.asarray)
    img, label = test[2]
    assert label == 5 and np.array_equal(img, images["t10k"][2])

    X, y = vision_tensors("mnist", tmp_path)
    assert X.shape == (6, 1, 28, 28) and X.dtype == torch.uint8
    assert y.tolist() == MNIST_TRAIN_LABELS and y.dtype == torch.int64
    assert torch.equal(X[:, 0], torch.from_numpy(images["train"]))


def test_fashion_mnist_uses_its_own_folder(tmp_path):
    _write_mnist(tmp_path, folder="FashionMNIST")
    X, y = vision_tensors("fashion-mnist", tmp_path, train=False)
    assert X.shape == (4, 1, 28, 28) and y.tolist() == MNIST_TEST_LABELS
    with pytest.raises(FileNotFoundError, match="MNIST/raw/train-images-idx3-ubyte"):
        load_vision_dataset("mnist", tmp_path)


def test_mnist_pixels_three_vs_eight_as_the_reference(tmp_path):
    images = _write_mnist(tmp_path)
    split = load_features_or_pixels("mnist", tmp_path, binary=(3, 8))
    assert isinstance(split, FeatureSplit)
    assert split.X_train.shape == (4, 784) and split.X_test.shape == (3, 784)
    assert split.X_train.dtype == torch.float64 and split.y_train.dtype == torch.int64
    # 3 -> label 1 (the +1 class), 8 -> label 0; classes[label] == digit
    assert split.y_train.tolist() == [1, 0, 1, 0] and split.y_test.tolist() == [0, 1, 1]
    assert split.classes == (8, 3) and split.n_classes == 2 and split.n_features == 784
    kept = images["train"][[0, 1, 3, 4]].reshape(4, 784).astype(np.float64) / 255.0 - 0.5
    np.testing.assert_allclose(split.X_train.numpy(), kept, rtol=0, atol=1e-15)
    assert split.source == "pixels"

    everything = load_features_or_pixels("mnist", tmp_path, extractor="none")
    assert everything.X_train.shape == (6, 784) and everything.classes == tuple(range(10))
    assert everything.y_train.tolist() == MNIST_TRAIN_LABELS


# ------------------------------------------------------------------------------- CIFAR


def test_cifar10_reads_python_batches(tmp_path):
    rows, labels, test_rows, test_labels = _write_cifar10(tmp_path)
    ds = load_vision_dataset("cifar-10", tmp_path)
    assert len(ds) == 10 and ds.classes[3] == "cat"
    img, label = ds[4]
    assert img.size == (32, 32) and label == labels[4]

    X, y = vision_tensors("cifar10", tmp_path)
    assert X.shape == (10, 3, 32, 32) and y.tolist() == labels
    # channel c, row h, column w sits at byte c * 1024 + h * 32 + w of the stored row
    assert int(X[7, 1, 2, 3]) == int(rows[7, 1 * 1024 + 2 * 32 + 3])
    assert torch.equal(X.reshape(10, -1), torch.from_numpy(rows))

    split = load_features_or_pixels("CIFAR10", tmp_path)
    assert split.X_train.shape == (10, 3072) and split.X_test.shape == (3, 3072)
    assert split.y_test.tolist() == test_labels
    np.testing.assert_allclose(split.X_test.numpy(), test_rows / 255.0 - 0.5, atol=1e-15)


def test_cifar100_reads_fine_labels(tmp_path):
    train_rows, _ = _write_cifar100(tmp_path)
    X, y = vision_tensors("cifar100", tmp_path)
    assert X.shape == (4, 3, 32, 32) and y.tolist() == [0, 42, 99, 7]
    assert torch.equal(X.reshape(4, -1), torch.from_numpy(train_rows))
    test = load_vision_dataset("cifar100", tmp_path, train=False)
    assert len(test) == 2 and test[1][1] == 50 and len(test.classes) == 100
    assert load_features_or_pixels("cifar100", tmp_path).n_classes == 100


def test_cifar_pickle_that_would_run_code_is_refused(tmp_path):
    _write_cifar10(tmp_path)
    target = tmp_path / "created_by_pickle"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(target),))

    _dump(tmp_path / "cifar-10-batches-py" / "test_batch", {"data": Payload(), "labels": []})
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        load_vision_dataset("cifar10", tmp_path, train=False)
    assert not target.exists()


@pytest.mark.parametrize("content, match", [
    ([1, 2, 3], "not a CIFAR batch"),                                    # a list, not a dict
    ({"labels": [3, 8, 3]}, "not a CIFAR batch"),                        # no 'data'
    ({"data": _cifar_rows(3, 9)}, "not a CIFAR batch"),                  # no labels
    ({"data": _cifar_rows(3, 9)[:, :100], "labels": [3, 8, 3]}, r"\[3, 3072\]"),
    ({"data": _cifar_rows(2, 9), "labels": [3, 8, 3]}, r"\[3, 3072\]"),  # rows != labels
])
def test_cifar_batch_with_wrong_content_is_a_clean_error(tmp_path, content, match):
    """A batch that unpickles safely but is not a CIFAR batch names its file (it raised a
    KeyError or TypeError, or reshaped rows of other images)."""
    _write_cifar10(tmp_path)
    _dump(tmp_path / "cifar-10-batches-py" / "test_batch", content)
    with pytest.raises(ValueError, match=match) as info:
        load_vision_dataset("cifar10", tmp_path, train=False)
    assert "test_batch" in str(info.value)


def test_cifar_meta_without_class_names_is_a_clean_error(tmp_path):
    _write_cifar10(tmp_path)
    _dump(tmp_path / "cifar-10-batches-py" / "batches.meta", {"num_cases_per_batch": 2})
    with pytest.raises(ValueError, match="batches.meta.*'label_names'"):
        load_vision_dataset("cifar10", tmp_path, train=False)


def test_verify_checks_the_published_md5(tmp_path):
    _write_cifar10(tmp_path)
    with pytest.raises(ValueError, match="MD5"):
        load_vision_dataset("cifar10", tmp_path, verify=True)
    _write_svhn(tmp_path, "test", [1, 2], seed=3)
    with pytest.raises(ValueError, match="MD5"):
        load_vision_dataset("svhn", tmp_path, train=False, verify=True)


# -------------------------------------------------------------------------------- SVHN


def test_svhn_reads_mat_files_and_maps_ten_to_zero(tmp_path):
    X_mat = _write_svhn(tmp_path, "train", [10, 1, 9, 10, 5], seed=4)
    _write_svhn(tmp_path, "test", [2, 10, 3], seed=5)
    ds = load_vision_dataset("svhn", tmp_path)
    assert len(ds) == 5 and ds[0][1] == 0 and ds[0][0].size == (32, 32)
    X, y = vision_tensors("SVHN", tmp_path)
    assert X.shape == (5, 3, 32, 32) and y.tolist() == [0, 1, 9, 0, 5]
    # .mat stores [h, w, c, n]
    assert torch.equal(X, torch.from_numpy(X_mat.transpose(3, 2, 0, 1).copy()))
    _, y_test = vision_tensors("svhn", tmp_path, train=False)
    assert y_test.tolist() == [2, 0, 3]
    split = load_features_or_pixels("svhn", tmp_path, binary=(0, 5))
    assert split.y_train.tolist() == [1, 1, 0] and split.X_train.shape == (3, 3072)


def test_svhn_extra_and_subfolder(tmp_path):
    folder = tmp_path / "SVHN"
    _write_svhn(folder, "train", [1, 2], seed=6)
    _write_svhn(folder, "extra", [3, 4, 10], seed=7)
    ds = load_vision_dataset("svhn", tmp_path, svhn_extra=True)
    assert len(ds) == 5
    X, y = vision_tensors("svhn", tmp_path, svhn_extra=True)
    assert X.shape == (5, 3, 32, 32) and y.tolist() == [1, 2, 3, 4, 0]
    with pytest.raises(ValueError, match="'svhn_extra'"):
        load_vision_dataset("cifar10", tmp_path, svhn_extra=True)


# ------------------------------------------------------------------------ missing files


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("mnist", "MNIST/raw/t10k-labels-idx1-ubyte"),
        ("fashion-mnist", "FashionMNIST/raw/train-images-idx3-ubyte"),
        ("cifar10", "cifar-10-batches-py/data_batch_5"),
        ("cifar100", "cifar-100-python/meta"),
        ("svhn", "train_32x32.mat"),
    ],
)
def test_missing_files_name_data_dir_and_expected_files(tmp_path, name, expected):
    with pytest.raises(FileNotFoundError) as info:
        load_vision_dataset(name, tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and "data_dir" in message and expected in message


def test_missing_data_dir_and_unknown_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="'data_dir'"):
        load_vision_dataset("mnist", tmp_path / "absent")
    with pytest.raises(ValueError, match="'name'"):
        load_vision_dataset("imagenet", tmp_path)
    assert canonical_dataset_name("Fashion_MNIST") == "fashion-mnist"
    with pytest.raises(ValueError, match="'binary'"):
        load_features_or_pixels("mnist", tmp_path, binary=(3, 3))


# ------------------------------------------------------------------------ feature files


def _features(seed, n, d=6):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=gen, dtype=torch.float64), torch.arange(n) % 3


def test_feature_file_round_trip_and_lookup(tmp_path):
    (X_tr, y_tr), (X_te, y_te) = _features(0, 9), _features(1, 4)
    path = extracted_features_path(tmp_path, "dp_delta_1.00e-05_std_6.00", "SVHN")
    assert path.name == "dp_delta_1.00e-05_std_6.00_svhn_extracted.safetensors"
    meta = {"epsilon": 0.1, "delta": 1e-5, "model": "svhn_dp"}
    save_features(path, {"train": X_tr, "test": X_te}, {"train": y_tr, "test": y_te}, meta)
    assert sorted(os.listdir(tmp_path)) == [path.name]  # no temporary file left

    feats, labels, got_meta = load_features(path)
    assert torch.equal(feats["train"], X_tr) and torch.equal(feats["test"], X_te)
    assert torch.equal(labels["train"], y_tr) and got_meta == meta

    split = load_features_or_pixels("SVHN", tmp_path, extractor="dp_delta_1.00e-05_std_6.00")
    assert torch.equal(split.X_train, X_tr) and split.y_test.tolist() == y_te.tolist()
    assert split.source == str(path) and split.meta == meta and split.classes == (0, 1, 2)
    binary = load_features_or_pixels(
        "svhn", tmp_path, extractor="dp_delta_1.00e-05_std_6.00", binary=(1, 2)
    )
    assert binary.X_train.shape == (6, 6) and set(binary.y_train.tolist()) == {0, 1}


def test_reference_pth_dict_loads_with_weights_only(tmp_path):
    X, y = _features(2, 5)
    ckpt = {
        "X_train": X.float(),
        "y_train": y.float(),
        "X_test": X[:2].float(),
        "y_test": y[:2].float(),
    }
    torch.save(ckpt, tmp_path / "resnet50_LSUN_extracted.pth")
    split = load_features_or_pixels("LSUN", tmp_path, extractor="resnet50")
    assert split.X_train.dtype == torch.float64 and split.y_train.dtype == torch.int64
    assert split.y_train.tolist() == y.tolist()
    torch.testing.assert_close(split.X_train, X.float().double())


def test_feature_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="resnet50_svhn_extracted.safetensors"):
        load_features_or_pixels("svhn", tmp_path, extractor="resnet50")
    with pytest.raises(ValueError, match="'extractor'"):
        load_features_or_pixels("svhn", tmp_path, extractor="../outside")
    X, y = _features(3, 4)
    with pytest.raises(ValueError, match="'labels"):
        save_features(tmp_path / "f.safetensors", X, y[:3])
    with pytest.raises(ValueError, match="'features"):
        save_features(tmp_path / "f.safetensors", X.clone().fill_(float("nan")), y)
    with pytest.raises(ValueError, match="'meta'"):
        save_features(tmp_path / "f.safetensors", X, y, {"bad": object()})
    with pytest.raises(ValueError, match="'labels' splits"):
        save_features(tmp_path / "f.safetensors", {"train": X}, {"test": y})
    save_features(tmp_path / "only_train_x_extracted.safetensors", X, y)
    with pytest.raises(ValueError, match="'test'"):
        load_features_or_pixels("x", tmp_path, extractor="only_train")
    assert os.listdir(tmp_path) == ["only_train_x_extracted.safetensors"]


def _write_safetensors(path, tensors):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


@pytest.mark.parametrize(
    ("tensors", "match"),
    [
        ({"y_train": torch.arange(4)}, r"holds no 'X_<split>' feature tensors"),
        ({"features": torch.zeros(4, 2)}, r"holds no 'X_<split>' feature tensors"),
        ({"X_train": torch.zeros(4, 2), "y_test": torch.arange(4)},
         r"has 'X_train' but no 'y_train'"),
        ({"X_train": torch.zeros(4, 2), "y_train": torch.arange(3)},
         r"'X_train' \(4, 2\) does not match 'y_train' \(3,\)"),
        ({"X_train": torch.zeros(4, 2), "y_train": torch.arange(4),
          "X_test": torch.zeros(2, 2), "y_test": torch.arange(5)},
         r"'X_test' \(2, 2\) does not match 'y_test' \(5,\)"),
        ({"X_train": torch.zeros(4), "y_train": torch.arange(4)},
         r"'X_train' \(4,\) does not match 'y_train' \(4,\)"),  # not 2-D
    ],
)
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_load_features_defective_files_are_named(tmp_path, tensors, match, suffix):
    path = tmp_path / f"bad{suffix}"
    if suffix == ".pth":
        torch.save(tensors, path)
    else:
        _write_safetensors(path, tensors)
    with pytest.raises(ValueError, match=match) as info:
        load_features(path)
    assert str(path) in str(info.value)


def test_load_features_pth_that_is_not_a_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(3, 2), torch.arange(3)], path)
    expected = "must hold a dict of tensors, got <class 'list'>"
    with pytest.raises(ValueError, match=expected) as info:
        load_features(path)
    assert str(path) in str(info.value)
    with pytest.raises(FileNotFoundError, match="absent.safetensors"):
        load_features(tmp_path / "absent.safetensors")


def test_binary_class_without_training_rows_is_named(tmp_path):
    X_tr, y_tr = _features(4, 9)  # labels 0, 1, 2
    X_te = _features(5, 3)[0]
    y_te = torch.tensor([0, 3, 1])  # class 3 only in the test split
    save_features(extracted_features_path(tmp_path, "ext", "toy"),
                  {"train": X_tr, "test": X_te}, {"train": y_tr, "test": y_te})
    with pytest.raises(ValueError, match="'binary' class 3 has no training examples"):
        load_features_or_pixels("toy", tmp_path, extractor="ext", binary=(3, 1))
    with pytest.raises(ValueError, match="'binary' class 7 has no training examples"):
        load_features_or_pixels("toy", tmp_path, extractor="ext", binary=(0, 7))
    # a class missing from the test split only is accepted
    split = load_features_or_pixels("toy", tmp_path, extractor="ext", binary=(2, 1))
    assert split.y_train.tolist() == [0, 1, 0, 1, 0, 1] and split.y_test.tolist() == [0]
