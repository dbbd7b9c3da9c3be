"""Bad-argument sweep, part 3: data writers, report writers, harness config, anti-samples.

Every case marked "was:" failed before its fix (a raw OSError naming a temporary file, a
silent wrong result, or an error only once a run had started); the "still" cases pin the
accepted behaviour the fixes keep.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastunlearn.data import AgeImageFolder, load_features, save_features, save_forget_indices
from fastunlearn.forget import generate_antisamples
from fastunlearn.harness import HarnessConfig
from fastunlearn.report import plot_accuracy, plot_bounds, plot_times, write_markdown

X2, Y2 = torch.randn(2, 3), torch.tensor([0, 1])


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# ---- _paths.check_output_file --------------------------------------------------------------

def test_check_output_file(tmp_path):
    from fastunlearn._paths import check_output_file  # was: no such function

    (tmp_path / "f").write_text("")
    assert check_output_file(tmp_path / "a.txt") == tmp_path / "a.txt"
    with pytest.raises(FileNotFoundError, match="'out'.*'.*nope' does not exist"):
        check_output_file(tmp_path / "nope" / "a.txt", "out")
    with pytest.raises(ValueError, match="'out'.*exists and is not a folder"):
        check_output_file(tmp_path / "f" / "a.txt", "out")
    # with create_parents a missing folder is fine, a file on the way is not
    assert check_output_file(tmp_path / "x" / "y" / "a.txt", create_parents=True).name == "a.txt"
    with pytest.raises(ValueError, match="'path'.*exists and is not a folder"):
        check_output_file(tmp_path / "f" / "sub" / "a.txt", create_parents=True)
    with pytest.raises(TypeError, match="'path'"):
        check_output_file(None)
    assert _tree(tmp_path) == ["f"]


# ---- data writers: the folder of the file --------------------------------------------------

DATA_WRITERS = {
    "save_features": lambda p: save_features(p, X2, Y2),
    "save_forget_indices": lambda p: save_forget_indices(p, [1, 2]),
}


@pytest.mark.parametrize("writer", sorted(DATA_WRITERS))
def test_data_writers_missing_folder_named(tmp_path, writer):
    # was: FileNotFoundError "No such file or directory: '.../nope/a.txt.xmb0t8ez.tmp'"
    with pytest.raises(FileNotFoundError, match="'path'.*nope"):
        DATA_WRITERS[writer](tmp_path / "nope" / "a.txt")
    assert _tree(tmp_path) == []


@pytest.mark.parametrize("writer", sorted(DATA_WRITERS))
@pytest.mark.parametrize("below", [("a.txt",), ("sub", "a.txt")])
def test_data_writers_parent_is_a_file(tmp_path, writer, below):
    (tmp_path / "f").write_text("x")
    # was: NotADirectoryError / FileNotFoundError naming the temporary file
    with pytest.raises((ValueError, FileNotFoundError), match="'path'"):
        DATA_WRITERS[writer](tmp_path.joinpath("f", *below))
    assert _tree(tmp_path) == ["f"] and (tmp_path / "f").read_text() == "x"


# ---- report writers: folders are created, but not through a file --------------------------

REPORT_WRITERS = {
    "markdown": lambda p: write_markdown({}, p),
    "bounds": lambda p: plot_bounds([], 1.0, p),
    "accuracy": lambda p: plot_accuracy([], p),
    "times": lambda p: plot_times([], None, p),
}


@pytest.mark.parametrize("writer", sorted(REPORT_WRITERS))
@pytest.mark.parametrize("below", [("r.out",), ("sub", "r.out")])
def test_report_writers_parent_is_a_file(tmp_path, writer, below):
    (tmp_path / "f").write_text("x")
    # was: FileExistsError "[Errno 17] File exists: '.../f'" from mkdir, no argument named
    with pytest.raises(ValueError, match="'path'.*exists and is not a folder"):
        REPORT_WRITERS[writer](tmp_path.joinpath("f", *below))
    assert _tree(tmp_path) == ["f"]


def test_report_writers_still_create_missing_folders(tmp_path):
    # kept: the report writers create the folders (tests/test_report.py relies on it)
    assert write_markdown({}, tmp_path / "a" / "r.md").is_file()
    assert plot_times([], None, tmp_path / "b" / "c" / "t.png").is_file()


# ---- save_features labels / load_features split names -------------------------------------

@pytest.mark.parametrize("labels", [
    torch.tensor([0, 2**63], dtype=torch.uint64),  # was: stored as -9223372036854775808
    torch.tensor([0, -1]),  # was: stored; load_features_or_pixels refused the file later
    torch.tensor([-3, 1], dtype=torch.int8),
])
def test_save_features_refuses_labels_outside_0_to_int64(tmp_path, labels):
    with pytest.raises(ValueError, match=r"labels\['train'\]"):
        save_features(tmp_path / "f.safetensors", X2, labels)
    assert _tree(tmp_path) == []


def test_save_features_unsigned_labels_still_saved(tmp_path):
    y = torch.tensor([2**63 - 1, 3], dtype=torch.uint64)
    path = save_features(tmp_path / "f.safetensors", X2, y)
    assert load_features(path)[1]["train"].tolist() == [2**63 - 1, 3]


def test_load_features_refuses_an_empty_split_name(tmp_path):
    from safetensors.torch import save_file

    save_file({"X_": X2, "y_": Y2}, str(tmp_path / "f.safetensors"))
    # was: loaded as split '' ({'': X})
    with pytest.raises(ValueError, match="empty split name"):
        load_features(tmp_path / "f.safetensors")


# ---- AgeImageFolder numpy flags ------------------------------------------------------------

def test_age_folder_accepts_numpy_bools(tmp_path):
    for age in (23, 35):
        (tmp_path / str(age)).mkdir()
        Image.new("RGB", (4, 4), (200, 10, 10)).save(tmp_path / str(age) / "x.png")
    # was: TypeError "'grayscale' must be a bool, got bool"
    ds = AgeImageFolder(tmp_path, grayscale=np.bool_(True), skip_unmatched=np.bool_(False))
    assert ds.grayscale is True
    assert ds.tensors()[0].shape == (2, 1, 4, 4)
    with pytest.raises(TypeError, match="'grayscale'"):
        AgeImageFolder(tmp_path, grayscale="yes")


# ---- HarnessConfig field types -------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "exc", "match"), [
    # all were accepted, and failed only when run_harness started (or wrote the JSON)
    ({"device": "tpu"}, ValueError, "'device' must be cpu, cuda or cuda:<index>"),
    ({"device": "cuda:x"}, ValueError, "'device'"),
    ({"device": "meta"}, ValueError, "'device'"),
    ({"device": None}, TypeError, "'device'"),
    ({"device": 1.5}, TypeError, "'device'"),
    ({"device": -1}, ValueError, "'device'"),
    ({"dataset": None}, TypeError, "'dataset'"),
    ({"dataset": 3}, TypeError, "'dataset'"),
    ({"cache_dir": 3}, TypeError, "'cache_dir'"),
    ({"out_dir": ["o"]}, TypeError, "'out_dir'"),
    ({"data_dir": 1.0}, TypeError, "'data_dir'"),
    ({"out_dir": ""}, ValueError, "'out_dir'"),
])
def test_harness_config_checks_fields_at_construction(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        HarnessConfig(methods=("finetune",), **kwargs)


def test_harness_config_accepted_devices_and_paths(tmp_path):
    # CUDA need not be present to build a config: the run checks the GPU
    assert HarnessConfig(device="cuda:3").device == "cuda:3"
    assert HarnessConfig(device=torch.device("cpu")).device == "cpu"
    cfg = HarnessConfig(out_dir=tmp_path / "o", cache_dir=None, data_dir=tmp_path,
                        dataset="mnist")
    # paths are stored as str: the config goes into results.json
    assert cfg.out_dir == str(tmp_path / "o") and cfg.data_dir == str(tmp_path)
    assert not (tmp_path / "o").exists()


# ---- generate_antisamples dtypes -----------------------------------------------------------

def test_generate_antisamples_refuses_mixed_dtypes():
    forget, retain = torch.randn(3, 4), torch.randn(10, 4, dtype=torch.float64)
    # was: retain silently converted to forget's float32
    with pytest.raises(TypeError, match="forget and retain must have the same dtype"):
        generate_antisamples(forget, retain)
    with pytest.raises(TypeError, match="same dtype"):
        generate_antisamples(forget.double(), retain.float())


def test_generate_antisamples_same_dtype_still_works():
    for dtype in (torch.float32, torch.float64):
        out = generate_antisamples(torch.randn(3, 4, dtype=dtype), torch.randn(10, 4, dtype=dtype),
                                   tail_randomized=2, seed=1)
        assert out.samples.dtype == dtype and out.samples.shape[1:] == (4,)
