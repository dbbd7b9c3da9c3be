"""A command's errors name its flags, not the Python arguments they are passed on as."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fastunlearn.cli import main
from fastunlearn.cli_types import name_flags


def test_name_flags_replaces_only_the_leading_name():
    flags = {"spec": "--forget", "epochs": "--epochs"}
    assert name_flags("'spec' 'class:10': no", flags) == "'--forget' 'class:10': no"
    # quoted words later on (values, a config's fields) stay as they are
    assert name_flags("'other' x 'epochs'", flags) == "'other' x 'epochs'"
    assert name_flags("fields: ['epochs']", flags) == "fields: ['epochs']"
    assert name_flags("", flags) == ""


def test_name_flags_every_replaces_each_known_name():
    flags = {"n_candidates": "--candidates", "value": "--value"}
    message = "fit to 'n_candidates' 3; 'value' 1e9 and 'other' stay"
    assert name_flags(message, flags, every=True) == (
        "fit to '--candidates' 3; '--value' 1e9 and 'other' stay")
    assert name_flags("no names here", flags, every=True) == "no names here"


def test_a_negating_flag_shows_its_own_values():
    """``--no-linear`` sets ``linear=False``: a run without the flag after one with it
    changed ``linear`` False -> True, which is the flag going True -> False."""
    flags = {"linear": "--no-linear", "retrain": "--no-retrain", "seed": "--seed"}
    message = "other settings ('linear': False -> True; 'retrain': True -> False; 'seed': 0 -> 1)"
    assert name_flags(message, flags, every=True) == (
        "other settings ('--no-linear': True -> False; '--no-retrain': False -> True; "
        "'--seed': 0 -> 1)")


def test_unlearn_features_names_the_earlier_runs_no_linear_flag(tmp_path):
    base = [sys.executable, "-m", "fastunlearn", "unlearn-features", "--dataset", "wine",
            "--no-plots", "--out", str(tmp_path)]
    first = subprocess.run([*base, "--no-linear"], capture_output=True, text=True,
                           timeout=600, check=False)
    assert first.returncode == 0, first.stderr
    second = subprocess.run(base, capture_output=True, text=True, timeout=600, check=False)
    assert second.returncode == 0, second.stderr
    assert "('--no-linear': True -> False)" in second.stderr, second.stderr


@pytest.mark.parametrize(("argv", "expected"), [
    (["forget", "--forget", "class:10"], "'--forget' 'class:10': class 10 does not occur"),
    (["forget", "--set", "finetune.nope=1"],
     "'--set' for 'finetune': 'nope' is not a field of FinetuneConfig (fields: ['batch_size'"),
    (["forget", "--method", ","], "'--method' is empty"),
    (["exposure", "--n-sentences", "1", "--steps", "1"],
     "'--insertions' 12 is more than the sentences of the generated text (n_sentences 1)"),
    (["exposure", "--seq-len", "100000", "--steps", "1"],
     "'--seq-len' 100000 is not shorter than the generated text ("),
    (["unlearn-features", "--dataset", "wine", "--columns", "99", "--no-plots"],
     "'--columns' holds [99], outside [0, 12] (13 features)"),
    (["unlearn-features", "--dataset", "wine", "--top-k", "99", "--no-plots"],
     "'--top-k' must be <= 13 features, got 99"),
])
def test_errors_name_the_flags(tmp_path, capsys, argv, expected):
    assert main([*argv, "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fastunlearn {argv[0]}: error: {expected}"), err
    assert not (tmp_path / "out").exists()


def test_evaluate_names_its_folder_argument(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith("fastunlearn evaluate: error: 'DIR': ")


def test_no_effect_message_lists_the_names_in_one_sentence():
    from fastunlearn._no_effect import no_effect_message

    assert no_effect_message(["--a"], "here") == "'--a' has no effect here"
    assert no_effect_message(["a", "b", "c"], "(why)") == "'a', 'b' and 'c' have no effect (why)"
    with pytest.raises(ValueError, match="'names' must name at least one setting"):
        no_effect_message([], "here")


@pytest.mark.parametrize("argv", [
    ["forget", "--seed", "7"],  # a flag of other commands; argparse took it as --seeds
    ["forget", "--ora", "7"],
    ["remove", "--num-r", "7"],
    ["evaluate", "somewhere", "--jso"],
])
def test_a_flag_prefix_is_not_taken_for_the_whole_flag(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


@pytest.mark.parametrize(("module", "argv"), [
    ("fastunlearn.harness.cli", ["--ora", "7"]),
    ("fastunlearn.metrics.cli", ["somewhere", "--jso"]),
    ("fastunlearn.demo", ["--result", "x"]),
    ("bench.run", ["--qui"]),
])
def test_the_stand_alone_entry_points_take_whole_flags_only(module, argv, capsys):
    import importlib

    with pytest.raises(SystemExit) as exc:
        importlib.import_module(module).main(argv)
    assert exc.value.code == 2


def test_a_positive_number_below_float64s_range_says_why_it_is_refused():
    import argparse

    from fastunlearn.cli_types import positive_float

    with pytest.raises(argparse.ArgumentTypeError,
                       match=r"got 1e-400 \(0.0 in float64: below its smallest positive"):
        positive_float("1e-400")
    with pytest.raises(argparse.ArgumentTypeError, match=r"must be positive, got 0$"):
        positive_float("0")
    with pytest.raises(argparse.ArgumentTypeError, match=r"must be positive, got -1e-400$"):
        positive_float("-1e-400")
    assert positive_float("5e-324") == 5e-324
