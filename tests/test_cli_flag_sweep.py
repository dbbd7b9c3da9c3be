"""Sweep of every ``fastunlearn`` command's flags, found by walking ``build_parser()``.

Bad numbers, empty or blocked paths, bad or mis-cased choices and contradicting flags end
in a clean error (exit status 2, or 1 for a run that fails numerically) that names the
flag, never a traceback, and never cost a user's files. Expensive work is stubbed out
where a test only shows that the checks come before it.
"""

import argparse
import os
from pathlib import Path

import pytest
import torch

from fastunlearn import cli_types
from fastunlearn.cli import build_parser, main

pytestmark = pytest.mark.usefixtures("one_thread")

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "forget_with_precision"
if not FIXTURE.is_dir():
    FIXTURE = Path("/work/shared/fixtures/forget_with_precision")

#: Flags a command requires, so that parsing reaches the flag under test.
REQUIRED = {"extract": ["--data-dir", "."], "evaluate": ["somewhere"]}


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def _options(predicate):
    """``(command, flag, action)`` of every option with a value that ``predicate`` accepts."""
    out = []
    for command, parser in sorted(_subparsers().items()):
        for action in parser._actions:
            if action.option_strings and action.nargs != 0 and predicate(action):
                out.append(pytest.param(command, action.option_strings[-1], action,
                                        id=f"{command}{action.option_strings[-1]}"))
    return out


def _converts_to(action, kind) -> bool:
    if action.type is None or action.choices is not None:
        return False
    for text in ("1", "3", "0.5"):  # a value inside the flag's range
        try:
            value = action.type(text)
        except (argparse.ArgumentTypeError, ValueError, TypeError):
            continue
        return isinstance(value, kind) and not isinstance(value, bool)
    return False


INT_OPTIONS = _options(lambda a: _converts_to(a, int))
FLOAT_OPTIONS = _options(lambda a: _converts_to(a, float))
CHOICE_OPTIONS = _options(lambda a: a.choices is not None)
PATH_OPTIONS = _options(lambda a: a.type is cli_types.path)


