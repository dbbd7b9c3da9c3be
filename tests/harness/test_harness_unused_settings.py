"""``forget --set`` and ``--forget-seed`` settings that have no effect warn, naming them.

``--set`` fields a method ignores (Fisher's ``epochs``, the Adam methods' ``momentum``,
LiSSA's ``damping``) warn once, naming the method, when the HarnessConfig is built (even
at their default value: the user set them); the run does not repeat them. A given
``forget_seed`` (``--forget-seed``) with a ``class:`` or ``file:`` forget set warns too.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest

import fastunlearn.harness as harness_pkg
from fastunlearn._cli_output import plain_warnings
from fastunlearn.cli import build_parser, main
from fastunlearn.harness import HarnessConfig

FISHER_WHY = "(Fisher forgetting does not train: it only adds noise to the weights)"


def _user_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, UserWarning)]


def _config_warnings(**kwargs: Any) -> list[str]:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        HarnessConfig(cache_dir=None, **kwargs)
    return _user_warnings(record)


# --- HarnessConfig overrides ---------------------------------------------------------------


def test_an_ignored_override_warns_naming_the_method_even_at_its_default() -> None:
    # 5 is ForgetConfig's default epochs: set on purpose, it still does nothing
    with pytest.warns(UserWarning, match=r"^'overrides' for 'fisher': 'epochs' has no effect "
                                         r"\(Fisher forgetting does not train"):
        HarnessConfig(methods=("fisher",), overrides={"fisher": {"epochs": 5}}, cache_dir=None)


def test_ignored_overrides_are_named_in_one_warning_without_a_repeat() -> None:
    got = _config_warnings(methods=("fisher",),
                           overrides={"fisher": {"lr": 0.5, "epochs": 3, "alpha": 1e-5}})
    assert got == [f"'overrides' for 'fisher': 'epochs' and 'lr' have no effect {FISHER_WHY}"]


@pytest.mark.parametrize("name", ["antisamples", "bad_teacher", "unsir"])
def test_momentum_of_the_adam_methods_warns(name: str) -> None:
    got = _config_warnings(methods=(name,), overrides={name: {"momentum": 0.5}})
    assert len(got) == 1
    assert got[0].startswith(f"'overrides' for {name!r}: 'momentum' has no effect (")
    assert "Adam" in got[0]


def test_influence_training_fields_and_lissa_settings_warn() -> None:
    got = _config_warnings(methods=("influence",), overrides={"influence": {
        "solver": "lissa", "damping": 1e6, "lr": 0.5}})
    assert got == [
        "'overrides' for 'influence': 'damping' has no effect with solver='lissa' (LiSSA runs "
        "with its reference settings: 100 steps over batches of 1024 retain rows, damped by "
        "d*s = 1e-4 * 2e5 = 20 relative to a batch's summed Hessian)",
        "'overrides' for 'influence': 'lr' has no effect (influence unlearning does not train: "
        "it takes one Newton step)",
    ]


def test_used_overrides_and_the_digits_defaults_do_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        HarnessConfig(methods="all", cache_dir=None)  # DIGITS_OVERRIDES for every method
        HarnessConfig(methods=("finetune", "bad_teacher", "influence", "fisher"), overrides={
            "finetune": {"epochs": 2, "momentum": 0.5}, "bad_teacher": {"lr": 1e-3},
            "influence": {"damping": 3.0, "num_params": 4}, "fisher": {"batch_size": 8}},
            cache_dir=None)


def test_bad_overrides_still_raise_naming_the_method() -> None:
    with pytest.raises(ValueError, match=r"^'overrides' for 'fisher': 'bogus' is not a field"):
        HarnessConfig(methods=("fisher",), overrides={"fisher": {"bogus": 1}}, cache_dir=None)
    with pytest.raises(ValueError, match=r"^'overrides' for 'influence': 'num_params' must be"):
        HarnessConfig(methods=("influence",), overrides={"influence": {"num_params": -1}},
                      cache_dir=None)


# --- the forget command --------------------------------------------------------------------


def _run_cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *argv: str) -> tuple[int, list]:
    """Run ``forget`` up to its HarnessConfig (a stub harness stops there, status 2)."""

    def fake(config: HarnessConfig, **kwargs: Any) -> dict:
        raise ValueError("stop here")

    monkeypatch.setattr(harness_pkg, "run_harness", fake)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        status = main(["forget", "--no-cache", "--out", str(tmp_path / "out"), *argv])
    return status, _user_warnings(record)


_SMALL_RUN = ("--epochs", "1", "--oracles", "1", "--seeds", "2", "--no-mia", "--no-plots")

_INFLUENCE_TOL = (
    "'overrides' for 'influence': 'tol' has no effect with solver='lissa' (LiSSA runs with "
    "its reference settings: 100 steps over batches of 1024 retain rows, damped by d*s = "
    "1e-4 * 2e5 = 20 relative to a batch's summed Hessian)")


def test_cli_set_warns_once_and_the_run_does_not_repeat_it(tmp_path: Path) -> None:
    # the real run: two seeds per method, each run's config a copy with its seed
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        status = main(["forget", "--no-cache", "--out", str(tmp_path / "out"), *_SMALL_RUN,
                       "--method", "fisher,influence",
                       "--set", "fisher.epochs=3", "--set", "fisher.lr=0.5",
                       "--set", "influence.solver=lissa", "--set", "influence.tol=1e-9"])
    assert status == 0
    assert _user_warnings(record) == [
        f"'overrides' for 'fisher': 'epochs' and 'lr' have no effect {FISHER_WHY}",
        _INFLUENCE_TOL,
    ]


def test_run_harness_does_not_repeat_the_configs_warnings(tmp_path: Path) -> None:
    from fastunlearn.harness import TrainSettings, load_harness_data, run_harness

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        config = HarnessConfig(methods=("fisher",), seeds=2, oracles=1, mia=False,
                               train=TrainSettings(epochs=1), plots=False, cache_dir=None,
                               overrides={"fisher": {"epochs": 3, "alpha": 1e-4}})
        assert len(record) == 2  # shown once, naming the method (plots: nothing written)
        result = run_harness(config, load_harness_data("digits"))
    assert _user_warnings(record) == [
        "'plots' has no effect with out_dir=None (nothing is written)",
        f"'overrides' for 'fisher': 'epochs' has no effect {FISHER_WHY}"]
    runs = result["methods"]["fisher"]["runs"]
    assert [(r["seed"], r["status"]) for r in runs] == [(0, "ok"), (1, "ok")]
    # each run got its own seed (Fisher's noise differs) and the given alpha
    assert runs[0]["retain_accuracy"] != runs[1]["retain_accuracy"] or \
        runs[0]["forget_accuracy"] != runs[1]["forget_accuracy"]
    assert result["config"]["method_settings"]["fisher"]["alpha"] == 1e-4


def test_cli_warning_names_the_set_flag_not_the_training_flags() -> None:
    args = build_parser("forget").parse_args(["forget"])
    message = f"'overrides' for 'fisher': 'epochs' and 'lr' have no effect {FISHER_WHY}"
    with plain_warnings("fastunlearn forget", flags=args.flag_names):
        line = warnings.formatwarning(message, UserWarning, "f.py", 1)
    assert line == ("fastunlearn forget: warning: '--set' for 'fisher': 'epochs' and 'lr' have "
                    f"no effect {FISHER_WHY}\n")
    assert args.flag_names["seeds"] == "--seeds"


@pytest.mark.parametrize(("spec", "kind"), [("class:3", "class"), ("class:1,2", "class")])
def test_cli_forget_seed_with_a_class_forget_set_warns(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, spec: str, kind: str) -> None:
    status, got = _run_cli(monkeypatch, tmp_path, "--method", "finetune", "--forget", spec,
                           "--forget-seed", "7")
    assert status == 2
    message = (f"'forget_seed' has no effect with forget '{spec}' (a {kind} forget set is "
               "not drawn at random)")
    assert got == [message]
    # the command shows the flag
    args = build_parser("forget").parse_args(["forget", "--forget", spec])
    with plain_warnings("fastunlearn forget", flags=args.flag_names):
        line = warnings.formatwarning(message, UserWarning, "f.py", 1)
    assert line.startswith("fastunlearn forget: warning: '--forget-seed' has no effect with ")


def test_cli_forget_seed_with_a_file_forget_set_warns(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    status, got = _run_cli(monkeypatch, tmp_path, "--method", "finetune", "--forget",
                           "file:idx.txt", "--forget-seed", "3")
    assert status == 2
    assert got == ["'forget_seed' has no effect with forget 'file:idx.txt' (a file forget "
                   "set is not drawn at random)"]


def test_api_forget_seed_with_a_class_forget_set_warns() -> None:
    with pytest.warns(UserWarning, match=r"^'forget_seed' has no effect with forget "
                      r"'class:3' \(a class forget set is not drawn at random\)$"):
        HarnessConfig(methods=("finetune",), forget="class:3", forget_seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the seed of a random set, or the default: quiet
        HarnessConfig(methods=("finetune",), forget="random:0.1", forget_seed=5)
        HarnessConfig(methods=("finetune",), forget="class:3")


@pytest.mark.parametrize("argv", [
    ("--forget", "random:0.1", "--forget-seed", "3"),  # the seed draws the set
    ("--forget", "class:3"),  # not given
    ("--forget", "class:3", "--forget-seed", "0"),  # the default: nothing to say
])
def test_cli_forget_seed_is_silent_where_it_is_used_or_not_given(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, argv: tuple[str, ...]) -> None:
    status, got = _run_cli(monkeypatch, tmp_path, "--method", "finetune", *argv)
    assert status == 2
    assert got == []
