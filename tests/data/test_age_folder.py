"""Face-age image folders written by the test: layouts, decade bins, subjects, errors."""

import numpy as np
import pytest
import torch
from PIL import Image

from fastunlearn.data import AgeImageFolder, age_bins, subject_forget_split


def _write(path, value, size=(6, 5)):
    """A small RGB image whose red channel is ``value`` everywhere (a marker)."""
    array = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    array[..., 0] = value
    array[..., 1] = 7
    Image.fromarray(array).save(path)


AGEDB = [  # (file name, age, subject)
    ("0_MariaCallas_35_f.png", 35, "MariaCallas"),
    ("1_MariaCallas_52_f.png", 52, "MariaCallas"),
    ("2_JohnSmith_8_m.png", 8, "JohnSmith"),
    ("3_JohnSmith_19_m.png", 19, "JohnSmith"),
    ("4_Ann_Lee_95_f.png", 95, "Ann_Lee"),
    ("5_Bob_20_m.png", 20, "Bob"),
]


@pytest.fixture
def agedb(tmp_path):
    for i, (name, _, _) in enumerate(AGEDB):
        _write(tmp_path / name, 10 * i)
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_age_bins_by_hand():
    ages = torch.tensor([0, 9, 10, 35, 89, 90, 101])
    assert age_bins(ages).tolist() == [0, 0, 1, 3, 8, 9, 9]
    assert age_bins(ages, bin_width=20, num_bins=3).tolist() == [0, 0, 0, 1, 2, 2, 2]
    with pytest.raises(ValueError, match="ages"):
        age_bins(torch.tensor([-1]))
    with pytest.raises(TypeError, match="ages"):
        age_bins(torch.tensor([1.5]))
    with pytest.raises(ValueError, match="bin_width"):
        age_bins(ages, bin_width=0)