def parse_error(argv, capsys):
    """Run ``main(argv)``, expect an argparse error; return its stderr."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert "Traceback" not in err
    return err


# ---- numbers --------------------------------------------------------------------------------


def test_the_sweep_sees_every_command_and_its_numeric_flags():
    commands = {p.values[0] for p in INT_OPTIONS + FLOAT_OPTIONS}
    assert {"remove", "extract", "repair", "unlearn-features", "forget", "exposure",
            "evaluate"} <= commands
    assert len(INT_OPTIONS) >= 40 and len(FLOAT_OPTIONS) >= 25


@pytest.mark.parametrize(("command", "flag", "action"), INT_OPTIONS + FLOAT_OPTIONS)
def test_numeric_flags_use_the_checked_types(command, flag, action):
    # a bare int/float lets nan, inf, negatives or 10**20 through to the run
    assert action.type not in (int, float), f"{command} {flag} is a bare {action.type}"


@pytest.mark.parametrize(("command", "flag", "action"), INT_OPTIONS)
@pytest.mark.parametrize("value", ["nan", "inf", "1e400", "abc", "", "1.5",
                                   "99999999999999999999"])
def test_integer_flags_refuse_non_integers_and_huge_values(command, flag, action, value,
                                                           capsys):
    err = parse_error([command, *REQUIRED.get(command, []), f"{flag}={value}"], capsys)
    assert f"argument {flag}:" in err


@pytest.mark.parametrize(("command", "flag", "action"), FLOAT_OPTIONS)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400", "abc", ""])
def test_float_flags_refuse_non_finite_values(command, flag, action, value, capsys):
    err = parse_error([command, *REQUIRED.get(command, []), f"{flag}={value}"], capsys)
    assert f"argument {flag}:" in err


#: Numeric flags for which a negative number is a valid value.
NEGATIVE_OK = {("unlearn-features", "--value")}


@pytest.mark.parametrize(("command", "flag", "action"), INT_OPTIONS + FLOAT_OPTIONS)
def test_negative_numbers_are_refused_where_they_mean_nothing(command, flag, action, capsys):
    argv = [command, *REQUIRED.get(command, []), f"{flag}=-1"]
    if (command, flag) in NEGATIVE_OK:
        assert getattr(build_parser().parse_args(argv), action.dest) == -1
        return
    assert f"argument {flag}:" in parse_error(argv, capsys)


@pytest.mark.parametrize(("command", "flag", "action"),
                         [p for p in INT_OPTIONS if p.values[2].dest.endswith("seed")])
def test_seeds_take_32_bits(command, flag, action, capsys):
    argv = [command, *REQUIRED.get(command, [])]
    assert getattr(build_parser().parse_args([*argv, flag, str(2**32 - 1)]), action.dest) \
        == 2**32 - 1
    err = parse_error([*argv, flag, str(2**32)], capsys)
    assert f"argument {flag}: must be at most 4294967295" in err


@pytest.mark.parametrize(("argv", "flag"), [
    (["forget", "--lr", "0"], "--lr"),
    (["forget", "--forget-seed", "-1"], "--forget-seed"),
    (["unlearn-features", "--delta", "1"], "--delta"),
    (["unlearn-features", "--delta", "5"], "--delta"),
    (["unlearn-features", "--columns=-1"], "--columns"),
    (["unlearn-features", "--binary", "1,1"], "--binary"),
    (["unlearn-features", "--binary", "1,99"], "--binary"),
    (["exposure", "--candidates", "2"], "--candidates"),
    (["exposure", "--seed", "-1"], "--seed"),
    (["repair", "--budget", "0"], "--budget"),
    (["extract", "--data-dir", ".", "--epochs", "0"], "--epochs"),
    (["remove", "--subsample-ratio", "0"], "--subsample-ratio"),
])
def test_values_that_failed_after_parsing_are_refused_by_argparse(argv, flag, capsys):
    assert f"argument {flag}:" in parse_error(argv, capsys)


# ---- choices --------------------------------------------------------------------------------


@pytest.mark.parametrize(("command", "flag", "action"), CHOICE_OPTIONS)
def test_bad_and_mis_cased_choices_are_refused(command, flag, action, capsys):
    argv = [command, *REQUIRED.get(command, [])]
    bad = "bogus" if isinstance(action.choices[0], str) else str(max(action.choices) + 1)
    assert f"argument {flag}: invalid choice" in parse_error([*argv, flag, bad], capsys)
    choice = str(action.choices[0])
    if choice.upper() != choice:
        err = parse_error([*argv, flag, choice.upper()], capsys)
        assert f"argument {flag}: invalid choice" in err


# ---- paths ----------------------------------------------------------------------------------

#: Every path a command reads or writes (command, flag); the walk must find them all (by an
#: option's last name: ``remove`` and ``repair`` take ``--result-dir`` or ``--out``).
PATHS = {("demo", "--result-dir"), ("remove", "--data-dir"), ("remove", "--out"),
         ("extract", "--data-dir"), ("extract", "--checkpoint"), ("repair", "--data-dir"),
         ("repair", "--out"), ("unlearn-features", "--out"), ("forget", "--data-dir"),
         ("forget", "--out"), ("forget", "--cache-dir"), ("evaluate", "--out")}


def test_every_path_flag_is_checked():
    found = {(p.values[0], p.values[1]) for p in PATH_OPTIONS}
    assert PATHS <= found
    exposure_out = [a for a in _subparsers()["exposure"]._actions if a.dest == "out"][0]
    with pytest.raises(argparse.ArgumentTypeError):
        exposure_out.type("")


@pytest.mark.parametrize(("command", "flag", "action"), PATH_OPTIONS)
def test_empty_paths_are_refused(command, flag, action, capsys, tmp_path):
    # '' would silently mean the current folder (and write the results there)
    argv = [command, *REQUIRED.get(command, []), f"{flag}="]
    if command == "extract" and flag == "--data-dir":
        argv = [command, f"{flag}="]
    # argparse names an option by all its names: --result-dir/--out
    name = "/".join(action.option_strings)
    assert f"argument {name}: must not be empty" in parse_error(argv, capsys)
    assert not list(tmp_path.iterdir())


def test_empty_positional_dir_of_evaluate_is_refused(capsys):
    assert "argument dir: must not be empty" in parse_error(["evaluate", ""], capsys)


def _stub(monkeypatch, target: str, name: str) -> None:
    """Replace ``target.name`` with a function that fails the test when called."""
    import importlib

    def must_not_run(*args, **kwargs):
        raise AssertionError(f"{target}.{name} ran although the output was refused")

    monkeypatch.setattr(importlib.import_module(target), name, must_not_run)


#: (argv before the output flag, output flag, the flag the error names, what to stub).
WRITERS = [
    pytest.param(["remove", "--train-mode", "binary"], "--result-dir", "--result-dir",
                 ("fastunlearn.certified.experiment", "run_removal_experiment"), id="remove"),
    pytest.param(["repair"], "--result-dir", "--result-dir",
                 ("fastunlearn.influence.experiment", "run_repair_experiment"), id="repair"),
    pytest.param(["unlearn-features", "--dataset", "wine"], "--out", "--out",
                 ("fastunlearn.influence.feature_experiment", "run_feature_experiment"),
                 id="unlearn-features"),
    pytest.param(["forget", "--method", "finetune", "--no-cache"], "--out", "--out",
                 ("fastunlearn.harness.runner", "load_harness_data"), id="forget"),
    pytest.param(["forget", "--method", "finetune"], "--cache-dir", "--cache-dir",
                 ("fastunlearn.harness", "run_harness"), id="forget-cache"),
    pytest.param(["evaluate", str(FIXTURE)], "--out", "--out",
                 ("fastunlearn.metrics.evaluate", "evaluate_logits_dir"), id="evaluate"),
    pytest.param(["exposure"], "--out", "--out",
                 ("fastunlearn.exposure.experiment", "run_canary_experiment"), id="exposure"),
    pytest.param(["demo"], "--result-dir", "--result-dir", ("fastunlearn.demo", "main"),
                 id="demo"),
    pytest.param(["extract", "--dataset", "digits", "--extractor", "standard"], "--data-dir",
                 "--data-dir", ("fastunlearn.certified.extract_cli", "_train_extractor"),
                 id="extract"),
]


def _refused(argv, argument, capsys) -> str:
    status = main(argv)
    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert f": error: '{argument}'" in err
    return err


@pytest.fixture
def stub_runner(monkeypatch):
    def apply(target):
        _stub(monkeypatch, *target)
    return apply


@pytest.mark.parametrize(("argv", "flag", "argument", "target"), WRITERS)
@pytest.mark.parametrize("where", ["file", "below_file"])
def test_a_file_in_the_way_of_an_output_folder_is_refused_and_kept(
        argv, flag, argument, target, where, tmp_path, capsys, stub_runner):
    stub_runner(target)
    blocker = tmp_path / "notes.txt"
    blocker.write_text("keep me")
    folder = blocker if where == "file" else blocker / "sub"
    _refused([*argv, flag, str(folder)], argument, capsys)
    assert blocker.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize(("argv", "flag", "argument", "target"), WRITERS)
def test_an_unwritable_output_folder_is_refused(argv, flag, argument, target, tmp_path,
                                                capsys, monkeypatch, stub_runner):
    import fastunlearn._output_folder as module

    stub_runner(target)
    # root ignores permission bits: make the check see a read-only folder
    monkeypatch.setattr(module.os, "access", lambda path, mode: False)
    # extract reads its images from --data-dir too: that one must exist
    target = tmp_path if argument == "--data-dir" else tmp_path / "new"
    err = _refused([*argv, flag, str(target)], argument, capsys)
    assert "not writable" in err
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into a 0o500 folder")
@pytest.mark.parametrize(("argv", "flag", "argument", "target"), WRITERS)
def test_a_read_only_folder_is_refused(argv, flag, argument, target, tmp_path, capsys,
                                       stub_runner):
    stub_runner(target)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        _refused([*argv, flag, str(locked if argument == "--data-dir" else locked / "new")],
                 argument, capsys)
    finally:
        locked.chmod(0o700)


def test_remove_refuses_a_folder_named_like_its_report_before_fitting(tmp_path, capsys,
                                                                      stub_runner):
    from fastunlearn.certified.experiment import ExperimentConfig

    stub_runner(("fastunlearn.certified.experiment", "run_removal_experiment"))
    stem = ExperimentConfig(train_mode="binary").stem
    (tmp_path / f"{stem}.md").mkdir()
    err = _refused(["remove", "--train-mode", "binary", "--result-dir", str(tmp_path)],
                   "--result-dir", capsys)
    assert f"{stem}.md" in err


def test_demo_refuses_a_folder_named_like_its_report_before_running(tmp_path, capsys,
                                                                    stub_runner):
    from fastunlearn import demo
    from fastunlearn.certified.experiment import ExperimentConfig

    stub_runner(("fastunlearn.demo", "main"))
    stem = ExperimentConfig(**demo.OVR).stem
    (tmp_path / f"{stem}.json").mkdir()
    _refused(["demo", "--result-dir", str(tmp_path)], "--result-dir", capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible")
def test_demo_on_cuda_without_a_gpu_is_a_clean_error(capsys, stub_runner):
    stub_runner(("fastunlearn.demo", "main"))
    assert main(["demo", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastunlearn demo: error: '--device'") and "Traceback" not in err


@pytest.mark.parametrize(("spec", "message"), [
    ("tpu", "'--device' must be cpu, cuda or cuda:<index>, got 'tpu'"),
    ("cuda:x", "'--device' must be cpu, cuda or cuda:<index>, got 'cuda:x'"),
    pytest.param("cuda:0", "'--device' is 'cuda:0' but no CUDA GPU is visible",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")),
])
def test_demo_takes_every_device_spelling_the_other_commands_take(capsys, stub_runner, spec,
                                                                  message):
    """`--device` parses as everywhere else (`cuda:<i>` was 'invalid choice' before)."""
    stub_runner(("fastunlearn.demo", "main"))
    assert main(["demo", "--device", spec]) == 2
    assert capsys.readouterr().err.strip() == f"fastunlearn demo: error: {message}"


def test_the_demo_module_parses_the_device_the_same_way(capsys):
    from fastunlearn import demo as demo_module

    with pytest.raises(SystemExit) as stop:
        demo_module.main(["--device", "tpu"])
    assert stop.value.code == 2
    assert "'--device' must be cpu, cuda or cuda:<index>, got 'tpu'" in capsys.readouterr().err


# ---- extract: names and checkpoints -----------------------------------------------------------


@pytest.mark.parametrize("name", ["../escape", "a/b", "", ".."])
def test_extract_name_with_a_path_is_refused_before_anything_is_written(name, tmp_path,
                                                                        capsys):
    data = tmp_path / "data"
    data.mkdir()
    err = parse_error(["extract", "--data-dir", str(data), "--dataset", "digits",
                       "--extractor", "standard", "--name", name], capsys)
    assert "argument --name: must be a plain name" in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["data"]


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_extract_never_loads_or_overwrites_a_file_that_is_not_a_checkpoint(
        force, tmp_path, capsys, stub_runner):
    stub_runner(("fastunlearn.certified.extract_cli", "_train_extractor"))
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    err = _refused(["extract", "--data-dir", str(tmp_path), "--dataset", "digits",
                    "--extractor", "standard", "--checkpoint", str(notes), *force],
                   "--checkpoint", capsys)
    assert "not a safetensors file" in err
    assert notes.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("where", ["folder", "below_file"])
def test_extract_refuses_a_checkpoint_path_it_cannot_write_before_training(
        where, tmp_path, capsys, stub_runner):
    stub_runner(("fastunlearn.certified.extract_cli", "_train_extractor"))
    blocker = tmp_path / "blocker"
    if where == "folder":
        blocker.mkdir()
        checkpoint = blocker
    else:
        blocker.write_text("keep me")
        checkpoint = blocker / "model.safetensors"
    _refused(["extract", "--data-dir", str(tmp_path), "--dataset", "digits", "--extractor",
              "standard", "--checkpoint", str(checkpoint)], "--checkpoint", capsys)
    assert blocker.is_dir() or blocker.read_text() == "keep me"


def test_extract_refuses_a_folder_named_like_its_features_before_training(tmp_path, capsys,
                                                                          stub_runner):
    stub_runner(("fastunlearn.certified.extract_cli", "_train_extractor"))
    (tmp_path / "mine_digits_extracted.safetensors").mkdir()
    _refused(["extract", "--data-dir", str(tmp_path), "--dataset", "digits", "--extractor",
              "standard", "--name", "mine"], "--data-dir", capsys)


# ---- existing folders: the policy of _output_folder holds for every command ----------------


TINY_RUNS = [
    pytest.param(["remove", "--train-mode", "binary", "--num-removes", "2", "--num-steps", "5",
                  "--no-plots", "--no-retrain-timing", "--result-dir"], id="remove"),
    pytest.param(["repair", "--epochs", "1", "--n-train", "100",
                  "--protocol", "one-shot", "--no-plots", "--result-dir"], id="repair"),
    pytest.param(["unlearn-features", "--dataset", "wine", "--no-linear", "--no-plots",
                  "--out"], id="unlearn-features"),
    pytest.param(["forget", "--method", "finetune", "--seeds", "1", "--oracles", "1",
                  "--epochs", "1", "--no-cache", "--no-mia", "--no-progress",
                  "--set", "finetune.epochs=1", "--out"], id="forget"),
    pytest.param(["evaluate", str(FIXTURE), "--no-plot", "--no-baseline", "--methods",
                  "finetune", "--out"], id="evaluate"),
    pytest.param(["exposure", "--steps", "1", "--n-sentences", "30", "--secret-length", "1",
                  "--insertions", "2", "--hidden", "4", "--embed-dim", "4", "--seq-len", "8",
                  "--batch-size", "2", "--out"], id="exposure"),
]


@pytest.mark.parametrize("argv", TINY_RUNS)
def test_writing_into_an_existing_folder_keeps_the_users_files(argv, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("keep me")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "data.csv").write_text("1,2\n")
    assert main([*argv, str(tmp_path)]) == 0, capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    assert (tmp_path / "mine" / "data.csv").read_text() == "1,2\n"
    assert len(list(tmp_path.iterdir())) > 2  # the command wrote its results beside them


def test_forget_refuses_to_replace_a_logits_folder_of_the_user(tmp_path, capsys, stub_runner):
    stub_runner(("fastunlearn.harness.runner", "load_harness_data"))
    (tmp_path / "logits").mkdir()
    (tmp_path / "logits" / "mine.npy").write_text("keep me")
    assert main(["forget", "--method", "finetune", "--no-cache", "--no-progress", "--out",
                 str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "refusing to replace it" in err and "Traceback" not in err
    assert (tmp_path / "logits" / "mine.npy").read_text() == "keep me"


# ---- flags that depend on each other, and runs that fail numerically -----------------------


def test_exposure_secret_and_a_different_secret_length_contradict(capsys, stub_runner):
    stub_runner(("fastunlearn.exposure.experiment", "run_canary_experiment"))
    assert main(["exposure", "--secret", "12", "--secret-length", "3"]) == 2
    err = capsys.readouterr().err
    assert "--secret-length 3 contradicts --secret '12'" in err


def test_exposure_secret_length_follows_the_secret(monkeypatch, capsys):
    import fastunlearn.exposure.experiment as experiment

    seen = []

    def record(config):
        seen.append(config)
        raise ValueError("stop here")

    monkeypatch.setattr(experiment, "run_canary_experiment", record)
    assert main(["exposure", "--secret", "123456"]) == 2
    assert main(["exposure", "--secret", "12", "--secret-length", "2"]) == 2
    assert main(["exposure"]) == 2
    assert [c.secret_length for c in seen] == [6, 2, 4]
    assert capsys.readouterr().err.count("stop here") == 3


def test_forget_no_cache_and_cache_dir_contradict(tmp_path, capsys, stub_runner):
    stub_runner(("fastunlearn.harness", "run_harness"))
    assert main(["forget", "--no-cache", "--cache-dir", str(tmp_path / "c")]) == 2
    assert "--no-cache and --cache-dir contradict" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_forget_set_nan_is_refused_as_not_finite(capsys, stub_runner):
    stub_runner(("fastunlearn.harness", "run_harness"))
    assert main(["forget", "--method", "finetune", "--set", "finetune.lr=nan"]) == 2
    assert "'lr' must be finite" in capsys.readouterr().err


def test_unlearn_features_rows_error_names_the_flag(tmp_path, capsys, stub_runner):
    stub_runner(("fastunlearn.influence.feature_experiment", "write_feature_outputs"))
    assert main(["unlearn-features", "--dataset", "wine", "--mode", "replace", "--rows",
                 "100000", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "'--rows' must be <=" in err and "n_rows" not in err


def test_remove_with_a_lam_whose_square_underflows_is_a_clean_failure(tmp_path, capsys):
    status = main(["remove", "--train-mode", "binary", "--lam", "1e-300", "--num-removes",
                   "2", "--num-steps", "5", "--no-plots", "--no-retrain-timing",
                   "--result-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert status == 1 and "Traceback" not in err
    assert "fastunlearn remove: error: the run failed numerically" in err and "--lam" in err


def test_remove_names_the_solver_flag_when_cg_gives_up(tmp_path, capsys, monkeypatch):
    """CG's advice to use the Cholesky solver names the command's flag, not the Python
    argument (a removal at an extreme --lam, here simulated)."""
    from fastunlearn.certified import experiment

    def cg_gives_up(*args, **kwargs):
        raise RuntimeError("CG did not reach the residual target in 200 iterations "
                           "(ill-conditioned Hessian); use solver='cholesky'")

    monkeypatch.setattr(experiment, "run_removal_experiment", cg_gives_up)
    status = main(["remove", "--train-mode", "binary", "--num-removes", "2", "--no-plots",
                   "--result-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert status == 1 and "Traceback" not in err
    assert "use --solver cholesky" in err and "solver='cholesky'" not in err
