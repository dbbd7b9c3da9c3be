"""Command-line fixes: extract reuses only a checkpoint of the same training settings, checks
its epochs and data folder first; output folders that cannot be created are refused before
any work; unknown flags are reported by the subcommand; Ctrl-C while the flags are parsed."""

import json
import warnings

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fastunlearn import cli
from fastunlearn._output_folder import check_output_folder
from fastunlearn.cli import main
from tests.helpers import COMMAND_ARGS

pytestmark = pytest.mark.usefixtures("one_thread")


def run_extract(data_dir, *flags):
    return main(["extract", "--data-dir", str(data_dir), "--dataset", "digits", "--model",
                 "mlp", "--name", "t1", "--epochs", "1", "--batch-size", "512", "--quiet",
                 *flags])


def _stored(checkpoint):
    with safe_open(str(checkpoint), framework="pt") as f:
        return f.metadata()


# ---- 1: a checkpoint is reused only with the settings it was trained with --------------------


def test_extract_stores_the_training_settings_with_the_checkpoint(tmp_path, capsys):
    assert run_extract(tmp_path, "--std", "5", "--seed", "3") == 0
    capsys.readouterr()
    settings = json.loads(_stored(tmp_path / "t1_digits_model.safetensors")["settings"])
    assert settings == {
        "--extractor": "dp", "--model": "mlp", "--dataset": "digits", "--epochs": 1,
        "--batch-size": 512, "--learning-rate": 1e-3, "--seed": 3, "--std": 5.0,
        "--clip": 4.0, "--delta": 1e-5}


def test_extract_refuses_a_checkpoint_of_other_settings_and_names_each_flag(tmp_path, capsys):
    assert run_extract(tmp_path) == 0
    capsys.readouterr()
    checkpoint = tmp_path / "t1_digits_model.safetensors"
    features = tmp_path / "t1_digits_extracted.safetensors"
    before = checkpoint.read_bytes(), features.read_bytes()
    assert run_extract(tmp_path, "--std", "50", "--epochs", "3", "--seed", "7") == 2
    captured = capsys.readouterr()
    assert "loaded the trained extractor" not in captured.out
    err = captured.err.strip()
    assert err.startswith("fastunlearn extract: error: '--checkpoint'") and "\n" not in err
    for shown in ("--epochs: saved 1, now 3", "--seed: saved 1, now 7",
                  "--std: saved 6.0, now 50.0", "--force", "--name", "--checkpoint"):
        assert shown in err
    assert "--clip" not in err and "--batch-size" not in err  # only the flags that differ
    assert (checkpoint.read_bytes(), features.read_bytes()) == before
    # the same settings load it; --force retrains it with the new ones
    assert run_extract(tmp_path) == 0
    assert "loaded the trained extractor" in capsys.readouterr().out
    assert run_extract(tmp_path, "--std", "50", "--seed", "7", "--force") == 0
    capsys.readouterr()
    settings = json.loads(_stored(checkpoint)["settings"])
    assert (settings["--std"], settings["--seed"]) == (50.0, 7)


def test_extract_compares_the_attack_of_an_adversarial_checkpoint(tmp_path, capsys):
    assert run_extract(tmp_path, "--extractor", "adversarial") == 0
    capsys.readouterr()
    assert run_extract(tmp_path, "--extractor", "adversarial", "--attack", "pgd",
                       "--pgd-steps", "2") == 2
    err = capsys.readouterr().err
    assert "--attack: saved 'fgsm', now 'pgd'" in err
    assert "--pgd-steps: saved 'unset', now 2" in err


def test_extract_loads_an_old_checkpoint_without_settings_with_a_warning(tmp_path, capsys):
    assert run_extract(tmp_path) == 0
    capsys.readouterr()
    checkpoint = tmp_path / "t1_digits_model.safetensors"
    weights = load_file(str(checkpoint))  # rewritten as an older version wrote it: meta only
    save_file(weights, str(checkpoint), metadata={"meta": _stored(checkpoint)["meta"]})
    assert "settings" not in _stored(checkpoint)
    assert run_extract(tmp_path, "--std", "50") == 0  # not checkable: loaded as before
    captured = capsys.readouterr()
    assert "loaded the trained extractor" in captured.out
    warning = [line for line in captured.err.splitlines() if "cannot be checked" in line]
    assert len(warning) == 1 and str(checkpoint) in warning[0] and "--force" in warning[0]


# ---- 2: more saved epochs than --epochs is refused before "resuming ..." ---------------------


def test_extract_refuses_fewer_epochs_than_saved_before_printing_resume(tmp_path, capsys):
    from fastunlearn.epoch_state import EpochState, saved_epochs

    state = tmp_path / "t1_digits_model.epoch-state.pt"
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adam(model.parameters())
    EpochState.for_run(state, {"kind": "dp"}, model).save(
        23, model, optimizer, device=torch.device("cpu"), loader=None)
    assert saved_epochs(state) == 23
    before = state.read_bytes()
    assert run_extract(tmp_path, "--epochs", "20") == 2
    captured = capsys.readouterr()
    assert "resuming" not in captured.out
    err = captured.err.strip()
    assert err.startswith("fastunlearn extract: error: '--epochs' 20 is fewer than the 23")
    assert str(state) in err and "--no-resume" in err
    assert state.read_bytes() == before
    assert not list(tmp_path.glob("*.safetensors"))


# ---- 3: a missing --data-dir is called missing -----------------------------------------------


