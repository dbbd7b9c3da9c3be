"""Forget-set specs: classes, random fractions, index files, and every error path."""

import json

import numpy as np
import pytest
import torch

from fastunlearn.data.forget_sets import (
    load_forget_indices,
    parse_forget_spec,
    save_forget_indices,
)

LABELS = torch.tensor([0, 1, 2, 3, 1, 2, 3, 3, 0, 2])


def _check_partition(forget, retain, n):
    assert forget.dtype == retain.dtype == torch.int64
    assert torch.equal(forget, forget.sort().values)
    assert torch.equal(retain, retain.sort().values)
    assert torch.equal(torch.cat([forget, retain]).sort().values, torch.arange(n))


def test_one_class():
    forget, retain = parse_forget_spec("class:3", LABELS)
    assert forget.tolist() == [3, 6, 7]  # by hand
    _check_partition(forget, retain, 10)


def test_several_classes_numpy_and_list_labels():
    expected = [0, 3, 6, 7, 8]
    for labels in (LABELS, LABELS.numpy(), LABELS.tolist()):
        forget, retain = parse_forget_spec(" class: 0, 3 ", labels)
        assert forget.tolist() == expected
        _check_partition(forget, retain, 10)


def test_random_fraction_size_seed_and_uniformity():
    labels = torch.zeros(1000, dtype=torch.long)
    labels[1] = 1
    forget, retain = parse_forget_spec("random:0.1", labels, seed=3)
    assert forget.numel() == 100
    _check_partition(forget, retain, 1000)
    again, _ = parse_forget_spec("random:0.1", labels, seed=3)
    other, _ = parse_forget_spec("random:0.1", labels, seed=4)
    assert torch.equal(forget, again)
    assert not torch.equal(forget, other)
    # rounding: 0.25 * 10 = 2.5 -> 2 (round half to even), 0.26 * 10 -> 3
    assert parse_forget_spec("random:0.25", LABELS)[0].numel() == 2
    assert parse_forget_spec("random:0.26", LABELS)[0].numel() == 3
    # every index equally likely: counts over 400 seeds of a 20 % draw from 50
    counts = torch.zeros(50)
    for seed in range(400):
        counts[parse_forget_spec("random:0.2", torch.arange(50) % 2, seed=seed)[0]] += 1
    assert counts.sum() == 400 * 10
    # binomial(400, 0.2): mean 80, sd 8; all 50 within 4.5 sd
    assert (counts - 80).abs().max() < 36


@pytest.mark.parametrize("fmt", ["txt", "csv", "json", "npy"])
def test_index_files(tmp_path, fmt):
    idx = [7, 2, 9]
    path = tmp_path / f"forget.{fmt}"
    if fmt == "txt":
        path.write_text("# forget set\n7\n2  # two\n\n9\n")
    elif fmt == "csv":
        path.write_text("7,2, 9\n")
    elif fmt == "json":
        path.write_text(json.dumps(idx))
    else:
        np.save(path, np.array(idx, dtype=np.int32))
    assert load_forget_indices(path).tolist() == idx
    forget, retain = parse_forget_spec(f"file:{path}", LABELS)
    assert forget.tolist() == [2, 7, 9]
    _check_partition(forget, retain, 10)


def test_save_round_trip(tmp_path):
    forget, _ = parse_forget_spec("random:0.3", LABELS, seed=1)
    path = save_forget_indices(tmp_path / "f.txt", forget)
    assert torch.equal(parse_forget_spec(f"file:{path}", LABELS)[0], forget)


@pytest.mark.parametrize(
    ("indices", "error", "match"),
    [
        (torch.tensor([1.0, 2.0]), TypeError, "'indices' must hold integers, got dtype "
                                              "torch.float32"),
        ([0.5, 2.0], TypeError, "'indices' must hold integers, got dtype torch.float"),
        (torch.tensor([True, False]), TypeError, "'indices' must hold integers, got dtype "
                                                 "torch.bool"),
        (torch.tensor([1 + 2j]), TypeError, "'indices' must hold integers, got dtype "
                                            "torch.complex"),
        (torch.tensor([[1, 2], [3, 4]]), ValueError, r"'indices' must be 1-D, got shape "
                                                     r"\(2, 2\)"),
        (torch.tensor(3), ValueError, r"'indices' must be 1-D, got shape \(\)"),
    ],
)
def test_save_bad_indices_are_named_and_write_nothing(tmp_path, indices, error, match):
    path = tmp_path / "f.txt"
    with pytest.raises(error, match=match):
        save_forget_indices(path, indices)
    assert not path.exists()


def test_save_writes_one_index_per_line(tmp_path):
    path = save_forget_indices(tmp_path / "f.txt", np.array([7, 2, 9], dtype=np.int16))
    assert path == tmp_path / "f.txt" and path.read_text() == "7\n2\n9\n"
    save_forget_indices(path, torch.tensor([], dtype=torch.int64))
    assert path.read_text() == ""


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("class:5", "class 5 does not occur"),
        ("class:1,1", "twice"),
        ("class:", "integer labels"),
        ("class:a", "integer labels"),
        ("class:0,1,2,3", "retain set would be empty"),
        ("random:0", r"in \(0, 1\)"),
        ("random:1", r"in \(0, 1\)"),
        ("random:1.5", r"in \(0, 1\)"),
        ("random:-0.1", r"in \(0, 1\)"),
        ("random:nan", r"in \(0, 1\)"),
        ("random:abc", "fraction"),
        ("random:0.01", "empty forget set"),
        ("classes:3", "must be one of"),
        ("3", "must be one of"),
        ("file:", "needs a path"),
    ],
)
def test_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_forget_spec(spec, LABELS)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("", "empty forget set"),
        ("1\n10\n", "index 10 is out of range"),
        ("-1\n", "index -1 is out of range"),
        ("1\n4\n1\n", "index 1 appears 2 times"),
        ("1\n2.5\n", "'2.5' where an integer"),
        ("1 x\n", "'x' where an integer"),
    ],
)
def test_bad_files(tmp_path, content, match):
    path = tmp_path / "bad.txt"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        parse_forget_spec(f"file:{path}", LABELS)


def test_bad_binary_files(tmp_path):
    f = tmp_path / "f.npy"
    np.save(f, np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="not integers"):
        parse_forget_spec(f"file:{f}", LABELS)
    np.save(f, np.array([[1, 2]]))
    with pytest.raises(ValueError, match="flat list"):
        parse_forget_spec(f"file:{f}", LABELS)
    f.write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="could not be read"):
        parse_forget_spec(f"file:{f}", LABELS)
    j = tmp_path / "f.json"
    j.write_text('{"a": 1}')
    with pytest.raises(ValueError, match="JSON list"):
        parse_forget_spec(f"file:{j}", LABELS)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        parse_forget_spec(f"file:{tmp_path / 'missing.txt'}", LABELS)


def test_bad_arguments():
    with pytest.raises(TypeError, match="spec"):
        parse_forget_spec(3, LABELS)
    with pytest.raises(TypeError, match="seed"):
        parse_forget_spec("random:0.5", LABELS, seed=1.0)
    with pytest.raises(TypeError, match="labels"):
        parse_forget_spec("class:1", torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="1-D"):
        parse_forget_spec("class:1", LABELS.view(2, 5))
    with pytest.raises(ValueError, match="empty"):
        parse_forget_spec("class:1", torch.tensor([], dtype=torch.long))
    labels = LABELS.clone()
    parse_forget_spec("class:1", labels)
    assert torch.equal(labels, LABELS)