def test_agedb_names(agedb):
    ds = AgeImageFolder(agedb)
    assert ds.layout == "agedb"
    assert len(ds) == 6
    by_name = {p.name: i for i, p in enumerate(ds.paths)}
    for j, (name, age, subject) in enumerate(AGEDB):
        i = by_name[name]
        assert int(ds.ages[i]) == age
        assert int(ds.targets[i]) == min(age // 10, 9)
        assert ds.subjects[i] == subject
        image, label = ds[i]
        assert image.shape == (3, 5, 6) and image.dtype == torch.float32
        torch.testing.assert_close(image[0], torch.full((5, 6), 10 * j / 255.0))
        assert label.dtype == torch.int64 and int(label) == min(age // 10, 9)
    regression = AgeImageFolder(agedb, target="age")
    _, age = regression[by_name["4_Ann_Lee_95_f.png"]]
    assert age.dtype == torch.float32 and float(age) == 95.0


def test_folder_layout_resize_tensors_and_weights(tmp_path):
    ages = {3: 2, 27: 1, 64: 3}
    k = 0
    for age, count in ages.items():
        (tmp_path / str(age)).mkdir()
        for j in range(count):
            _write(tmp_path / str(age) / f"img{j}.jpg", 40 * k, size=(4 + j, 4))
            k += 1
    ds = AgeImageFolder(tmp_path, size=8, grayscale=True)
    assert ds.layout == "folder"
    assert ds.subjects is None
    assert ds.ages.tolist() == [3, 3, 27, 64, 64, 64]
    assert ds.targets.tolist() == [0, 0, 2, 6, 6, 6]
    images, labels = ds.tensors()
    assert images.shape == (6, 1, 8, 8) and images.dtype == torch.uint8
    assert torch.equal(labels, ds.targets)
    # class weights n / (K_present * count): 6 / (3 * 2), 6 / (3 * 1), 6 / (3 * 3)
    expected = torch.zeros(10)
    expected[0], expected[2], expected[6] = 1.0, 2.0, 2.0 / 3.0
    torch.testing.assert_close(ds.class_weights(), expected)
    # different stored sizes cannot be stacked without 'size'
    with pytest.raises(ValueError, match="size"):
        AgeImageFolder(tmp_path).tensors()


def test_utkface_and_custom_pattern(tmp_path):
    for name in ("26_0_1_20170116174525125.jpg.chip.jpg", "71_1_0_20170120134639935.jpg"):
        _write(tmp_path / name, 1)
    ds = AgeImageFolder(tmp_path)
    assert ds.layout == "utkface"
    assert sorted(ds.ages.tolist()) == [26, 71]
    other = tmp_path / "custom"
    other.mkdir()
    _write(other / "p01-age33.png", 1)
    _write(other / "p02-age41.png", 1)
    ds = AgeImageFolder(other, pattern=r"(?P<subject>p\d+)-age(?P<age>\d+)\.png")
    assert ds.ages.tolist() == [33, 41] and ds.subjects == ["p01", "p02"]


def test_transform_and_skip_unmatched(agedb):
    ds = AgeImageFolder(agedb, transform=lambda image: image.size, target="age")
    assert ds[0][0] == (6, 5)
    _write(agedb / "holiday.png", 1)
    ds = AgeImageFolder(agedb, skip_unmatched=True)
    assert ds.layout == "agedb" and len(ds) == 6
    assert [p.name for p in ds.skipped] == ["holiday.png"]
    empty = agedb / "sub"
    empty.mkdir()
    _write(empty / "x.png", 1)
    with pytest.raises(ValueError, match="matches layout 'utkface'"):
        AgeImageFolder(empty, layout="utkface", skip_unmatched=True)


def _assert_greedy_to_goal(subjects, forget, goal):
    """Whole subjects taken one by one until the forget set holds >= ``goal`` images.

    A set F of subjects is the shortest prefix of some order reaching the goal iff it reaches
    it and dropping one of its subjects (the last one taken) falls below it.
    """
    forget_list = forget.tolist()
    assert forget.dtype == torch.int64 and forget_list == sorted(forget_list)
    forgotten = {subjects[i] for i in forget_list}
    assert forget_list == [i for i, s in enumerate(subjects) if s in forgotten]  # whole
    size = {s: subjects.count(s) for s in forgotten}
    assert len(forget_list) >= goal
    assert min(len(forget_list) - size[s] for s in forgotten) < goal


def test_subject_split_stops_at_the_goal_by_hand():
    # three subjects of 4 images: whatever the shuffle, the number taken is fixed
    subjects = ["x"] * 4 + ["y"] * 4 + ["z"] * 4
    for fraction, images in ((0.01, 4), (0.25, 4), (0.34, 4), (0.4, 8), (0.66, 8)):
        for seed in range(4):  # goals 1, 3, 4 (one subject), 5, 8 (two subjects)
            forget, retain = subject_forget_split(subjects, fraction, seed=seed)
            assert forget.numel() == images and retain.numel() == 12 - images
            _assert_greedy_to_goal(subjects, forget, max(1, round(fraction * 12)))
    assert subject_forget_split(subjects, 0.7)[0].numel() == 8  # goal round(8.4) = 8
    with pytest.raises(ValueError, match="retain set is empty"):
        subject_forget_split(subjects, 0.75)  # goal 9: all three subjects
    # unequal subjects: one of 3, three of 1; goal 3
    subjects = ["a", "b", "a", "c", "a", "d"]
    seen = set()
    for seed in range(30):
        forget, retain = subject_forget_split(subjects, 0.5, seed=seed)
        _assert_greedy_to_goal(subjects, forget, 3)
        assert torch.equal(torch.cat([forget, retain]).sort().values, torch.arange(6))
        assert torch.equal(subject_forget_split(subjects, 0.5, seed=seed)[0], forget)
        seen.add(tuple(forget.tolist()))
    # "a" alone (3 images), or singles before "a" (5 or 4 images), or b, c, d (3 images)
    assert (0, 2, 4) in seen and len(seen) > 1  # the seed changes the split
    assert seen <= {(0, 2, 4), (0, 1, 2, 4), (0, 2, 3, 4), (0, 2, 4, 5), (0, 1, 2, 3, 4),
                    (0, 1, 2, 4, 5), (0, 2, 3, 4, 5), (1, 3, 5)}


def test_subject_disjoint_split(agedb):
    ds = AgeImageFolder(agedb)
    for seed in range(5):
        forget, retain = ds.subject_forget_split(0.3, seed=seed)
        assert torch.equal(torch.cat([forget, retain]).sort().values, torch.arange(6))
        forgotten = {ds.subjects[i] for i in forget.tolist()}
        kept = {ds.subjects[i] for i in retain.tolist()}
        assert not forgotten & kept
        _assert_greedy_to_goal(ds.subjects, forget, goal=2)  # round(0.3 * 6)
        again = ds.subject_forget_split(0.3, seed=seed)
        assert torch.equal(again[0], forget) and torch.equal(again[1], retain)
    with pytest.raises(ValueError, match="fraction"):
        ds.subject_forget_split(1.0)
    with pytest.raises(ValueError, match="retain set is empty"):
        subject_forget_split(["a", "a", "b"], 0.9)
    with pytest.raises(ValueError, match="no subject"):
        subject_forget_split(None, 0.1)


def test_errors(tmp_path, agedb):
    with pytest.raises(FileNotFoundError, match="root"):
        AgeImageFolder(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no images"):
        AgeImageFolder(empty)
    _write(agedb / "holiday.png", 1)
    with pytest.raises(ValueError, match="'holiday.png' matches neither"):
        AgeImageFolder(agedb)
    with pytest.raises(ValueError, match="layout 'agedb'.*holiday"):
        AgeImageFolder(agedb, layout="agedb")
    with pytest.raises(ValueError, match="integer-named"):
        AgeImageFolder(agedb, layout="folder")
    with pytest.raises(ValueError, match="layout"):
        AgeImageFolder(agedb, layout="imdb")
    with pytest.raises(ValueError, match="group 'age'"):
        AgeImageFolder(agedb, pattern=r"(\d+)")
    with pytest.raises(ValueError, match="target"):
        AgeImageFolder(agedb, target="decade")
    with pytest.raises(ValueError, match="size"):
        AgeImageFolder(agedb, size=0)
    old = tmp_path / "old"
    (old / "300").mkdir(parents=True)
    _write(old / "300" / "a.png", 1)
    with pytest.raises(ValueError, match="age 300"):
        AgeImageFolder(old)