def test_extract_says_a_missing_data_dir_does_not_exist(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["extract", "--data-dir", "nonexist_rel"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "fastunlearn extract: error: '--data-dir' 'nonexist_rel' does not exist"
    (tmp_path / "a_file").write_text("x")
    assert main(["extract", "--data-dir", "a_file"]) == 2
    assert "'--data-dir' 'a_file' is not a folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


# ---- 4: a folder that cannot be created is refused before any work ---------------------------


@pytest.mark.parametrize("folder", ["/proc/fastunlearn-x", "/proc/fastunlearn-x/deeper"])
def test_check_output_folder_refuses_a_place_that_takes_no_entries(folder):
    with pytest.raises(ValueError, match=r"^'out' .*nothing can be created in '/proc'"):
        check_output_folder(folder, argument="out")


def test_check_output_folder_tries_writing_and_leaves_nothing(tmp_path, monkeypatch):
    import fastunlearn._output_folder as module

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    assert check_output_folder(tmp_path / "new", argument="out") == tmp_path / "new"
    assert list(tmp_path.iterdir()) == []  # the probe is gone
    monkeypatch.setattr(module.tempfile, "mkdtemp", refuse)  # as a read-only mount answers
    with pytest.raises(ValueError, match=r"'out' .*nothing can be created in .*Permission"):
        check_output_folder(tmp_path / "new", argument="out")


def test_remove_refuses_an_out_under_proc_before_fitting(capsys, monkeypatch):
    from fastunlearn.certified import experiment

    def must_not_run(*args, **kwargs):
        raise AssertionError("the experiment ran although --out cannot be created")

    monkeypatch.setattr(experiment, "run_removal_experiment", must_not_run)
    assert main(["remove", "--train-mode", "binary", "--num-removes", "3", "--no-plots",
                 "--out", "/proc/fastunlearn-x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastunlearn remove: error: '--result-dir' '/proc/fastunlearn-x'")
    assert "nothing can be created in '/proc'" in err and "\n" not in err


# ---- 5: an unknown flag after a subcommand is that subcommand's error ------------------------


SUBCOMMAND_ARGS = {**COMMAND_ARGS, "info": [], "demo": [], "html": ["report.md"]}


@pytest.mark.parametrize("command", sorted(SUBCOMMAND_ARGS))
def test_unknown_flag_is_reported_by_the_subcommand(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, *SUBCOMMAND_ARGS[command], "--no-such-flag"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: fastunlearn {command} ")
    assert err.rstrip().endswith(
        f"fastunlearn {command}: error: unrecognized arguments: --no-such-flag")


def test_unknown_flag_before_the_subcommand_stays_a_top_level_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--no-such-flag", "info"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.rstrip().endswith(
        "fastunlearn: error: unrecognized arguments: --no-such-flag")


# ---- 6: Ctrl-C while the flags are parsed (the command modules are imported) ----------------


@pytest.mark.parametrize(("argv", "prog"), [
    (["remove", "--num-removes", "3"], "fastunlearn remove"),
    (["info"], "fastunlearn info"),
    (["--help"], "fastunlearn"),
])
def test_ctrl_c_while_parsing_is_one_line_and_status_130(argv, prog, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    # a command's module is imported while its parser is built; --help imports none
    monkeypatch.setattr(cli, "_add_command_parser", interrupted)
    monkeypatch.setattr(cli.argparse.ArgumentParser, "print_help", interrupted)
    try:
        status = main(argv)
    except KeyboardInterrupt:  # would end the test session, not fail this test
        pytest.fail("Ctrl-C while parsing escaped main() as a traceback")
    assert status == 130
    captured = capsys.readouterr()
    assert captured.err == f"\n{prog}: interrupted (Ctrl-C)\n" and captured.out == ""



def _no_effect_warnings(data_dir, *flags):
    """Run ``extract`` (it must succeed) and return its "no effect" warnings."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert run_extract(data_dir, *flags) == 0
    return [str(w.message) for w in record if "no effect" in str(w.message)]


def test_no_resume_with_a_checkpoint_that_is_loaded_has_no_effect(tmp_path, capsys):
    assert run_extract(tmp_path) == 0
    capsys.readouterr()
    checkpoint = tmp_path / "t1_digits_model.safetensors"
    before = checkpoint.read_bytes()
    assert _no_effect_warnings(tmp_path, "--no-resume") == [
        f"'--no-resume' has no effect with the trained extractor in {str(checkpoint)!r} (it "
        "is loaded, not trained; '--force' trains a new one)"]
    assert "loaded the trained extractor" in capsys.readouterr().out
    assert checkpoint.read_bytes() == before  # loaded, not trained again
    # with --force it trains (from the first epoch): nothing to say
    assert _no_effect_warnings(tmp_path, "--no-resume", "--force") == []


def test_force_without_a_checkpoint_has_no_effect(tmp_path, capsys):
    checkpoint = tmp_path / "t1_digits_model.safetensors"
    assert _no_effect_warnings(tmp_path, "--force") == [
        f"'--force' has no effect without a trained extractor in {str(checkpoint)!r} (there "
        "is none to replace; the extractor is trained anyway)"]
    assert "trained in" in capsys.readouterr().out
    assert checkpoint.is_file()
    # with a checkpoint there, --force retrains it: nothing to say
    assert _no_effect_warnings(tmp_path, "--force") == []
    assert "trained in" in capsys.readouterr().out
