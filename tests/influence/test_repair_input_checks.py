"""Input checks of ``RepairConfig`` / ``run_repair_experiment`` and ``fastunlearn repair``.

Found by an audit: ``n_train`` and ``last_layers`` above what the data and the model have
were silently capped, a budget that is not a multiple of 10 flipped fewer labels without a
word, ``--data-dir`` was ignored with the bundled digits, and the command's errors named the
config's fields instead of its flags. The training is stubbed to raise :class:`_Stop`: a
check that fires has to come before it, and a run that raises ``_Stop`` got past the checks.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import warnings

import pytest
from helpers import printed_warnings

from fastunlearn.cli import build_parser, main
from fastunlearn.influence import experiment as exp
from fastunlearn.influence.cli import _FLAGS, add_parser
from fastunlearn.influence.experiment import (
    RepairConfig,
    flip_labels,
    load_repair_data,
    run_repair_experiment,
)

pytestmark = pytest.mark.usefixtures("one_thread")


class _Stop(Exception):
    """Raised by the training stub: the run got as far as training."""


@pytest.fixture
def no_training(monkeypatch):
    """Make the training of the clean / poisoned model raise :class:`_Stop`."""
    def train(*args, **kwargs):
        raise _Stop("training started")

    monkeypatch.setattr(exp, "train_classifier", train)


@pytest.fixture(scope="module")
def digits_rows() -> int:
    return int(load_repair_data(RepairConfig()).X_train.shape[0])


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = err.strip().splitlines()
    return line


# ---- 1: n_train above the training rows ----------------------------------------------------


def test_api_refuses_n_train_above_the_training_rows_before_training(no_training,
                                                                      digits_rows):
    assert digits_rows == 1438
    message = r"^'n_train' must be <= 1438 training rows \(0: all\), got 99999$"
    with pytest.raises(ValueError, match=message):
        run_repair_experiment(RepairConfig(n_train=99999))
    with pytest.raises(ValueError, match=message):
        load_repair_data(RepairConfig(n_train=99999))
    with pytest.raises(ValueError, match=r"must be <= 1438 .*, got 1439$"):
        run_repair_experiment(RepairConfig(n_train=1439))
    # every row, and 0 (all), are accepted: the runs go on to the training
    for n_train in (1438, 0):
        with pytest.raises(_Stop):
            run_repair_experiment(RepairConfig(n_train=n_train))
    assert load_repair_data(RepairConfig(n_train=1438)).X_train.shape[0] == 1438


def test_api_refuses_preloaded_data_of_another_size_than_n_train(no_training):
    data = load_repair_data(RepairConfig(n_train=300))
    with pytest.raises(ValueError, match=r"^'data' has 300 training rows but 'n_train' is "
                       r"200: load it with load_repair_data\(config\), or set n_train=0$"):
        run_repair_experiment(RepairConfig(n_train=200), data)
    for n_train in (300, 0):  # the same size, or no n_train: the runs go on to the training
        with pytest.raises(_Stop):
            run_repair_experiment(RepairConfig(n_train=n_train), data)


def test_cli_refuses_n_train_above_the_training_rows(no_training, tmp_path, capsys):
    out = tmp_path / "out"
    status = main(["repair", "--n-train", "99999", "--result-dir", str(out), "--no-plots"])
    assert status == 2
    assert _one_error_line(capsys) == ("fastunlearn repair: error: '--n-train' must be <= "
                                       "1438 training rows (0: all), got 99999")
    assert not out.exists()


# ---- 2: last_layers above the model's trainable parameter tensors --------------------------


def test_api_refuses_last_layers_above_the_models_tensors_before_training(no_training):
    # small_cnn on the digits: 6 trainable parameter tensors (2 convolutions, 1 head)
    with pytest.raises(ValueError, match=r"^'last_layers' must be <= 6 \(the model's "
                       r"trainable parameter tensors; 0: all\), got 99$"):
        run_repair_experiment(RepairConfig(n_train=100, last_layers=99))
    with pytest.raises(ValueError, match=r"must be <= 6 .*, got 7$"):
        run_repair_experiment(RepairConfig(n_train=100, last_layers=7))
    # before the direct solver's size check too (which selects by last_layers)
    with pytest.raises(ValueError, match=r"^'last_layers' must be <= 6 "):
        run_repair_experiment(RepairConfig(n_train=100, solver="direct", last_layers=7))
    for k in (6, 1, 0):  # all six, the last one, and 0 (all)
        with pytest.raises(_Stop):
            run_repair_experiment(RepairConfig(n_train=100, last_layers=k))


def test_api_counts_the_tensors_of_the_model_that_is_used(no_training):
    # the mlp has another count than small_cnn; the bound is that of the model built
    from fastunlearn.influence.experiment import _build_checked_model

    config = RepairConfig(n_train=100, model="mlp")
    data = load_repair_data(config)
    model = _build_checked_model(config, data.X_train, data.num_classes)
    count = sum(1 for p in model.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match=rf"^'last_layers' must be <= {count} .*, got "
                       rf"{count + 1}$"):
        run_repair_experiment(dataclasses.replace(config, last_layers=count + 1), data)
    with pytest.raises(_Stop):
        run_repair_experiment(dataclasses.replace(config, last_layers=count), data)


def test_cli_refuses_last_layers_above_the_models_tensors(no_training, tmp_path, capsys):
    out = tmp_path / "out"
    status = main(["repair", "--n-train", "100", "--last-layers", "99", "--result-dir",
                   str(out), "--no-plots"])
    assert status == 2
    assert _one_error_line(capsys) == (
        "fastunlearn repair: error: '--last-layers' must be <= 6 (the model's trainable "
        "parameter tensors; 0: all), got 99")
    assert not out.exists()


# ---- 3: a budget that is not a multiple of 10 ----------------------------------------------


def test_api_warns_when_the_budget_is_not_a_multiple_of_10(no_training):
    labels = load_repair_data(RepairConfig(n_train=200)).y_train
    assert flip_labels(labels, 15, 42)[1].numel() == 10  # what the warning says
    assert flip_labels(labels, 39, 42)[1].numel() == 30
    with pytest.warns(UserWarning, match=r"^'budget' 15 flips 10 labels \(budget // 10 = 1 "
                      r"per class\)$"), pytest.raises(_Stop):  # a warning, the run goes on
        run_repair_experiment(RepairConfig(n_train=200, budget=15))
    with pytest.warns(UserWarning, match=r"^'budget' 39 flips 30 labels \(budget // 10 = 3 "
                      r"per class\)$"), pytest.raises(_Stop):
        run_repair_experiment(RepairConfig(n_train=200, budget=39))
    for budget in (20, None):  # a multiple of 10, and the default (20 % rounded to tens)
        with warnings.catch_warnings(record=True) as record, pytest.raises(_Stop):
            warnings.simplefilter("always")
            run_repair_experiment(RepairConfig(n_train=200, budget=budget))
        assert not [w for w in record if "'budget'" in str(w.message)]


def _printed_warnings(argv):
    """Run ``main(argv)``; return ``(its exception or status, the warning lines printed)``."""
    return printed_warnings(lambda: main(argv), _Stop)


def test_cli_warns_about_the_budget_with_the_flags_name(no_training, tmp_path):
    out = tmp_path / "out"
    argv = ["repair", "--n-train", "200", "--budget", "15", "--result-dir", str(out),
            "--no-plots"]
    with pytest.warns(UserWarning, match=r"'budget' 15 flips 10 labels"), \
            pytest.raises(_Stop):
        main(argv)
    outcome, lines = _printed_warnings(argv)
    assert isinstance(outcome, _Stop)  # only a warning: the run went on to the training
    assert ("fastunlearn repair: warning: '--budget' 15 flips 10 labels (budget // 10 = 1 "
            "per class)\n") in lines


# ---- 4: --data-dir with the bundled digits -------------------------------------------------


def _record_configs(monkeypatch):
    seen = []

    def stub(config, data=None, **kwargs):
        seen.append(config)
        raise _Stop("stub: stop before any work")

    monkeypatch.setattr(exp, "run_repair_experiment", stub)
    return seen


def test_cli_warns_that_data_dir_has_no_effect_with_the_digits(monkeypatch, tmp_path):
    seen = _record_configs(monkeypatch)
    message = ("'data_dir' has no effect with dataset='digits' (bundled; the folder is read "
               "for cifar10 only)")
    flag_message = message.replace("'data_dir'", "'--data-dir'").replace(
        "dataset='digits'", "'--dataset digits'")
    with pytest.warns(UserWarning, match=f"^{re.escape(flag_message)}$"), pytest.raises(_Stop):
        main(["repair", "--data-dir", str(tmp_path), "--result-dir", str(tmp_path / "o")])
    assert seen[-1].dataset == "digits"
    # the command shows its flag; the Python API warns too
    outcome, lines = _printed_warnings(["repair", "--data-dir", str(tmp_path), "--result-dir",
                                        str(tmp_path / "o")])
    assert isinstance(outcome, _Stop)
    assert lines == [f"fastunlearn repair: warning: {flag_message}\n"]
    with pytest.warns(UserWarning, match=f"^{re.escape(message)}$"):
        RepairConfig(data_dir=str(tmp_path)).validate()
    # read with cifar10; not given at all: no warning
    for argv in (["--dataset", "cifar10", "--data-dir", str(tmp_path)], []):
        with warnings.catch_warnings(record=True) as record, pytest.raises(_Stop):
            warnings.simplefilter("always")
            main(["repair", *argv, "--result-dir", str(tmp_path / "o")])
        assert not [w for w in record if "data_dir" in str(w.message)]
    assert seen[-2].data_dir == str(tmp_path) and seen[-1].data_dir is None


# ---- 5: the command's errors and warnings name its flags -----------------------------------


def test_the_flag_names_are_the_repair_parsers_flags():
    args = build_parser("repair").parse_args(["repair"])
    assert args.flag_names is _FLAGS  # the warnings name the flags too
    parser = add_parser(argparse.ArgumentParser().add_subparsers())
    options = {o: a.dest for a in parser._actions for o in a.option_strings}
    fields = {f.name for f in dataclasses.fields(RepairConfig)}
    for field, flag in _FLAGS.items():
        if field in ("out_dir", "out"):  # other commands' names of the output folder
            assert flag == "--out"
            continue
        if field == "result_dir":  # the command's own folder (run_repair_experiment's is not)
            assert options[flag] == field
            continue
        assert field in fields and flag in options
        assert options[flag] == ("protocol" if field == "protocols" else field)
    # as in the other commands' errors: files, folders and the device are named by flag too
    assert {"device", "cache_dir", "result_dir", "data_dir"} <= set(_FLAGS)
    assert _FLAGS["result_dir"] == "--result-dir" and options["--out"] == "result_dir"


def test_cli_errors_of_the_config_name_the_flags(no_training, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["repair", "--dataset", "cifar10", "--result-dir", str(out)]) == 2
    assert _one_error_line(capsys) == ("fastunlearn repair: error: '--data-dir' is required "
                                       "for dataset 'cifar10'")
    # a budget the first 100 digits cannot give (flip_labels names 'budget')
    assert main(["repair", "--n-train", "100", "--budget", "200", "--result-dir",
                 str(out)]) == 2
    line = _one_error_line(capsys)
    assert line.startswith("fastunlearn repair: error: '--budget' 200 needs 20 rows of class")
    assert not out.exists()
